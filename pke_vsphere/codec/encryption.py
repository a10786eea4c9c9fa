"""AES-256-GCM payload codec.

An encrypted payload's metadata says ``encoding: binary/encrypted`` and names
the key (``encryption-key-id``); its data is a 12-byte nonce followed by the
ciphertext of the whole original payload (metadata included). Payloads without
that encoding pass through unchanged, so plain JSON started from the Web UI or
the ``temporal`` CLI still decodes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

from pke_vsphere.codec.keys import KeyRing

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12


class EncryptionCodec(PayloadCodec):
    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in ring.keys.items()}

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        key_id = self._ring.current
        cipher = self._ciphers[key_id]
        encoded = []
        for payload in payloads:
            nonce = os.urandom(NONCE_BYTES)
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
