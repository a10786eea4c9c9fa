"""Serve the codec server: ``python -m codec [--settings FILE]``."""

from __future__ import annotations

import argparse

import uvicorn

from codec import keys
from codec.encryption import EncryptionCodec
from codec.server import create_app
from runtime import logs
from settings import CodecServerSettings, load


def main() -> None:
    parser = argparse.ArgumentParser(description="pke-vsphere codec server")
    parser.add_argument("--settings", help="dotenv-style settings file")
    args = parser.parse_args()
    logs.configure()
    settings = load(CodecServerSettings, args.settings)
    token = settings.codec_auth_token_file.read_text().strip() if settings.codec_auth_token_file else None
    app = create_app(
        EncryptionCodec(keys.load(settings.payload_keys_file)),
        token,
        [o.strip() for o in settings.codec_cors_origins.split(",") if o.strip()],
    )
    uvicorn.run(app, host=settings.codec_listen_host, port=settings.codec_listen_port, log_config=None)


if __name__ == "__main__":
    main()
