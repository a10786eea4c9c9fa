"""Payload encryption keys: a file of ``<key-id> <base64 of 32 bytes>`` lines.

The last line is the newest key and encrypts; every key decrypts. To rotate,
append a new line and restart the processes; remove an old line only once no
history that still matters was written with it.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from pke_vsphere.config.files import read_private

_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class KeyRing:
    keys: dict[str, bytes]
    current: str

    def key(self, key_id: str) -> bytes:
        try:
            return self.keys[key_id]
        except KeyError:
            raise KeyError(f"payload encrypted with unknown key id {key_id!r}") from None


def parse(text: str, source: str = "keys") -> KeyRing:
    keys: dict[str, bytes] = {}
    current = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not _KEY_ID.match(parts[0]):
            raise ValueError(f"{source}:{number}: expected '<key-id> <base64 key>'")
        try:
            key = base64.b64decode(parts[1], validate=True)
        except ValueError:
            raise ValueError(f"{source}:{number}: the key is not base64") from None
        if len(key) != 32:
            raise ValueError(f"{source}:{number}: the key must be 32 bytes (AES-256), not {len(key)}")
        keys[parts[0]] = key
        current = parts[0]
    if current is None:
        raise ValueError(f"{source}: no keys")
    return KeyRing(keys, current)


def load(path: Path) -> KeyRing:
    """The key ring of a keys file readable by its owner only."""
    return parse(read_private(path, "payload keys file"), str(path))


def new_key_line(key_id: str) -> str:
    return f"{key_id} {base64.b64encode(secrets.token_bytes(32)).decode()}\n"


def create(path: Path, key_id: str = "k1") -> KeyRing:
    """Write a keys file with one fresh key, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_key_line(key_id))
    return load(path)
