"""The cap on vCenter tasks in flight.

vCenter serialises work per host and datastore and slows down for everyone when
one client floods it, so at most ``cap`` tasks of this installation run at a
time: each worker lets at most ``cap`` of its own activities through, and those
then take one of the ``cap`` slots all workers share (``SharedSlots``, kept by
workflows/vcenter_slots.py). Waiting for a slot heartbeats (step ``queued``:
"queued for vCenter"), so Temporal never takes a long wait for a dead worker and
starts a second attempt; an attempt that was cancelled or timed out while it
waited gives its slot back without starting its task.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

import structlog
from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import CancelledError

from activities.progress import Progress
from pke_vsphere.contracts.messages import VCenterStep
from pke_vsphere.contracts.protocol import Signal, Update, WorkflowType
from pke_vsphere.contracts.slots import LONG_POLL, SlotGrant, SlotRelease, SlotRequest, SlotsState

log = structlog.get_logger(__name__)
T = TypeVar("T")

WAKE_SECONDS = 1.0  # how often a queued activity heartbeats while it waits in this worker
CALL_TIMEOUT = LONG_POLL + timedelta(seconds=10)
# A slot never released (its holder died and was not retried) is freed after the
# holder's step deadline plus this.
LEASE_MARGIN = timedelta(seconds=30)


def slots_workflow_id(installation: str, task_queue: str) -> str:
    """One set of slots per installation and task queue (the workers that share them)."""
    return f"pke-vcenter-slots/{installation}/{task_queue}"


class SharedSlots:
    """The installation's slots, asked for from activity threads through the
    worker's Temporal client on the worker's event loop."""

    def __init__(
        self, client: Client, loop: asyncio.AbstractEventLoop, installation: str, task_queue: str, cap: int
    ) -> None:
        self._client = client
        self._loop = loop
        self._cap = cap
        self._task_queue = task_queue
        self.workflow_id = slots_workflow_id(installation, task_queue)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT.total_seconds())

    async def _ask(self, request: SlotRequest) -> SlotGrant:
        start: WithStartWorkflowOperation[Any, None] = WithStartWorkflowOperation(
            WorkflowType.VCENTER_SLOTS,
            SlotsState(capacity=self._cap),
            id=self.workflow_id,
            task_queue=self._task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        grant: SlotGrant = await self._client.execute_update_with_start_workflow(
            Update.ACQUIRE_SLOT, request, start_workflow_operation=start, result_type=SlotGrant
        )
        return grant

    def acquire(self, holder: str, lease: timedelta, progress: Progress) -> None:
        """Wait for a slot, heartbeating between asks."""
        request = SlotRequest(
            holder=holder, capacity=self._cap, lease_seconds=int((lease + LEASE_MARGIN).total_seconds())
        )
        while not self._call(self._ask(request)).granted:
            if progress.details.step is not VCenterStep.QUEUED:
                progress.at(VCenterStep.QUEUED)
            else:
                progress()

    def release(self, holder: str) -> None:
        """Give the slot back; if that fails, the lease frees it later."""
        handle = self._client.get_workflow_handle(self.workflow_id)
        try:
            self._call(handle.signal(Signal.RELEASE_SLOT, SlotRelease(holder=holder)))
        except Exception as exc:  # the slot's lease ends it anyway
            log.warning("vcenter.slot_release_failed", holder=holder, error=str(exc))


class TaskSlots:
    def __init__(self, cap: int, shared: SharedSlots | None = None) -> None:
        if cap < 1:
            raise ValueError("the vCenter task cap must be at least 1")
        self.shared = shared
        self._slots = threading.BoundedSemaphore(cap)

    @contextmanager
    def hold(self, progress: Progress, lease: timedelta) -> Iterator[None]:
        """Hold a slot for the duration of one vCenter task of at most ``lease``."""
        info = activity.info()
        holder = f"{info.workflow_id}/{info.activity_id}"
        # Shielded: a cancellation arriving between an acquire and the try below
        # would otherwise lose the slot for good.
        with activity.shield_thread_cancel_exception():
            if not self._slots.acquire(blocking=False):
                progress.at(VCenterStep.QUEUED)
                while not self._slots.acquire(timeout=WAKE_SECONDS):
                    progress()
            try:
                if self.shared is not None:
                    self.shared.acquire(holder, lease, progress)
            except BaseException:
                self._slots.release()
                raise
        try:
            if activity.is_cancelled():
                raise CancelledError("cancelled while queued for vCenter; no task was started")
            yield
        finally:
            if self.shared is not None:
                self.shared.release(holder)
            self._slots.release()
