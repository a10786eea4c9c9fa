"""Serve the node API: ``python -m nodeapi [--settings FILE]``."""

from __future__ import annotations

import argparse
import asyncio

import uvicorn

from nodeapi.app import create_app
from pki.node_tokens import NodeTokenVerifier, load_signing_key
from runtime import logs, temporal
from settings import NodeApiSettings, TemporalSettings, load
from settings.credentials import EtcdCredentials, StorageCredentials


async def serve(settings_file: str | None) -> None:
    node_api = load(NodeApiSettings, settings_file)
    client = await temporal.connect(load(TemporalSettings, settings_file))
    verifier = NodeTokenVerifier(load_signing_key(node_api.node_token_key_file).public_key())
    storage = StorageCredentials.from_settings(settings_file)
    config = uvicorn.Config(
        create_app(client, verifier, storage, EtcdCredentials.from_settings(settings_file)),
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
    args = parser.parse_args()
    logs.configure()
    asyncio.run(serve(args.settings))


if __name__ == "__main__":
    main()
