"""A lightkube client for one cluster, from its CA alone.

Clients are kept and reused per credential (and event loop): building one costs
a TLS context or two (lightkube loads the system's CA bundle for each, even when
the transport brings its own), which at a thousand joining nodes was most of the
worker's CPU, and a kept client keeps its connections to the API server."""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx2
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from pke_vsphere.contracts.messages import KubeAccess
from pke_vsphere.pki import authority

ADMIN_CN = "pke-vsphere"
JOIN_TOKENS_CN = "pke-vsphere:join-tokens"
ADMIN_GROUP = "system:masters"
ADMIN_VALIDITY = timedelta(hours=1)
FIELD_MANAGER = "pke-vsphere"


def issue_client(access: KubeAccess, common_name: str, validity: timedelta) -> tuple[str, str]:
    """A client certificate and key (PEM) in the admin group, signed by the cluster CA."""
    assert access.ca_key_pem is not None
    ca = authority.load(access.ca_cert_pem, access.ca_key_pem.get_secret_value())
    issued = authority.issue(ca, common_name, organizations=(ADMIN_GROUP,), client=True, validity=validity)
    return issued.cert_pem(), issued.key_pem()


def ssl_context(access: KubeAccess) -> ssl.SSLContext:
    """Verify the API server against the cluster CA; present the handed-over client
    certificate, or a fresh admin certificate minted from the CA key.

    The standard library loads client keys only from files, so the key lives for a
    moment in a private temporary directory and is removed before this returns.
    """
    if access.client_cert_pem is not None and access.client_key_pem is not None:
        cert_pem, key_pem = access.client_cert_pem, access.client_key_pem.get_secret_value()
    else:
        cert_pem, key_pem = issue_client(access, ADMIN_CN, ADMIN_VALIDITY)
    ctx = ssl.create_default_context(cadata=access.ca_cert_pem)
    with tempfile.TemporaryDirectory(prefix="pke-vsphere-") as tmp:
        cert, key = Path(tmp, "client.crt"), Path(tmp, "client.key")
        cert.write_text(cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key_pem)
        ctx.load_cert_chain(cert, key)
    return ctx


def _config(server: str) -> KubeConfig:
    """A kubeconfig naming only the server: TLS and the client certificate come
    from the transport, so no key material passes through lightkube's files."""
    return KubeConfig.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "cluster", "cluster": {"server": server}}],
            "users": [{"name": "pke-vsphere", "user": {}}],
            "contexts": [{"name": "pke-vsphere", "context": {"cluster": "cluster", "user": "pke-vsphere"}}],
            "current-context": "pke-vsphere",
        }
    )


# How many clients are kept, and for how long one minted from the CA key is used
# (its certificate lives ADMIN_VALIDITY).
MAX_CLIENTS = 32
ADMIN_REUSE = ADMIN_VALIDITY / 2
# A handed-over certificate closer than this to its expiry gets a new client.
EXPIRY_MARGIN = timedelta(minutes=1)
_clients: OrderedDict[tuple[int, str, float], tuple[AsyncClient, float]] = OrderedDict()


def _credential_key(access: KubeAccess) -> str:
    """Which credential a client is made from: a digest of the endpoint, the CA and
    the client certificate (public parts only)."""
    parts = [access.endpoint, access.ca_cert_pem, access.client_cert_pem or "minted from the CA key"]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _usable_until(access: KubeAccess) -> float:
    """The monotonic time until which a client of this credential may be used."""
    if access.client_cert_pem is None:
        return time.monotonic() + ADMIN_REUSE.total_seconds()
    if access.expires_at is None:
        return float("inf")
    left = access.expires_at - datetime.now(UTC) - EXPIRY_MARGIN
    return time.monotonic() + max(0.0, left.total_seconds())


def _new_client(access: KubeAccess, request_seconds: float) -> AsyncClient:
    transport = httpx2.AsyncHTTPTransport(verify=ssl_context(access))
    return AsyncClient(
        _config(f"https://{access.endpoint}"),
        transport=transport,
        trust_env=False,
        field_manager=FIELD_MANAGER,
        timeout=httpx2.Timeout(request_seconds),
    )


@asynccontextmanager
async def connect(access: KubeAccess, request_seconds: float = 15) -> AsyncIterator[AsyncClient]:
    """A client for the cluster, kept for the next call with the same credential."""
    key = (id(asyncio.get_running_loop()), _credential_key(access), request_seconds)
    kept = _clients.get(key)
    if kept is None or kept[1] <= time.monotonic():
        _clients.pop(key, None)
        if kept is not None:
            await kept[0].close()
        kept = (_new_client(access, request_seconds), _usable_until(access))
        _clients[key] = kept
        while len(_clients) > MAX_CLIENTS:
            _, (oldest, _) = _clients.popitem(last=False)
            await oldest.close()
    _clients.move_to_end(key)
    yield kept[0]
