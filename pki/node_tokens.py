"""Node tokens: a short-lived JWT per node, signed with the orchestrator's
Ed25519 key and checked by the node API.

A token names one cluster (by name and uid), one node and its bootstrap role;
it carries an audience, an id (the node's instance UUID) and an expiry. The
signing key never leaves the worker and the node API.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ValidationError

from models.state import NodeIdentity, NodeKind

ISSUER = "pke-vsphere"
AUDIENCE = "pke-vsphere-node-api"
ALGORITHM = "EdDSA"


class InvalidNodeToken(Exception):
    """The token is missing, malformed, expired, or not signed by this orchestrator."""


class NodeClaims(BaseModel):
    cluster: str
    cluster_uid: str
    node: str
    kind: NodeKind
    jti: str
    exp: int
    iat: int


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


def create_signing_key(path: Path) -> Ed25519PrivateKey:
    """Write a new Ed25519 key readable by its owner only (for the demo and tests)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


class NodeTokenSigner:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def sign(self, identity: NodeIdentity, ttl: timedelta, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": identity.name,
            "cluster": identity.cluster,
            "cluster_uid": identity.cluster_uid,
            "node": identity.name,
            "kind": identity.kind.value,
            "jti": identity.instance_uuid,
            "iat": int(now.timestamp()),
            "exp": int((now + ttl).timestamp()),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)


class NodeTokenVerifier:
    def __init__(self, key: Ed25519PublicKey) -> None:
        self._key = key

    def verify(self, token: str) -> NodeClaims:
        try:
            raw = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "aud", "iss", "jti", "sub"]},
            )
            claims = NodeClaims.model_validate(raw)
        except jwt.ExpiredSignatureError as e:
            raise InvalidNodeToken("token expired") from e
        except (jwt.InvalidTokenError, ValidationError) as e:
            raise InvalidNodeToken("token invalid") from e
        if raw["sub"] != claims.node:
            raise InvalidNodeToken("token invalid")
        return claims
