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
