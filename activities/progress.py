"""Heartbeats of long vCenter activities, and their deadlines.

Temporal keeps only the latest heartbeat's details, so every heartbeat carries
the whole progress (step, task in flight): a retry reads it to resume the task
instead of starting another. The deadline is the step's own (the activity's
schedule-to-close, counted from its first attempt), so a retry after a crash
gets what is left, not a new allowance.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from pydantic import ValidationError
from temporalio import activity

from pke_vsphere.contracts.messages import VCenterProgress, VCenterStep
from pke_vsphere.contracts.state import NodePhase

# Before the step's deadline, a task still running is cancelled in vCenter and
# waited for; this much of the step is kept for that.
CANCEL_MARGIN = timedelta(seconds=30)
# Unchanged progress is sent again only this part of the heartbeat timeout apart:
# a thousand waiting activities that heartbeat every second would keep Temporal busy
# with nothing new.
UNCHANGED_EVERY = 0.5
DEFAULT_HEARTBEAT = timedelta(seconds=10)
# A wait wakes to heartbeat this part of the heartbeat timeout apart (within these
# bounds): often enough that an unchanged heartbeat, due every UNCHANGED_EVERY of
# it, is never late by more than this, and no more often. A thousand waiting
# threads that woke every 2 or 3 s took the GIL from the worker's event loop 700
# times a second during a 3 + 997 create, for heartbeats not yet due.
WAKE_PART = 1 / 6
WAKE_BOUNDS = (1.0, 5.0)
# A batch's changes that come this close together go in one heartbeat.
GATHER_SECONDS = 0.25

T = TypeVar("T")

# Set in a thread that does part of an async activity's work: how its heartbeats
# reach the activity's event loop (the SDK's heartbeat of an async activity must be
# called there).
_via_loop: contextvars.ContextVar[Callable[[Any], None] | None] = contextvars.ContextVar(
    "heartbeat_via_loop", default=None
)


def _heartbeat(details: Any) -> None:
    send = _via_loop.get()
    if send is None:
        activity.heartbeat(details)
    else:
        send(details)


async def in_thread(executor: Executor, fn: Callable[[], T], progress: Progress) -> T:
    """Run ``fn``, a part of an async activity's work that blocks (vCenter calls, a
    task's wait), in a thread of ``executor``. Its heartbeats go through the
    activity's event loop; while it waits for a thread, the activity heartbeats
    ``progress`` itself. Cancelled, a part that started runs to its end first (a
    clone once started is waited for) and one that had not started never does."""
    loop = asyncio.get_running_loop()
    here = contextvars.copy_context()

    def send(details: Any) -> None:
        loop.call_soon_threadsafe(activity.heartbeat, details, context=here)

    def run() -> T:
        _via_loop.set(send)
        return fn()

    part = executor.submit(contextvars.copy_context().run, run)
    waited = asyncio.wrap_future(part)
    try:
        while not waited.done():
            if not part.running():
                progress()  # queued for a thread: alive all the same
            await asyncio.wait({waited}, timeout=progress.wake_seconds)
    except asyncio.CancelledError:
        if not part.cancel():
            while not waited.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({waited})
        raise
    return waited.result()


def wake_seconds() -> float:
    """How often a wait of this activity wakes to heartbeat (see ``WAKE_PART``)."""
    timeout = (activity.info().heartbeat_timeout or DEFAULT_HEARTBEAT).total_seconds()
    low, high = WAKE_BOUNDS
    return min(high, max(low, timeout * WAKE_PART))


class Progress:
    """The activity's progress; calling it heartbeats with all of it."""

    def __init__(self, step: VCenterStep = VCenterStep.LOOKING, phase: NodePhase | None = None) -> None:
        self._details = VCenterProgress(step=step, phase=phase)
        self._sent: VCenterProgress | None = None
        self._sent_at = 0.0
        self._urgent = False

    @property
    def details(self) -> VCenterProgress:
        return self._details

    @property
    def wake_seconds(self) -> float:
        """How often a wait calls this (the watcher and the task slots ask)."""
        return wake_seconds()

    def at(
        self, step: VCenterStep, task: str | None = None, method: str | None = None, *, urgent: bool = True
    ) -> None:
        """Record a new step and heartbeat it at once (``urgent=False``: with the
        next heartbeat due anyway, see :meth:`__call__`)."""
        self._details = VCenterProgress(step=step, task=task, method=method, phase=self._details.phase)
        self._urgent = self._urgent or urgent
        self()

    def enter(
        self, phase: NodePhase, step: VCenterStep = VCenterStep.LOOKING, *, urgent: bool = True
    ) -> None:
        """A node's provisioning moves on to ``phase``; heartbeat it at once (or, not
        ``urgent``, with the next heartbeat due anyway)."""
        self._details = VCenterProgress(step=step, phase=phase)
        self._urgent = self._urgent or urgent
        self()

    def __call__(self) -> None:
        """Heartbeat: at once if the progress changed urgently, else if the last one
        is ``UNCHANGED_EVERY`` of the heartbeat timeout old.

        An urgent change is one a retry needs (a task started: the retry resumes it
        instead of starting another) or one status must show at once (queued for
        vCenter). A change that is neither (waiting for the address, an extraConfig
        edit a retry may repeat) rides on the next heartbeat due: a thousand nodes'
        VM steps then heartbeat about half as often."""
        now = time.monotonic()
        changed = self._details != self._sent
        if not (changed and self._urgent) and now - self._sent_at < self._unchanged_every():
            return
        _heartbeat(self._details.model_dump(mode="json"))
        self._sent, self._sent_at, self._urgent = self._details, now, False

    @staticmethod
    def _unchanged_every() -> float:
        timeout = activity.info().heartbeat_timeout or DEFAULT_HEARTBEAT
        return timeout.total_seconds() * UNCHANGED_EVERY


class BatchProgress:
    """The progress of an activity that works on several VMs at once, each in a
    thread of its own: one heartbeat carries every VM's step and task, so a retry
    resumes each (see :func:`previous_items`).

    The VMs' threads only record; the activity's own thread heartbeats (see
    :meth:`beat_until`). The SDK's heartbeat of a thread activity waits for the
    event loop, and fifty threads taking turns at it would wait on each other."""

    def __init__(self) -> None:
        self._items: dict[str, VCenterProgress] = {}
        # Each VM's details as a heartbeat carries them, dumped once per change (not
        # once per heartbeat for every VM of the batch).
        self._dumped: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._sent: dict[str, dict[str, Any]] | None = None
        self._sent_at = 0.0

    def item(self, key: str) -> ItemProgress:
        """The progress of the VM ``key``, with :class:`Progress`'s interface."""
        self.record(key, VCenterProgress(step=VCenterStep.LOOKING))
        return ItemProgress(self, key)

    def details_of(self, key: str) -> VCenterProgress:
        with self._lock:
            return self._items[key]

    def record(self, key: str, details: VCenterProgress) -> None:
        dumped = details.model_dump(mode="json")
        with self._lock:
            self._items[key] = details
            self._dumped[key] = dumped
        self._changed.set()

    def wake(self) -> None:
        """Have :meth:`beat_until` look again (a VM's work ended)."""
        self._changed.set()

    def beat_until(self, done: Callable[[], bool], every: float) -> None:
        """Heartbeat the changes as they come, those of ``GATHER_SECONDS`` in one, and
        at least every ``every`` seconds, until ``done()``: call it on the activity's
        own thread. (Temporal gets a heartbeat at most every few seconds anyway, the
        latest details of those sent meanwhile; fifty VMs' changes one heartbeat each
        only kept the event loop busy.)"""
        while not done():
            if self._changed.wait(every):
                self._changed.clear()
                if not done():
                    time.sleep(GATHER_SECONDS)
            self._beat()

    def _beat(self) -> None:
        """Heartbeat every VM's progress, throttled as :class:`Progress` is."""
        with self._lock:
            items = dict(self._dumped)
        now = time.monotonic()
        if items == self._sent and now - self._sent_at < Progress._unchanged_every():
            return
        _heartbeat({"items": items})
        self._sent, self._sent_at = items, now


class ItemProgress(Progress):
    """One VM's part of a :class:`BatchProgress`: it records, the batch heartbeats."""

    def __init__(self, batch: BatchProgress, key: str) -> None:
        self._batch, self._key = batch, key

    @property
    def details(self) -> VCenterProgress:
        return self._batch.details_of(self._key)

    def at(
        self, step: VCenterStep, task: str | None = None, method: str | None = None, *, urgent: bool = True
    ) -> None:
        self._batch.record(self._key, VCenterProgress(step=step, task=task, method=method))

    def enter(
        self, phase: NodePhase, step: VCenterStep = VCenterStep.LOOKING, *, urgent: bool = True
    ) -> None:
        self._batch.record(self._key, VCenterProgress(step=step, phase=phase))

    def __call__(self) -> None:
        """A wait's liveness beat: the batch's own thread heartbeats on a clock."""


def previous_items() -> dict[str, VCenterProgress]:
    """What the last heartbeat of an earlier attempt of a batch said of each VM."""
    details = activity.info().heartbeat_details
    if not details or not isinstance(details[0], dict) or not isinstance(details[0].get("items"), dict):
        return {}
    found = {}
    for key, value in details[0]["items"].items():
        try:
            found[key] = VCenterProgress.model_validate(value)
        except ValidationError:
            continue
    return found


def previous() -> VCenterProgress | None:
    """What the last heartbeat of an earlier attempt said, if anything."""
    details = activity.info().heartbeat_details
    if not details or not isinstance(details[0], dict):
        return None
    try:
        return VCenterProgress.model_validate(details[0])
    except ValidationError:
        if isinstance(details[0].get("task"), str):  # an attempt of an older worker
            return VCenterProgress(step=VCenterStep.TASK, task=details[0]["task"])
        return None


class Deadline:
    """The end of the step the activity runs, and how much of it is left."""

    def __init__(self, end: datetime, total: timedelta) -> None:
        self.end = end
        self.total = total
        self.margin = min(CANCEL_MARGIN, total / 4)

    @classmethod
    def of_activity(cls, default: timedelta = timedelta(minutes=15)) -> Deadline:
        info = activity.info()
        if info.schedule_to_close_timeout:
            return cls(info.scheduled_time + info.schedule_to_close_timeout, info.schedule_to_close_timeout)
        total = info.start_to_close_timeout or default
        return cls(info.started_time + total, total)

    def part(self, ends_after: timedelta, length: timedelta) -> Deadline:
        """A part of this step that ends ``ends_after`` its start and lasts ``length``
        (a node's clone within its whole provisioning)."""
        return Deadline(min(self.end, self.started + ends_after), length)

    @property
    def started(self) -> datetime:
        """When the step's first attempt was scheduled."""
        return self.end - self.total

    def left(self) -> float:
        """Seconds until the end of the step."""
        return max(0.0, (self.end - datetime.now(UTC)).total_seconds())

    def left_for_task(self) -> float:
        """Seconds a task may still run before it must be cancelled."""
        return max(0.0, self.left() - self.margin.total_seconds())
