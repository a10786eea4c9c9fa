"""The codec server the Temporal Web UI and CLI call to read encrypted histories:
``POST /encode`` and ``POST /decode`` with ``{"payloads": [...]}`` in protobuf
JSON. It answers only requests that carry the configured bearer token (one is
required unless it listens on loopback only), only for the host names it is
served under (a page on another site cannot reach it through DNS rebinding),
and allows CORS from the Web UI's origins only."""

from __future__ import annotations

import hmac

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from google.protobuf import json_format
from starlette.middleware.trustedhost import TrustedHostMiddleware
from temporalio.api.common.v1 import Payloads

from pke_vsphere.codec.encryption import EncryptionCodec

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def create_app(
    codec: EncryptionCodec,
    auth_token: str | None,
    cors_origins: list[str],
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """``allowed_hosts``: the host names the server answers for (the Host header without
    its port); by default the loopback names."""
    app = FastAPI(title="pke-vsphere codec server", docs_url=None, redoc_url=None)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts or list(LOOPBACK_NAMES))
    app.add_middleware(
        CORSMiddleware,
        allow_origins=cors_origins,
        allow_methods=["POST"],
        allow_headers=["Content-Type", "X-Namespace", "Authorization"],
        allow_credentials=True,
    )

    def check(request: Request) -> None:
        if auth_token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {auth_token}".encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "codec server needs its bearer token")

    async def payloads(request: Request) -> Payloads:
        try:
            return json_format.Parse(await request.body(), Payloads())
        except json_format.ParseError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, f"not a Payloads message: {exc}") from None

    def reply(result: Payloads) -> Response:
        return Response(json_format.MessageToJson(result), media_type="application/json")

    @app.post("/encode")
    async def encode(request: Request) -> Response:
        check(request)
        return reply(Payloads(payloads=await codec.encode((await payloads(request)).payloads)))

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        check(request)
        try:
            decoded = await codec.decode((await payloads(request)).payloads)
        except (ValueError, KeyError) as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, str(exc)) from None
        except Exception:  # a forged or corrupted ciphertext: say so, never a 500
            raise HTTPException(status.HTTP_400_BAD_REQUEST, "payload does not decrypt") from None
        return reply(Payloads(payloads=decoded))

    return app
