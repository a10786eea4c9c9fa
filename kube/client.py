"""A lightkube client for one cluster, from its CA alone."""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx2
from lightkube import AsyncClient
from lightkube.config.kubeconfig import KubeConfig

from models.messages import KubeAccess
from pki import authority

ADMIN_CN = "pke-vsphere"
ADMIN_GROUP = "system:masters"
ADMIN_VALIDITY = timedelta(hours=1)
FIELD_MANAGER = "pke-vsphere"


def ssl_context(access: KubeAccess) -> ssl.SSLContext:
    """Verify the API server against the cluster CA; present a fresh admin certificate.

    The standard library loads client keys only from files, so the key lives for a
    moment in a private temporary directory and is removed before this returns.
    """
    ca = authority.load(access.ca_cert_pem, access.ca_key_pem.get_secret_value())
    admin = authority.issue(ca, ADMIN_CN, organizations=(ADMIN_GROUP,), client=True, validity=ADMIN_VALIDITY)
    ctx = ssl.create_default_context(cadata=access.ca_cert_pem)
    with tempfile.TemporaryDirectory(prefix="pke-vsphere-") as tmp:
        cert, key = Path(tmp, "admin.crt"), Path(tmp, "admin.key")
        cert.write_text(admin.cert_pem())
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(admin.key_pem())
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


@asynccontextmanager
async def connect(access: KubeAccess, request_seconds: float = 15) -> AsyncIterator[AsyncClient]:
    transport = httpx2.AsyncHTTPTransport(verify=ssl_context(access))
    client = AsyncClient(
        _config(f"https://{access.endpoint}"),
        transport=transport,
        trust_env=False,
        field_manager=FIELD_MANAGER,
        timeout=httpx2.Timeout(request_seconds),
    )
    try:
        yield client
    finally:
        await client.close()
