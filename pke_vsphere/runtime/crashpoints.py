"""Named crash points, for the fault-injection tests (like etcd's gofail).

``PKE_VSPHERE_CRASH_AT=clone.started`` makes the process kill itself with
SIGKILL the first time it reaches ``reach("clone.started")``; ``name@3`` waits
for the third time. Several points may be listed, comma-separated. With the
variable unset (always, outside tests) ``reach`` does nothing.

A point sits right after a side effect and before its result is recorded
anywhere: the moment a crash costs the most.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections import Counter

ENV = "PKE_VSPHERE_CRASH_AT"

# Every point in the code, so a test's typo is an error rather than a test that never crashes.
POINTS = frozenset(
    {
        "pki.generated",
        "clone.started",
        "clone.finished",
        "reconfigure.started",
        "reconfigure.finished",
        "power_on.started",
        "ip.reported",
        "join_token.installed",
        "node_workflows.started",
        "drain.finished",
        "kube_node.deleted",
        "power_off.started",
        "destroy.started",
        "destroy.finished",
        "schedules.deleted",
    }
)


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition("@")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown crash point {name!r}; known: {', '.join(sorted(POINTS))}")
        armed[name] = int(nth) if nth else 1
    return armed


_armed = _parse(os.environ.get(ENV, ""))
_seen: Counter[str] = Counter()
_lock = threading.Lock()


def reach(point: str) -> None:
    """Die here, without cleanup, if this point is armed and its count is reached."""
    if not _armed:
        return
    with _lock:
        _seen[point] += 1
        if _seen[point] != _armed.get(point):
            return
    sys.stderr.write(f"crash point {point} reached: SIGKILL\n")
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
