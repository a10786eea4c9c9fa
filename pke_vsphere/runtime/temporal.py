"""Connect to Temporal with the settings and the project's data converter."""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from pydantic import ValidationError
from temporalio.client import Client, TLSConfig
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

from pke_vsphere.codec import keys
from pke_vsphere.codec.encryption import EncryptionCodec
from pke_vsphere.config import TemporalSettings
from pke_vsphere.config.files import RefusedToStart

# Without a codec: what reads plain payloads (replays of stored histories, tests).
DATA_CONVERTER: DataConverter = pydantic_data_converter


def data_converter(ring: keys.KeyRing | None) -> DataConverter:
    """pydantic models as JSON, encrypted with the newest key when there is a key ring;
    failures' messages and stack traces are moved into an encoded payload, so they
    are encrypted too (a message can quote an input)."""
    if ring is None:
        return DATA_CONVERTER
    return dataclasses.replace(
        DATA_CONVERTER,
        payload_codec=EncryptionCodec(ring),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def payload_keys(settings: TemporalSettings) -> keys.KeyRing | None:
    """The key ring payloads are encrypted with; without one, only a development run
    that says so (PKE_VSPHERE_ALLOW_UNENCRYPTED_PAYLOADS=true) may go on.

    Raises:
        RefusedToStart: no keys file and no such permission, or a bad keys file.
    """
    if settings.payload_keys_file is not None:
        return keys.load(settings.payload_keys_file)
    if settings.allow_unencrypted_payloads:
        return None
    raise RefusedToStart(
        "no payload keys: set PKE_VSPHERE_PAYLOAD_KEYS_FILE (workflow histories hold the clusters' "
        "keys), or PKE_VSPHERE_ALLOW_UNENCRYPTED_PAYLOADS=true for a development run"
    )


async def connect(settings: TemporalSettings) -> Client:
    """A client with the project's data converter (payloads encrypted, see :func:`payload_keys`)."""
    ring = payload_keys(settings)
    tls: TLSConfig | bool = False
    if settings.temporal_tls_ca_file or settings.temporal_tls_cert_file:
        tls = TLSConfig(
            server_root_ca_cert=settings.temporal_tls_ca_file.read_bytes()
            if settings.temporal_tls_ca_file
            else None,
            client_cert=settings.temporal_tls_cert_file.read_bytes()
            if settings.temporal_tls_cert_file
            else None,
            client_private_key=settings.temporal_tls_key_file.read_bytes()
            if settings.temporal_tls_key_file
            else None,
        )
    api_key = settings.temporal_api_key_file.read_text().strip() if settings.temporal_api_key_file else None
    return await Client.connect(
        settings.temporal_address,
        namespace=settings.temporal_namespace,
        tls=tls or bool(api_key),
        api_key=api_key,
        data_converter=data_converter(ring),
    )


def refuse_to_start(program: str, exc: Exception) -> NoReturn:
    """End a process that will not run with its settings: one line, exit 2. A
    settings error names the environment variables."""
    if isinstance(exc, ValidationError):
        reason = "; ".join(
            f"PKE_VSPHERE_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}"
            if e["loc"]
            else e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
    else:
        reason = str(exc)
    print(f"{program}: refusing to start: {reason}", file=sys.stderr)
    sys.exit(2)


def run_client_process(main: Callable[[], int]) -> NoReturn:
    """Run a client process's ``main`` and end it with ``exit_client_process``, on an
    exception too: a refusal to start, or anything unexpected, as one line."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    except (RefusedToStart, ValidationError) as exc:
        refuse_to_start("pke-vsphere", exc)
    except Exception as exc:
        # One line; where it came from only when asked for.
        if os.environ.get("PKE_VSPHERE_TRACEBACK"):
            traceback.print_exc()
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(
            f"error: {message} ({type(exc).__name__}; PKE_VSPHERE_TRACEBACK=1 shows where)", file=sys.stderr
        )
        code = 1
    exit_client_process(code)


def exit_client_process(code: int) -> NoReturn:
    """End a short-lived Temporal client process (the CLI, the demo runner) without
    interpreter finalization: the SDK's Rust runtime threads can still hold a
    Python thread state then, and CPython aborts the process ("PyGILState_Release:
    thread state ... must be current", temporalio/sdk-python#300), turning a
    finished command into exit 134. Output is flushed first; nothing else is pending."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
