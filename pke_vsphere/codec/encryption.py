"""AES-256-GCM payload codec.

An encrypted payload's metadata says ``encoding: binary/encrypted`` and names
the key (``encryption-key-id``); its data is a 12-byte nonce followed by the
ciphertext of the whole original payload (metadata included). Payloads without
that encoding pass through unchanged, so plain JSON started from the Web UI or
the ``temporal`` CLI still decodes.

Nonces are random (the OS's CSPRNG), drawn a few hundred at a time: the worker
encodes every heartbeat, activity input and workflow command, and each
``os.urandom`` call lets go of the GIL, which with a thousand activity threads
cost the worker's event loop a third of a millisecond a payload to get back
(4.5 s of a 3 + 997 create). A process forked with nonces in its buffer draws
new ones, so parent and child never share one.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from pke_vsphere.codec.keys import KeyRing

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
NONCES_PER_DRAW = 256


class Nonces:
    """Random 96-bit nonces from the OS, read ``NONCES_PER_DRAW`` at a time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._used = 0
        _LIVE.add(self)

    def _forget(self) -> None:
        self._lock = threading.Lock()  # a fork may have copied it held
        self._buffer, self._used = b"", 0

    def next(self) -> bytes:
        with self._lock:
            if self._used >= len(self._buffer):
                self._buffer, self._used = os.urandom(NONCE_BYTES * NONCES_PER_DRAW), 0
            nonce = self._buffer[self._used : self._used + NONCE_BYTES]
            self._used += NONCE_BYTES
            return nonce


_LIVE: weakref.WeakSet[Nonces] = weakref.WeakSet()


def _forget_in_child() -> None:
    for nonces in list(_LIVE):
        nonces._forget()


os.register_at_fork(after_in_child=_forget_in_child)


class EncryptionCodec(PayloadCodec):
    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in ring.keys.items()}
        self._nonces = Nonces()

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        key_id = self._ring.current
        cipher = self._ciphers[key_id]
        encoded = []
        for payload in payloads:
            nonce = self._nonces.next()
            data = nonce + cipher.encrypt(nonce, payload.SerializeToString(), key_id.encode())
            encoded.append(Payload(metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=data))
        return encoded

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        decoded = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                decoded.append(payload)
                continue
            key_id = payload.metadata[KEY_ID].decode()
            if key_id not in self._ciphers:
                raise ValueError(f"payload encrypted with unknown key id {key_id!r}")
            nonce, ciphertext = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
            plain = self._ciphers[key_id].decrypt(nonce, ciphertext, key_id.encode())
            decoded.append(Payload.FromString(plain))
        return decoded
