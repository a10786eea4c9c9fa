"""The cap on vCenter tasks in flight.

vCenter serialises work per host and datastore and slows down for everyone when
one client floods it, so at most ``cap`` tasks of this installation run at a
time: each worker lets at most ``cap`` of its own activities through, and those
then take one of the ``cap`` slots all workers share (workflows/vcenter_slots.py).

A worker leases shared slots for all its activities at once (``SharedSlots``):
one coroutine on the worker's event loop keeps the worker's share, asking for
more while activities queue, renewing what it holds, and giving back what it
has not used for a moment. So a thousand queued clones make a few calls per
worker, and a worker that dies frees its slots when its lease ends.

Waiting for a slot heartbeats (step ``queued``: "queued for vCenter"), so
Temporal never takes a long wait for a dead worker and starts a second attempt;
an attempt that was cancelled while it waited starts no task.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from typing import Any

import structlog
from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import CancelledError

from activities.progress import Progress
from pke_vsphere.contracts.messages import VCenterStep
from pke_vsphere.contracts.protocol import Update, WorkflowType
from pke_vsphere.contracts.slots import LONG_POLL, SlotLease, SlotLeaseGrant, SlotsState

log = structlog.get_logger(__name__)

# A queued activity wakes to heartbeat and see whether it was cancelled as often
# as its progress asks (``Progress.wake_seconds``): cancellation reaches a thread
# activity with a heartbeat's answer, so waking more often sees nothing new.
HOLD_LEASE = timedelta(seconds=60)
"""A worker's slots are freed this long after its last call (it died)."""
RENEW_EVERY = timedelta(seconds=20)
"""A worker holding slots renews its lease this often."""
KEEP_SECONDS = 0.5
"""A slot its activity gave back is kept this long for the next one before it is
returned (a call saved when tasks follow each other)."""
CALL_TIMEOUT = LONG_POLL + timedelta(seconds=10)
RETRY_SECONDS = 1.0


def slots_workflow_id(installation: str, task_queue: str) -> str:
    """One set of slots per installation and task queue (the workers that share them)."""
    return f"pke-vcenter-task-slots/{installation}/{task_queue}"


class SharedSlots:
    """This worker's share of the installation's slots.

    Activity threads call :meth:`acquire` and :meth:`release`; a coroutine on the
    worker's event loop (``_keep_share``) runs while anything is held or wanted
    and is the only caller of the slots workflow. A thread never heartbeats while
    it holds the lock: the SDK's heartbeat from a thread waits for the event loop,
    which may be waiting for the lock.
    """

    def __init__(
        self, client: Client, loop: asyncio.AbstractEventLoop, installation: str, task_queue: str, cap: int
    ) -> None:
        self._client = client
        self._loop = loop
        self._cap = cap
        self._task_queue = task_queue
        self.workflow_id = slots_workflow_id(installation, task_queue)
        self.worker = f"{uuid.uuid4()}"
        self._lock = threading.Condition()
        self._holding = 0  # leased from the workflow, by this worker's count
        self._in_use = 0  # of those, taken by activities
        self._wanting = 0  # activities waiting for one
        self._last_release = 0.0
        self._running = False
        self._wake: asyncio.Event | None = None
        self._ask = 0

    @property
    def calls(self) -> int:
        """Calls this worker made to the slots workflow."""
        return self._ask

    # Activity threads

    def acquire(self, progress: Progress) -> None:
        """Wait for a slot, heartbeating while queued; raises ``CancelledError``
        (holding nothing) if the activity is cancelled meanwhile."""
        with self._lock:
            if self._holding > self._in_use and self._wanting == 0:
                self._in_use += 1
                return
            self._wanting += 1
            self._nudge()
        queued = False
        try:
            while True:
                with self._lock:
                    if self._holding > self._in_use:
                        self._wanting -= 1
                        self._in_use += 1
                        return
                    self._lock.wait(progress.wake_seconds)
                    if self._holding > self._in_use:
                        self._wanting -= 1
                        self._in_use += 1
                        return
                if activity.is_cancelled():
                    raise CancelledError("cancelled while queued for vCenter; no task was started")
                if not queued:
                    progress.at(VCenterStep.QUEUED)
                    queued = True
                else:
                    progress()
        except BaseException:
            with self._lock:
                self._wanting -= 1
                self._nudge()
            raise

    def release(self) -> None:
        with self._lock:
            self._in_use -= 1
            self._last_release = time.monotonic()
            self._lock.notify()
            self._nudge()

    def _nudge(self) -> None:
        """(Under the lock.) Have the keeper look at the share again, starting it
        if it is not running."""
        if not self._running:
            self._running = True
            self._loop.call_soon_threadsafe(self._start)
        elif self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    # The worker's event loop

    def _start(self) -> None:
        self._wake = asyncio.Event()
        self._loop.create_task(self._keep_share())

    async def _keep_share(self) -> None:
        assert self._wake is not None
        renewed = time.monotonic()
        while True:
            self._wake.clear()
            now = time.monotonic()
            with self._lock:
                idle = self._holding - self._in_use
                short = self._wanting - idle
                give_back = idle > 0 and self._wanting == 0 and now - self._last_release >= KEEP_SECONDS
                if self._holding == 0 and self._wanting == 0:
                    self._running = False
                    return
                holding = self._in_use if give_back else self._holding
                if give_back:
                    self._holding = holding
                renew = holding > 0 and now - renewed >= RENEW_EVERY.total_seconds()
            if short > 0 or give_back or renew:
                grant = await self._lease(holding, max(0, short))
                if grant is None:
                    await asyncio.sleep(RETRY_SECONDS)
                    continue
                renewed = time.monotonic()
                with self._lock:
                    self._holding = holding + grant.granted
                    if grant.granted:
                        self._lock.notify(grant.granted)
                continue
            wait = (
                RENEW_EVERY.total_seconds() - (now - renewed) if holding > 0 else RENEW_EVERY.total_seconds()
            )
            if idle > 0:
                wait = min(wait, KEEP_SECONDS)
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.05, wait))

    async def _lease(self, holding: int, wanting: int) -> SlotLeaseGrant | None:
        """One call; None if it failed (the next call's count replaces whatever it did)."""
        self._ask += 1
        lease = SlotLease(
            worker=self.worker,
            ask=self._ask,
            holding=holding,
            wanting=min(wanting, self._cap),
            capacity=self._cap,
            lease_seconds=int(HOLD_LEASE.total_seconds()),
        )
        start: WithStartWorkflowOperation[Any, None] = WithStartWorkflowOperation(
            WorkflowType.VCENTER_SLOTS,
            SlotsState(capacity=self._cap),
            id=self.workflow_id,
            task_queue=self._task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        try:
            grant: SlotLeaseGrant = await asyncio.wait_for(
                self._client.execute_update_with_start_workflow(
                    Update.LEASE_SLOTS, lease, start_workflow_operation=start, result_type=SlotLeaseGrant
                ),
                CALL_TIMEOUT.total_seconds(),
            )
        except Exception as exc:
            log.warning("vcenter.slots_call_failed", worker=self.worker, error=str(exc) or type(exc).__name__)
            return None
        return grant


class TaskSlots:
    def __init__(self, cap: int, shared: SharedSlots | None = None) -> None:
        if cap < 1:
            raise ValueError("the vCenter task cap must be at least 1")
        self.shared = shared
        self._slots = threading.BoundedSemaphore(cap)

    @contextmanager
    def hold(self, progress: Progress) -> Iterator[None]:
        """Hold a slot for the duration of one vCenter task."""
        # Shielded: a cancellation arriving between an acquire and the try below
        # would otherwise lose the slot for good.
        with activity.shield_thread_cancel_exception():
            if not self._slots.acquire(blocking=False):
                progress.at(VCenterStep.QUEUED)
                while not self._slots.acquire(timeout=progress.wake_seconds):
                    if activity.is_cancelled():
                        raise CancelledError("cancelled while queued for vCenter; no task was started")
                    progress()
            try:
                if self.shared is not None:
                    self.shared.acquire(progress)
            except BaseException:
                self._slots.release()
                raise
        try:
            if activity.is_cancelled():
                raise CancelledError("cancelled while queued for vCenter; no task was started")
            yield
        finally:
            if self.shared is not None:
                self.shared.release()
            self._slots.release()
