"""VCenterSlotsWorkflow: the cap on vCenter tasks in flight, shared by every
worker of one installation.

Each worker already lets at most ``cap`` of its own activities start vCenter
tasks; this workflow makes the cap hold across workers too. An activity asks
for a slot with the ``acquire_slot`` update, which waits (a short long poll)
until a slot is free and its turn has come, first come first served; it gives
the slot back with the ``release_slot`` signal when its task ends. A slot whose
holder died is taken over by the holder's retry (same holder id), or freed at
the end of the holder's lease (its step's deadline). The workflow keeps no
history of its own beyond that and continues as new when Temporal suggests it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pke_vsphere.contracts.protocol import Query, Signal, Update, WorkflowType
    from pke_vsphere.contracts.slots import LONG_POLL, SlotGrant, SlotRelease, SlotRequest, SlotsState

# A waiter that has not asked again for this long has gone away: it loses its turn.
WAITER_GONE = timedelta(seconds=30)


@workflow.defn(name=WorkflowType.VCENTER_SLOTS)
class VCenterSlotsWorkflow:
    def __init__(self) -> None:
        self._capacity = 1
        self._leases: dict[str, datetime] = {}
        self._waiting: dict[str, datetime] = {}  # holder -> last ask, in arrival order
        self._most_in_use = 0
        self._draining = False

    def _live(self, now: datetime) -> dict[str, datetime]:
        return {h: until for h, until in self._leases.items() if until > now}

    def _turn(self, holder: str, now: datetime) -> bool:
        """The holder may take a slot: one is free, and no one who asked earlier and
        still asks is waiting for it."""
        free = self._capacity - len(self._live(now))
        if free <= 0:
            return False
        ahead = [h for h, seen in self._waiting.items() if now - seen < WAITER_GONE]
        return holder in ahead[:free]

    @workflow.update(name=Update.ACQUIRE_SLOT)
    async def acquire(self, request: SlotRequest) -> SlotGrant:
        now = workflow.now()
        self._capacity = request.capacity
        lease_end = now + timedelta(seconds=request.lease_seconds)
        if request.holder in self._leases:  # a retry of the holder, or its renewal
            self._leases[request.holder] = lease_end
            return SlotGrant(granted=True, in_use=len(self._live(now)))
        self._waiting = {h: seen for h, seen in self._waiting.items() if now - seen < WAITER_GONE}
        self._waiting[request.holder] = now  # a waiter asking again keeps its place
        try:
            await workflow.wait_condition(
                lambda: self._draining or self._turn(request.holder, workflow.now()), timeout=LONG_POLL
            )
        except TimeoutError:
            return SlotGrant(granted=False, in_use=len(self._live(workflow.now())))
        if self._draining:
            return SlotGrant(granted=False, in_use=len(self._live(workflow.now())))
        now = workflow.now()
        # Not ``del``: between this ask's turn and here, another ask in the same
        # workflow task may have dropped it from the waiters (its last ask looked
        # older than WAITER_GONE when workflow time jumped under load), or a second
        # ask of the same holder took the turn. A KeyError here failed the workflow
        # task for good and stopped every vCenter task of the installation.
        self._waiting.pop(request.holder, None)
        self._leases = self._live(now)
        self._leases[request.holder] = now + timedelta(seconds=request.lease_seconds)
        self._most_in_use = max(self._most_in_use, len(self._leases))
        return SlotGrant(granted=True, in_use=len(self._leases))

    @workflow.signal(name=Signal.RELEASE_SLOT)
    def release(self, release: SlotRelease) -> None:
        self._leases.pop(release.holder, None)

    @workflow.query(name=Query.SLOTS)
    def slots(self) -> SlotsState:
        return SlotsState(capacity=self._capacity, leases=self._leases, most_in_use=self._most_in_use)

    @workflow.run
    async def run(self, state: SlotsState) -> None:
        self._capacity = state.capacity
        self._leases = dict(state.leases)
        self._most_in_use = state.most_in_use
        await workflow.wait_condition(lambda: workflow.info().is_continue_as_new_suggested())
        # Waiters answer "not yet" and ask the next run; holders keep their slots.
        self._draining = True
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            SlotsState(
                capacity=self._capacity,
                leases=self._live(workflow.now()),
                most_in_use=self._most_in_use,
            )
        )
