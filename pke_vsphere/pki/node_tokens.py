"""Node tokens: a JWT per node incarnation, signed with the worker's Ed25519 key
and verified by the node API with the public half.

A token names one cluster (by name and uid), one node and its bootstrap role;
it carries an audience, an id (the node's instance UUID) and an expiry: the
node's bootstrap deadline. Its signature only says who the caller claims to be;
whether the node is still bootstrapping is its workflow's to say
(nodeapi/auth.py). The signing key stays with the worker.

``python -m pke_vsphere.pki.node_tokens new KEY_FILE PUBLIC_FILE`` writes a new key pair;
``python -m pke_vsphere.pki.node_tokens public KEY_FILE PUBLIC_FILE`` the public half of a key.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ValidationError

from pke_vsphere.config.files import RefusedToStart, read_private
from pke_vsphere.contracts.state import NodeIdentity, NodeKind

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
    """The worker's signing key, from a file readable by its owner only."""
    pem = read_private(path, "node token signing key").encode()
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError:
        raise RefusedToStart(f"{path} does not hold a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise RefusedToStart(f"{path} does not hold an Ed25519 private key")
    return key


def load_verification_key(path: Path) -> Ed25519PublicKey:
    """The node API's key: the public half only. A private key is refused, so the
    node API never holds what signs tokens."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise RefusedToStart(f"node token public key {path}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in pem:
        raise RefusedToStart(
            f"{path} holds a private key: the node API takes only the public key "
            "(write it with `python -m pke_vsphere.pki.node_tokens public KEY_FILE PUBLIC_FILE`)"
        )
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise RefusedToStart(f"{path} does not hold a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise RefusedToStart(f"{path} does not hold an Ed25519 public key")
    return key


def write_public_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write the public half of ``key`` (what the node API verifies with)."""
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pem)


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


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="node token keys")
    parser.add_argument("action", choices=["new", "public"])
    parser.add_argument("key_file", type=Path)
    parser.add_argument("public_file", type=Path)
    args = parser.parse_args(argv)
    key = create_signing_key(args.key_file) if args.action == "new" else load_signing_key(args.key_file)
    write_public_key(key, args.public_file)


if __name__ == "__main__":
    main()
