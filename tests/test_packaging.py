"""What the built wheel puts into site-packages: the product's own import names only."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IMPORT_NAMES = {"pke_vsphere", "workflows", "activities", "starter", "worker"}


@pytest.mark.processes  # pip builds the wheel
def test_the_wheel_installs_only_the_products_import_names(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path,
            ROOT,
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("pke_vsphere-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = (n for n in names if n.endswith(".dist-info/top_level.txt"))
        declared = set(archive.read(top_level).decode().split())
    shipped = {n.split("/")[0].removesuffix(".py") for n in names if ".dist-info/" not in n}
    assert declared == IMPORT_NAMES
    assert shipped == IMPORT_NAMES
    assert "pke_vsphere/render/script.sh" in names  # the node's bootstrap script travels with the package
    assert not any(n.endswith(".go") for n in names)  # the simulator stays in the source tree
