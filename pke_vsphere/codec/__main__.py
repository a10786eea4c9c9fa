"""Serve the codec server: ``python -m pke_vsphere.codec [--settings FILE]``.

It refuses to start without a bearer token (``PKE_VSPHERE_CODEC_AUTH_TOKEN_FILE``)
unless it listens on a loopback address only.
"""

from __future__ import annotations

import argparse
import ipaddress

import uvicorn
from pydantic import ValidationError

from pke_vsphere.codec import keys
from pke_vsphere.codec.encryption import EncryptionCodec
from pke_vsphere.codec.server import LOOPBACK_NAMES, create_app
from pke_vsphere.config import CodecServerSettings, load
from pke_vsphere.config.files import RefusedToStart, read_private
from pke_vsphere.runtime import logs, temporal


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def checked_token(settings: CodecServerSettings) -> str | None:
    """The bearer token callers must send; None only on loopback.

    Raises:
        RefusedToStart: a non-loopback address without a token file.
    """
    if settings.codec_auth_token_file is not None:
        token = read_private(settings.codec_auth_token_file, "codec token file").strip()
        if not token:
            raise RefusedToStart(f"codec token file {settings.codec_auth_token_file} is empty")
        return token
    if not is_loopback(settings.codec_listen_host):
        raise RefusedToStart(
            f"the codec server decrypts every history: on {settings.codec_listen_host} (not loopback) "
            "it needs PKE_VSPHERE_CODEC_AUTH_TOKEN_FILE"
        )
    return None


def allowed_hosts(settings: CodecServerSettings) -> list[str]:
    """The Host header names to answer for: the configured ones, else the listen
    address (and the loopback names when it is loopback)."""
    if settings.codec_allowed_hosts:
        return [h.strip() for h in settings.codec_allowed_hosts.split(",") if h.strip()]
    hosts = [settings.codec_listen_host]
    if is_loopback(settings.codec_listen_host):
        hosts += LOOPBACK_NAMES
    return hosts


def main() -> None:
    parser = argparse.ArgumentParser(description="pke-vsphere codec server")
    parser.add_argument("--settings", help="dotenv-style settings file")
    args = parser.parse_args()
    logs.configure()
    try:
        settings = load(CodecServerSettings, args.settings)
        token = checked_token(settings)
        app = create_app(
            EncryptionCodec(keys.load(settings.payload_keys_file)),
            token,
            [o.strip() for o in settings.codec_cors_origins.split(",") if o.strip()],
            allowed_hosts(settings),
        )
    except (RefusedToStart, ValidationError) as exc:
        temporal.refuse_to_start("pke-vsphere codec server", exc)
    uvicorn.run(app, host=settings.codec_listen_host, port=settings.codec_listen_port, log_config=None)


if __name__ == "__main__":
    main()
