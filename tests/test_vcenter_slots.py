"""The installation's vCenter task slots (workflows/vcenter_slots.py), on the real
Temporal server: what happens when one holder asks twice at once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from pke_vsphere.contracts.protocol import Query, Signal, Update, WorkflowType
from pke_vsphere.contracts.slots import SlotGrant, SlotRelease, SlotRequest, SlotsState
from workflows.vcenter_slots import VCenterSlotsWorkflow


async def test_one_holder_asking_twice_while_it_waits_gets_its_slot_and_the_slots_keep_answering(
    client: Client,
) -> None:
    """A holder's ask can be sent again while the first still waits (the first
    one's call timed out, an attempt was retried); when its turn comes both are
    answered, it holds one slot, and the workflow goes on serving others."""
    task_queue, workflow_id = f"slots-{uuid.uuid4()}", f"pke-vcenter-slots/test/{uuid.uuid4()}"

    async def ask(holder: str) -> SlotGrant:
        start: WithStartWorkflowOperation[Any, None] = WithStartWorkflowOperation(
            WorkflowType.VCENTER_SLOTS,
            SlotsState(capacity=1),
            id=workflow_id,
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        grant: SlotGrant = await client.execute_update_with_start_workflow(
            Update.ACQUIRE_SLOT,
            SlotRequest(holder=holder, capacity=1, lease_seconds=60),
            start_workflow_operation=start,
            result_type=SlotGrant,
        )
        return grant

    async with Worker(client, task_queue=task_queue, workflows=[VCenterSlotsWorkflow]):
        assert (await ask("first")).granted
        twice = [asyncio.create_task(ask("second")) for _ in range(2)]
        await asyncio.sleep(1)  # both wait for the one slot
        handle = client.get_workflow_handle(workflow_id)
        await handle.signal(Signal.RELEASE_SLOT, SlotRelease(holder="first"))
        grants = await asyncio.wait_for(asyncio.gather(*twice), 30)

        assert [g.granted for g in grants] == [True, True]
        state = await handle.query(Query.SLOTS, result_type=SlotsState)
        assert list(state.leases) == ["second"]
        third = await asyncio.wait_for(ask("third"), 30)  # the cap is held: "not yet", answered
        assert not third.granted
