"""Node tokens: only the right signature, audience and unexpired tokens pass."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pke_vsphere.contracts.state import NodeIdentity, NodeKind
from pke_vsphere.pki.node_tokens import (
    AUDIENCE,
    InvalidNodeToken,
    NodeTokenSigner,
    NodeTokenVerifier,
    create_signing_key,
    load_signing_key,
)

NODE = NodeIdentity(
    cluster="prod",
    cluster_uid="uid-1",
    pool="workers",
    name="prod-workers-01",
    kind=NodeKind.WORKER,
    index=1,
    instance_uuid="0b6f5e0c-1111-2222-3333-444455556666",
)
KEY = Ed25519PrivateKey.generate()
SIGNER = NodeTokenSigner(KEY)
VERIFIER = NodeTokenVerifier(KEY.public_key())


def test_a_fresh_token_names_its_cluster_node_and_role() -> None:
    claims = VERIFIER.verify(SIGNER.sign(NODE, timedelta(minutes=5)))
    assert (claims.cluster, claims.cluster_uid, claims.node, claims.kind) == (
        "prod",
        "uid-1",
        "prod-workers-01",
        NodeKind.WORKER,
    )
    assert claims.jti == NODE.instance_uuid


def test_an_expired_token_is_refused() -> None:
    token = SIGNER.sign(NODE, timedelta(minutes=5), now=datetime.now(UTC) - timedelta(hours=1))
    with pytest.raises(InvalidNodeToken, match="expired"):
        VERIFIER.verify(token)


def test_a_token_signed_by_another_key_is_refused() -> None:
    other = NodeTokenSigner(Ed25519PrivateKey.generate())
    with pytest.raises(InvalidNodeToken, match="invalid"):
        VERIFIER.verify(other.sign(NODE, timedelta(minutes=5)))


def test_a_tampered_token_is_refused() -> None:
    header, _payload, signature = SIGNER.sign(NODE, timedelta(minutes=5)).split(".")
    forged = jwt.encode({"node": "prod-master-01"}, "k" * 32, algorithm="HS256").split(".")[1]
    with pytest.raises(InvalidNodeToken):
        VERIFIER.verify(f"{header}.{forged}.{signature}")


def test_a_token_for_another_audience_or_algorithm_is_refused() -> None:
    now = int(datetime.now(UTC).timestamp())
    claims = {
        "iss": "pke-vsphere",
        "aud": "someone-else",
        "sub": "n",
        "jti": "j",
        "iat": now,
        "exp": now + 60,
    }
    with pytest.raises(InvalidNodeToken):
        VERIFIER.verify(jwt.encode(claims, KEY, algorithm="EdDSA"))
    claims["aud"] = AUDIENCE
    with pytest.raises(InvalidNodeToken):  # 'none' and HMAC never pass
        VERIFIER.verify(jwt.encode(claims, "", algorithm="none"))


def test_garbage_is_refused() -> None:
    for token in ("", "abc", "a.b.c", "Bearer x"):
        with pytest.raises(InvalidNodeToken):
            VERIFIER.verify(token)


def test_signing_keys_are_written_owner_only_and_load_back(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    key = create_signing_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    token = NodeTokenSigner(load_signing_key(path)).sign(NODE, timedelta(minutes=1))
    assert NodeTokenVerifier(key.public_key()).verify(token).node == NODE.name
    with pytest.raises(FileExistsError):
        create_signing_key(path)
