"""The worker's memory with a thousand activity threads.

glibc gives threads that allocate at the same time malloc arenas of their own,
up to eight per core, and each arena keeps what it once held. A worker running
a 1000-node create has a thread per ``provision_vm`` (about a thousand), so its
heap spreads over every arena the machine allows. Two arenas are plenty for
threads that mostly wait on vCenter.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import time

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)
ARENAS = 2


def limit_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (before threads start); False where there is no
    glibc, or the operator chose with ``MALLOC_ARENA_MAX``."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


class CollectorTimes:
    """How often, and for how long, Python's cyclic garbage collector ran, by
    generation: a full collection walks every tracked object while holding the
    interpreter's lock, the event loop's and every activity thread's."""

    def __init__(self) -> None:
        self.runs = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._started = 0.0
        gc.callbacks.append(self._on_collect)

    def _on_collect(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.runs[generation] += 1
        self.seconds[generation] += time.perf_counter() - self._started

    def summary(self) -> dict[str, object]:
        return {"runs": self.runs, "seconds": [round(s, 2) for s in self.seconds]}
