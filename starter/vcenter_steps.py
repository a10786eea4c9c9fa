"""What each node in a vCenter step is doing right now ("queued for vCenter",
"task task-123"), read from its node workflow's pending activity: the last
heartbeat of a vCenter activity carries its progress (activities/progress.py).
Nothing is stored for it; the status query stays as it was."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from temporalio.client import Client
from temporalio.service import RPCError

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import VCenterProgress, VCenterStep
from pke_vsphere.contracts.state import ClusterStatus, NodePhase

# Node phases whose work is a vCenter activity.
VCENTER_PHASES = frozenset(
    {NodePhase.CLONING, NodePhase.CONFIGURING, NodePhase.POWERING_ON, NodePhase.WAITING_FOR_IP}
)
CONCURRENT_DESCRIBES = 16


async def node_progress(client: Client, status: ClusterStatus) -> dict[str, VCenterProgress]:
    """The vCenter progress of every node of ``status`` in a vCenter phase, by name."""
    limit = asyncio.Semaphore(CONCURRENT_DESCRIBES)

    async def one(node: str) -> tuple[str, VCenterProgress | None]:
        async with limit:
            handle = client.get_workflow_handle(ids.node_workflow_id(status.name, node))
            try:
                description = await handle.describe()
            except RPCError:
                return node, None
        for pending in description.raw_description.pending_activities:
            if not pending.heartbeat_details.payloads:
                continue
            details = await client.data_converter.decode(pending.heartbeat_details.payloads)
            try:
                return node, VCenterProgress.model_validate(details[0])
            except (ValidationError, IndexError):
                continue
        return node, None

    found = await asyncio.gather(*(one(n.name) for n in status.nodes if n.phase in VCENTER_PHASES))
    return {name: progress for name, progress in found if progress is not None}


def describe(progress: VCenterProgress) -> str:
    """A few words for the status table."""
    if progress.step is VCenterStep.QUEUED:
        return "queued for vCenter"
    if progress.step is VCenterStep.CANCELLING:
        return f"cancelling {progress.method or 'task'} {progress.task} (past its deadline)"
    if progress.step is VCenterStep.TASK:
        return f"{progress.method or 'task'} {progress.task}"
    return ""
