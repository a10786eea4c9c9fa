"""Serve the node API: ``python -m pke_vsphere.nodeapi [--settings FILE] [--development]``.

It refuses to start without TLS (``PKE_VSPHERE_NODE_API_TLS_CERT_FILE`` and
``_TLS_KEY_FILE``) unless ``--development`` (or ``PKE_VSPHERE_NODE_API_DEVELOPMENT``)
says this is a development run, and without payload keys unless
``PKE_VSPHERE_ALLOW_UNENCRYPTED_PAYLOADS`` says so. It holds only the public key
that verifies node tokens.
"""

from __future__ import annotations

import argparse
import asyncio

import structlog
import uvicorn
from pydantic import ValidationError

from pke_vsphere.config import NodeApiSettings, TemporalSettings, load
from pke_vsphere.config.credentials import EtcdCredentials, StorageCredentials
from pke_vsphere.config.files import RefusedToStart
from pke_vsphere.nodeapi.app import create_app
from pke_vsphere.pki.node_tokens import NodeTokenVerifier, load_verification_key
from pke_vsphere.runtime import logs, temporal

log = structlog.get_logger(__name__)


def checked(node_api: NodeApiSettings, development: bool) -> NodeApiSettings:
    """The settings, if the node API may run with them.

    Raises:
        RefusedToStart: no public key, or no TLS outside a development run.
    """
    if node_api.node_token_public_key_file is None:
        raise RefusedToStart(
            "set PKE_VSPHERE_NODE_TOKEN_PUBLIC_KEY_FILE: the public key node tokens are verified with"
        )
    tls = (node_api.node_api_tls_cert_file, node_api.node_api_tls_key_file)
    if None in tls and not (development or node_api.node_api_development):
        raise RefusedToStart(
            "the node API serves the clusters' keys: give it TLS (PKE_VSPHERE_NODE_API_TLS_CERT_FILE and "
            "PKE_VSPHERE_NODE_API_TLS_KEY_FILE), or pass --development for a development run"
        )
    return node_api


async def serve(settings_file: str | None, development: bool) -> None:
    node_api = checked(load(NodeApiSettings, settings_file), development)
    assert node_api.node_token_public_key_file is not None
    verifier = NodeTokenVerifier(load_verification_key(node_api.node_token_public_key_file))
    storage = StorageCredentials.from_settings(settings_file)
    etcd = EtcdCredentials.from_settings(settings_file)
    client = await temporal.connect(load(TemporalSettings, settings_file))
    if node_api.node_api_tls_cert_file is None:
        log.warning("nodeapi.plain_http", reason="development run")
    config = uvicorn.Config(
        create_app(client, verifier, storage, etcd),
        host=node_api.node_api_listen_host,
        port=node_api.node_api_listen_port,
        log_config=None,
        access_log=False,
        ssl_certfile=str(node_api.node_api_tls_cert_file) if node_api.node_api_tls_cert_file else None,
        ssl_keyfile=str(node_api.node_api_tls_key_file) if node_api.node_api_tls_key_file else None,
    )
    await uvicorn.Server(config).serve()


def main() -> None:
    parser = argparse.ArgumentParser(description="pke-vsphere node API")
    parser.add_argument("--settings", help="dotenv-style settings file")
    parser.add_argument(
        "--development", action="store_true", help="allow plain HTTP (a development run on loopback)"
    )
    args = parser.parse_args()
    logs.configure()
    try:
        asyncio.run(serve(args.settings, args.development))
    except (RefusedToStart, ValidationError) as exc:
        temporal.refuse_to_start("pke-vsphere node API", exc)


if __name__ == "__main__":
    main()
