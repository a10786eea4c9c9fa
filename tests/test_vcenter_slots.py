"""The installation's vCenter task slots (workflows/vcenter_slots.py), on the real
Temporal server: how workers' leases share the cap, and the worker side that
keeps a worker's share (activities/task_slots.py)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy
from temporalio.worker import Worker

from activities.progress import Progress
from activities.task_slots import SharedSlots, TaskSlots
from pke_vsphere.contracts.protocol import Query, Update, WorkflowType
from pke_vsphere.contracts.slots import SlotLease, SlotLeaseGrant, SlotsState
from workflows.vcenter_slots import VCenterSlotsWorkflow


class Slots:
    """Calls to one slots workflow, as workers make them."""

    def __init__(self, client: Client, capacity: int) -> None:
        self.client = client
        self.capacity = capacity
        self.task_queue = f"slots-{uuid.uuid4()}"
        self.workflow_id = f"pke-vcenter-task-slots/test/{uuid.uuid4()}"
        self.asks: dict[str, int] = {}

    async def lease(
        self, worker: str, holding: int, wanting: int, lease_seconds: int = 60, ask: int | None = None
    ) -> SlotLeaseGrant:
        if ask is None:
            ask = self.asks.get(worker, 0) + 1
        self.asks[worker] = max(ask, self.asks.get(worker, 0))
        start: WithStartWorkflowOperation[Any, None] = WithStartWorkflowOperation(
            WorkflowType.VCENTER_SLOTS,
            SlotsState(capacity=self.capacity),
            id=self.workflow_id,
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        grant: SlotLeaseGrant = await self.client.execute_update_with_start_workflow(
            Update.LEASE_SLOTS,
            SlotLease(
                worker=worker,
                ask=ask,
                holding=holding,
                wanting=wanting,
                capacity=self.capacity,
                lease_seconds=lease_seconds,
            ),
            start_workflow_operation=start,
            result_type=SlotLeaseGrant,
        )
        return grant

    async def state(self) -> SlotsState:
        handle = self.client.get_workflow_handle(self.workflow_id)
        state: SlotsState = await handle.query(Query.SLOTS, result_type=SlotsState)
        return state

    def worker(self) -> Worker:
        return Worker(self.client, task_queue=self.task_queue, workflows=[VCenterSlotsWorkflow])


async def test_slots_go_to_the_workers_in_the_order_they_asked(client: Client) -> None:
    slots = Slots(client, capacity=2)
    async with slots.worker():
        first = await slots.lease("a", holding=0, wanting=5)
        assert (first.granted, first.holding, first.in_use) == (2, 2, 2)

        b = asyncio.create_task(slots.lease("b", holding=0, wanting=1))
        await asyncio.sleep(0.5)
        c = asyncio.create_task(slots.lease("c", holding=0, wanting=1))
        await asyncio.sleep(0.5)
        back = await slots.lease("a", holding=1, wanting=0)  # gives one back
        assert back.granted == 0 and back.holding == 1

        b_grant, c_grant = await asyncio.wait_for(asyncio.gather(b, c), 30)
        assert b_grant.granted == 1, "b asked first"
        assert c_grant.granted == 0, "c asked after b; none left within its long poll"
        state = await slots.state()
        assert {name: w.holding for name, w in state.workers.items() if w.holding} == {"a": 1, "b": 1}
        assert state.most_in_use == 2


async def test_an_overtaken_call_grants_nothing_and_the_workers_own_count_wins(client: Client) -> None:
    """A worker whose call it gave up on asks again: only the later call is
    answered with slots, and the count it reports replaces what the workflow had
    (a grant whose answer never reached it comes back)."""
    slots = Slots(client, capacity=2)
    async with slots.worker():
        assert (await slots.lease("a", holding=0, wanting=2)).granted == 2
        old = asyncio.create_task(slots.lease("b", holding=0, wanting=1, ask=1))
        await asyncio.sleep(0.5)
        new = asyncio.create_task(slots.lease("b", holding=0, wanting=1, ask=2))
        await asyncio.sleep(0.5)
        await slots.lease("a", holding=1, wanting=0)
        old_grant, new_grant = await asyncio.wait_for(asyncio.gather(old, new), 30)
        assert old_grant.granted == 0
        assert new_grant.granted == 1 and new_grant.holding == 1

        # "a" lost the answer of a call that granted it a slot; its next call says it holds none.
        await slots.lease("a", holding=0, wanting=0)
        state = await slots.state()
        assert {name: w.holding for name, w in state.workers.items()} == {"a": 0, "b": 1}
        late = await slots.lease("b", holding=1, wanting=1, ask=1)  # older than b's last: nothing
        assert late.granted == 0 and late.holding == 1


async def test_a_dead_workers_slots_are_freed_when_its_lease_ends(client: Client) -> None:
    slots = Slots(client, capacity=1)
    async with slots.worker():
        assert (await slots.lease("dead", holding=0, wanting=1, lease_seconds=3)).granted == 1
        started = time.monotonic()
        grant = await slots.lease("alive", holding=0, wanting=1)
        while not grant.granted:
            assert time.monotonic() - started < 30, "the dead worker's slot never came back"
            grant = await slots.lease("alive", holding=0, wanting=1)
        assert time.monotonic() - started >= 2.0, "granted while the dead worker's lease still ran"
        assert grant.in_use == 1


async def test_many_tasks_share_the_cap_with_few_calls(client: Client) -> None:
    """20 tasks on two workers (each with its own share of a cap of 4) never run
    more than 4 at once, all run, and the workers ask far less often than once a task."""
    slots = Slots(client, capacity=4)
    shares = [SharedSlots(client, asyncio.get_running_loop(), "test", slots.task_queue, 4) for _ in range(2)]
    shares[0].workflow_id = shares[1].workflow_id = slots.workflow_id
    running, most, ran = 0, 0, 0
    lock = threading.Lock()

    def make(share: SharedSlots) -> Any:
        task_slots = TaskSlots(4, share)

        @activity.defn(name=f"slot_task_{id(share)}")
        def slot_task() -> None:
            nonlocal running, most, ran
            with task_slots.hold(Progress()):
                with lock:
                    running += 1
                    most = max(most, running)
                time.sleep(0.3)
                with lock:
                    running -= 1
                    ran += 1

        return slot_task

    tasks = [make(share) for share in shares]
    with ThreadPoolExecutor(max_workers=24) as executor:
        workers = [
            Worker(
                client,
                task_queue=f"{slots.task_queue}-{n}",
                activities=[tasks[n]],
                workflows=[SlotTasksWorkflow],
                activity_executor=executor,
            )
            for n in range(2)
        ]
        async with slots.worker(), workers[0], workers[1]:
            await asyncio.wait_for(
                asyncio.gather(
                    *(
                        client.execute_workflow(
                            SlotTasksWorkflow.run,
                            args=[tasks[n].__temporal_activity_definition.name, 10],
                            id=f"slot-tasks-{uuid.uuid4()}",
                            task_queue=f"{slots.task_queue}-{n}",
                        )
                        for n in range(2)
                    )
                ),
                120,
            )
            # Each worker gives back what it no longer uses.
            state, given_up = await slots.state(), time.monotonic() + 30
            while any(w.holding for w in state.workers.values()):
                assert time.monotonic() < given_up, f"slots still held: {state.workers}"
                await asyncio.sleep(0.2)
                state = await slots.state()
    assert ran == 20
    assert most <= 4
    assert sum(share.calls for share in shares) < 20
    assert state.most_in_use <= 4


@workflow.defn(sandboxed=False)
class SlotTasksWorkflow:
    """Runs ``count`` of one activity at once (the test's tasks)."""

    @workflow.run
    async def run(self, activity_name: str, count: int) -> None:
        await asyncio.gather(
            *(
                workflow.execute_activity(
                    activity_name,
                    start_to_close_timeout=timedelta(seconds=90),
                    heartbeat_timeout=timedelta(seconds=10),
                    retry_policy=RetryPolicy(maximum_attempts=1),
                )
                for _ in range(count)
            )
        )
