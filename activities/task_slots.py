"""The worker's cap on vCenter tasks in flight.

vCenter serialises work per host and datastore and slows down for everyone when
one client floods it, so each worker starts at most ``cap`` tasks at a time.
Waiting for a slot heartbeats (step ``queued``: "queued for vCenter"), so
Temporal never takes a long wait for a dead worker and starts a second attempt
of the activity; an attempt that was cancelled or timed out while it waited
gives its slot back without starting its task.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from temporalio import activity
from temporalio.exceptions import CancelledError

from activities.progress import Progress
from models.messages import VCenterStep

WAKE_SECONDS = 1.0  # how often a queued activity heartbeats


class TaskSlots:
    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError("the vCenter task cap must be at least 1")
        self.cap = cap
        self._slots = threading.BoundedSemaphore(cap)
        self._lock = threading.Lock()
        self._in_use = 0
        self.most_in_use = 0
        self.waited = 0

    @property
    def in_use(self) -> int:
        return self._in_use

    @contextmanager
    def hold(self, progress: Progress) -> Iterator[None]:
        """Hold a slot for the duration of one vCenter task."""
        # Shielded: a cancellation arriving between the acquire and the try below
        # would otherwise lose the slot for good.
        with activity.shield_thread_cancel_exception():
            if not self._slots.acquire(blocking=False):
                with self._lock:
                    self.waited += 1
                progress.at(VCenterStep.QUEUED)
                while not self._slots.acquire(timeout=WAKE_SECONDS):
                    progress()
            with self._lock:
                self._in_use += 1
                self.most_in_use = max(self.most_in_use, self._in_use)
        try:
            if activity.is_cancelled():
                raise CancelledError("cancelled while queued for vCenter; no task was started")
            yield
        finally:
            with self._lock:
                self._in_use -= 1
            self._slots.release()
