"""Stored histories are only ever added: each file under tests/histories is the
version first committed, and none added since the baseline has gone. A history
re-recorded in place would let a workflow change that breaks running clusters
pass its replay test (tests/test_replay.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HISTORIES = "tests/histories"
BASELINE = f"{HISTORIES}/cluster-0.2.0.json"
"""The first history of the 0.2.0 baseline: histories from before it were never released."""


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope="module")
def full_history() -> None:
    if not (ROOT / ".git").exists():
        pytest.fail("the histories check needs the project's git history (run it in a clone)")
    if git("rev-parse", "--is-shallow-repository").strip() == "true":
        git("fetch", "--quiet", "--unshallow")


def added_since_baseline() -> list[str]:
    (baseline,) = git("log", "--diff-filter=A", "--format=%H", "--", BASELINE).split() or [""]
    assert baseline, f"{BASELINE} was never committed"
    added = git("log", "--diff-filter=A", "--name-only", "--format=", f"{baseline}^..HEAD", "--", HISTORIES)
    return sorted(set(added.split()))


@pytest.mark.usefixtures("full_history")
def test_every_stored_history_is_its_first_committed_version() -> None:
    tracked = git("ls-files", "--", HISTORIES).split()
    assert BASELINE in tracked
    changed = []
    for path in tracked:
        (first, *_) = git("log", "--diff-filter=A", "--reverse", "--format=%H", "--", path).split() or [""]
        if first and git("show", f"{first}:{path}") != (ROOT / path).read_text():
            changed.append(path)
    assert changed == [], f"rewritten after their first commit (add a new file instead): {changed}"
    uncommitted = git("status", "--porcelain", "--", HISTORIES).split("\n")
    assert [line for line in uncommitted if line.strip() and not line.startswith("??")] == []


@pytest.mark.usefixtures("full_history")
def test_no_history_added_since_the_baseline_is_gone() -> None:
    present = {str(p.relative_to(ROOT)) for p in (ROOT / HISTORIES).glob("*.json")}
    assert [path for path in added_since_baseline() if path not in present] == []
