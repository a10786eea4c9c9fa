"""Every CLI error is one line naming the file, the line or the field, with a
non-zero exit code; never a traceback."""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from starter import cli
from tests.conftest import Stack, cluster_spec

ROOT = Path(__file__).resolve().parent.parent
GOOD = yaml.safe_dump(cluster_spec("cli-errors", masters=1, workers=1).model_dump(mode="json"))

# (what, file content or None for no file, exit code, what the one line says after "error: FILE: ")
SPEC_FILES = [
    (
        "malformed YAML",
        "name: a\nfoo: bar: baz\n",
        2,
        "line 2, column 9: not valid YAML: mapping values are not allowed",
    ),
    ("a list instead of a mapping", "- name: a\n- name: b\n", 2, "a cluster spec is a mapping of fields"),
    ("a string instead of a mapping", "just words\n", 2, "a cluster spec is a mapping of fields (name"),
    ("an empty file", "", 2, "empty; a cluster spec is a mapping of fields"),
    ("a missing file", None, 2, "no such file"),
    ("not UTF-8", b"name: \xff\xfe\n", 2, "not UTF-8 text (byte 6)"),
    (
        "a field wrong",
        GOOD.replace("cpus: 2", "cpus: many"),
        2,
        "invalid cluster spec (1 problem(s)): pools.0",
    ),
    ("a field unknown", GOOD + "colour: blue\n", 2, "invalid cluster spec (1 problem(s)): colour: Extra"),
]


@pytest.mark.parametrize(("what", "content", "code", "says"), SPEC_FILES, ids=[c[0] for c in SPEC_FILES])
async def test_a_bad_spec_file_is_one_line_naming_it_and_nothing_is_started(
    what: str,
    content: str | bytes | None,
    code: int,
    says: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "cluster.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    # No Temporal client and none reachable: the file is checked before anything else.
    assert await cli.run(["--settings", str(tmp_path / "none.env"), "create", "-f", str(path)]) == code
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    assert out.startswith(f"error: {path}: {says}"), out


def _without_root_file_access() -> None:
    """Root reads any file: drop the capabilities that let it (CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH) from the bounding set, so the command runs as a user would."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    for capability in (1, 2):
        if prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.processes
def test_an_unreadable_spec_file_is_one_line_from_the_real_command(tmp_path: Path) -> None:
    """The ``pke-vsphere`` entry point in its own process, as a user runs it."""
    path = tmp_path / "cluster.yaml"
    path.write_text(GOOD)
    path.chmod(0o000)
    result = subprocess.run(
        [sys.executable, "-c", "from starter.cli import main; main()", "create", "-f", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=os.environ | {"PKE_VSPHERE_ALLOW_UNENCRYPTED_PAYLOADS": "true", "HOME": str(tmp_path)},
        preexec_fn=_without_root_file_access if os.geteuid() == 0 else None,
    )
    assert result.returncode == 2, result
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == f"error: {path}: not readable (permission denied)\n", result


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "{name}"],
        ["scale", "{name}", "--pool", "workers", "--size", "3"],
        ["delete", "{name}", "--wait"],
    ],
    ids=["status", "scale", "delete"],
)
async def test_a_cluster_that_does_not_exist_is_one_line_for_every_command(
    argv: list[str], stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "never-created"
    assert await cli.run([a.format(name=name) for a in argv], client=stack.client) == 1
    assert capsys.readouterr().out == f"error: no cluster named {name!r} (no workflow pke-cluster-{name})\n"
    handle = stack.client.get_workflow_handle(f"pke-delete-{name}")
    with pytest.raises(Exception, match="not found"):  # the delete started nothing
        await handle.describe()


async def test_an_unreachable_temporal_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PKE_VSPHERE_TEMPORAL_ADDRESS", f"127.0.0.1:{port}")
    monkeypatch.setenv("PKE_VSPHERE_ALLOW_UNENCRYPTED_PAYLOADS", "true")
    assert await cli.run(["status", "demo"]) == 1
    assert (
        capsys.readouterr().out == f"error: cannot reach Temporal at 127.0.0.1:{port}: connection refused\n"
    )
