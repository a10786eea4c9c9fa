"""VCenterSlotsWorkflow: the cap on vCenter tasks in flight, shared by every
worker of one installation.

Each worker already lets at most ``cap`` of its own activities start vCenter
tasks; this workflow makes the cap hold across workers too. A worker leases
slots for all its activities at once (activities/task_slots.py): the
``lease_slots`` update says how many it holds, by its own count, and how many
more it wants. An ask for more waits (a short long poll) until slots are free
and its turn has come, first come first served among the workers; a lease not
renewed within its ``lease_seconds`` ends, so a dead worker's slots come back.
The workflow keeps no history beyond that and continues as new when Temporal
suggests it.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pke_vsphere.contracts.protocol import Query, Update, WorkflowType
    from pke_vsphere.contracts.slots import LONG_POLL, SlotLease, SlotLeaseGrant, SlotsState, WorkerSlots

# A worker that has not asked again for this long has gone away: it loses its turn.
WAITER_GONE = timedelta(seconds=30)


@workflow.defn(name=WorkflowType.VCENTER_SLOTS)
class VCenterSlotsWorkflow:
    @workflow.init
    def __init__(self, state: SlotsState) -> None:
        # Read here, not in ``run``: the update that started this run is handled
        # before ``run`` begins, and must see what the previous run carried.
        self._capacity = state.capacity
        self._workers: dict[str, WorkerSlots] = dict(state.workers)
        self._most_in_use = state.most_in_use
        self._waiting: dict[str, tuple[datetime, int]] = {}  # worker -> (last ask, wanting), in arrival order
        self._draining = False

    def _in_use(self, now: datetime) -> int:
        return sum(w.holding for w in self._workers.values() if w.until > now)

    def _free_for(self, worker: str, now: datetime) -> int:
        """Slots this worker may take now: those free after the workers that asked
        before it and still ask have taken what they want."""
        free = self._capacity - self._in_use(now)
        for name, (seen, wanting) in self._waiting.items():
            if name == worker:
                return max(0, min(free, wanting))
            if now - seen < WAITER_GONE:
                free -= wanting
        return 0

    def _overtaken(self, lease: SlotLease) -> bool:
        current = self._workers.get(lease.worker)
        return current is not None and current.ask > lease.ask

    def _answer(self, worker: str, granted: int, now: datetime) -> SlotLeaseGrant:
        mine = self._workers.get(worker)
        return SlotLeaseGrant(
            granted=granted, holding=mine.holding if mine is not None else 0, in_use=self._in_use(now)
        )

    @workflow.update(name=Update.LEASE_SLOTS)
    async def lease_slots(self, lease: SlotLease) -> SlotLeaseGrant:
        now = workflow.now()
        if self._overtaken(lease):
            return self._answer(lease.worker, 0, now)
        self._capacity = lease.capacity
        until = now + timedelta(seconds=lease.lease_seconds)
        self._workers[lease.worker] = WorkerSlots(holding=lease.holding, until=until, ask=lease.ask)
        self._workers = {name: w for name, w in self._workers.items() if w.until > now}
        self._waiting = {
            w: s for w, s in self._waiting.items() if now - s[0] < WAITER_GONE and w != lease.worker
        }
        if lease.wanting == 0 or self._draining:
            return self._answer(lease.worker, 0, now)
        self._waiting[lease.worker] = (now, lease.wanting)
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(
                lambda: (
                    self._draining
                    or self._overtaken(lease)
                    or self._free_for(lease.worker, workflow.now()) > 0
                ),
                timeout=LONG_POLL,
            )
        now = workflow.now()
        mine = self._workers.get(lease.worker)
        if mine is None or mine.ask != lease.ask:  # a later call answers for this worker
            return self._answer(lease.worker, 0, now)
        granted = 0 if self._draining else self._free_for(lease.worker, now)
        self._waiting.pop(lease.worker, None)
        self._workers[lease.worker] = WorkerSlots(holding=mine.holding + granted, until=until, ask=lease.ask)
        self._most_in_use = max(self._most_in_use, self._in_use(now))
        return self._answer(lease.worker, granted, now)

    @workflow.query(name=Query.SLOTS)
    def slots(self) -> SlotsState:
        return SlotsState(capacity=self._capacity, workers=self._workers, most_in_use=self._most_in_use)

    @workflow.run
    async def run(self, state: SlotsState) -> None:
        await workflow.wait_condition(lambda: workflow.info().is_continue_as_new_suggested())
        # Waiters answer with what they have and ask the next run; holders keep their slots.
        self._draining = True
        await workflow.wait_condition(workflow.all_handlers_finished)
        now = workflow.now()
        workflow.continue_as_new(
            SlotsState(
                capacity=self._capacity,
                workers={name: w for name, w in self._workers.items() if w.until > now},
                most_in_use=self._most_in_use,
            )
        )
