"""Where each node on its way to Ready is, read from its own workflow: the
cluster's workflow hears from a node's workflow only when it starts and when it
ends, so the status query stays cheap at a thousand nodes and this fills in the
rest, for the nodes a person looks at.

- A node in its VM step: the provisioning activity's last heartbeat (the node
  workflow's pending activity) says which part runs and what vCenter is doing
  ("queued for vCenter", "CloneVM_Task task-123"); activities/progress.py.
- A node past it: the node workflow's ``progress`` query (bootstrapping, and
  the address VMware Tools reported).

Nothing is stored for it. At most ``DETAIL_LIMIT`` nodes are looked at per call
(the rest keep the cluster's view), each with one or two calls to Temporal."""

from __future__ import annotations

import asyncio

from pydantic import ValidationError
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import VCenterProgress, VCenterStep
from pke_vsphere.contracts.protocol import Query, WorkflowType
from pke_vsphere.contracts.state import ClusterStatus, NodePhase, NodeProgress, NodeState

# Node phases whose work is a vCenter activity, and the phases of a node on its way.
VCENTER_PHASES = frozenset(
    {NodePhase.CLONING, NodePhase.CONFIGURING, NodePhase.POWERING_ON, NodePhase.WAITING_FOR_IP}
)
ON_THE_WAY = VCENTER_PHASES | {NodePhase.BOOTSTRAPPING}
CONCURRENT_CALLS = 16
DETAIL_LIMIT = 64


async def refine(client: Client, status: ClusterStatus) -> tuple[ClusterStatus, dict[str, VCenterProgress]]:
    """``status`` with each node on its way as its own workflow sees it, and the
    vCenter progress of those in a vCenter step, by name."""
    limit = asyncio.Semaphore(CONCURRENT_CALLS)

    async def one(node: NodeState) -> tuple[NodeState, VCenterProgress | None]:
        async with limit:
            handle = client.get_workflow_handle(ids.node_workflow_id(status.name, node.name))
            try:
                description = await handle.describe()
                vcenter = await _heartbeat(client, description.raw_description.pending_activities)
                if vcenter is not None or description.workflow_type != WorkflowType.NODE:
                    phase = vcenter.phase if vcenter is not None and vcenter.phase else node.phase
                    return node.model_copy(update={"phase": phase}), vcenter
                progress = await handle.query(Query.NODE_PROGRESS, result_type=NodeProgress | None)  # type: ignore[arg-type]
            except (RPCError, WorkflowQueryFailedError):
                return node, None
        if progress is None or node.phase in (NodePhase.READY, NodePhase.FAILED):
            return node, None
        seen = {
            "phase": progress.phase,
            "vm_ref": progress.vm_ref or node.vm_ref,
            "ip": progress.ip or node.ip,
        }
        return node.model_copy(update=seen), None

    looked_at = [n for n in status.nodes if n.phase in ON_THE_WAY][:DETAIL_LIMIT]
    found = {node.name: (node, vcenter) for node, vcenter in await asyncio.gather(*map(one, looked_at))}
    nodes = [found[n.name][0] if n.name in found else n for n in status.nodes]
    vcenter = {name: progress for name, (_, progress) in found.items() if progress is not None}
    return status.model_copy(update={"nodes": nodes}), vcenter


async def _heartbeat(client: Client, pending: object) -> VCenterProgress | None:
    for activity in pending:  # type: ignore[attr-defined]
        if not activity.heartbeat_details.payloads:
            continue
        details = await client.data_converter.decode(activity.heartbeat_details.payloads)
        try:
            return VCenterProgress.model_validate(details[0])
        except (ValidationError, IndexError):
            continue
    return None


def describe(progress: VCenterProgress) -> str:
    """A few words for the status table."""
    if progress.step is VCenterStep.QUEUED:
        return "queued for vCenter"
    if progress.step is VCenterStep.CANCELLING:
        return f"cancelling {progress.method or 'task'} {progress.task} (past its deadline)"
    if progress.step is VCenterStep.TASK:
        return f"{progress.method or 'task'} {progress.task}"
    return ""
