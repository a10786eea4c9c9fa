"""Files that hold secrets, and refusing to start on the wrong ones.

A key or credential file readable by the file's group or by everyone is
refused, with the file and its mode named: the keys file, the vCenter password
file, the node-token signing key and the storage and etcd credential files
(and the etcd client keys they name). Every process start-up problem is a
:class:`RefusedToStart`, which the entry points print as one line.
"""

from __future__ import annotations

import stat
from pathlib import Path


class RefusedToStart(ValueError):
    """A setting or file this process will not run with; the message says which and why."""


class InsecureFile(RefusedToStart):
    """A secret file readable by group or others."""


def check_private(path: Path, what: str) -> None:
    """Refuse ``path`` unless only its owner may read it.

    Raises:
        RefusedToStart: the file is missing or unreadable.
        InsecureFile: its group or others may read it.
    """
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise RefusedToStart(f"{what} {path}: {exc.strerror or exc}") from None
    if mode & 0o044:
        raise InsecureFile(
            f"{what} {path} is mode {mode:04o}, readable by its group or others; "
            f"make it readable by its owner only (chmod 600 {path})"
        )


def read_private(path: Path, what: str) -> str:
    """The text of a secret file, once :func:`check_private` passed."""
    check_private(path, what)
    try:
        return path.read_text()
    except OSError as exc:
        raise RefusedToStart(f"{what} {path}: {exc.strerror or exc}") from None
