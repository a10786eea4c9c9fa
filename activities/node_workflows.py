"""Where a batch of node workflows is started, awaited and cancelled.

The cluster workflow launches the nodes of a create or a scale-up through
these activities instead of as child workflows: Temporal starts a child through
its parent, one at a time (200 children of one workflow took 23 to 28 s to
start on the benchmark's server under load, 200 workflows started by a client
0.8 s), so the last node of a large pool began its clone half a minute after
the first. The node workflows are the same either way; each one's id names its
cluster and node, so a retried start finds the one already running.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import (
    CancelledError,
    WorkflowAlreadyStartedError,
)
from temporalio.service import RPCError, RPCStatusCode

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import (
    AwaitNodesInput,
    AwaitNodesResult,
    CancelNodesInput,
    NodeOutcome,
    NodeResult,
    StartNodesInput,
)
from pke_vsphere.contracts.protocol import WorkflowType
from pke_vsphere.runtime import crashpoints
from pke_vsphere.runtime.failures import failed_node_vm, failure_reason

log = structlog.get_logger(__name__)

STARTS_IN_FLIGHT = 32
HEARTBEAT_SECONDS = 5.0


class NodeWorkflowActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn
    async def start_node_workflows(self, input: StartNodesInput) -> None:
        """Start each node's workflow; one already running or finished is left as it is."""
        gate = asyncio.Semaphore(STARTS_IN_FLIGHT)

        async def start(node: Any) -> None:
            workflow_id = ids.node_workflow_id(node.identity.cluster, node.identity.name)
            async with gate:
                # One that ran already is not started again: await_node_workflows reads its end.
                with contextlib.suppress(WorkflowAlreadyStartedError):
                    await self._client.start_workflow(
                        WorkflowType.NODE,
                        node,
                        id=workflow_id,
                        task_queue=input.task_queue,
                        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    )
                activity.heartbeat()

        await asyncio.gather(*(start(node) for node in input.nodes))
        log.info("node_workflows.started", count=len(input.nodes))
        crashpoints.reach("node_workflows.started")

    @activity.defn
    async def await_node_workflows(self, input: AwaitNodesInput) -> AwaitNodesResult:
        """The outcomes of the node workflows that have ended: it returns once one has,
        with those that end within ``gather_seconds`` after it."""
        tasks = {
            asyncio.ensure_future(
                _outcome(self._client.get_workflow_handle(workflow_id, result_type=NodeResult))
            ): workflow_id
            for workflow_id in input.workflow_ids
        }
        try:
            done: set[asyncio.Future[NodeOutcome]] = set()
            while not done:
                done, _ = await asyncio.wait(tasks, timeout=HEARTBEAT_SECONDS, return_when="FIRST_COMPLETED")
                activity.heartbeat()
            if len(done) < len(tasks) and input.gather_seconds > 0:
                done, _ = await asyncio.wait(tasks, timeout=input.gather_seconds)
            return AwaitNodesResult(outcomes=[task.result() for task in done])
        finally:
            for task in tasks:
                task.cancel()

    @activity.defn
    async def cancel_node_workflows(self, input: CancelNodesInput) -> None:
        """Ask each node workflow to cancel (its clone finishes first); an ended one is skipped."""

        async def cancel(workflow_id: str) -> None:
            try:
                await self._client.get_workflow_handle(workflow_id).cancel()
            except RPCError as exc:
                if exc.status is not RPCStatusCode.NOT_FOUND:
                    raise

        await asyncio.gather(*(cancel(workflow_id) for workflow_id in input.workflow_ids))


async def _outcome(handle: WorkflowHandle[Any, NodeResult]) -> NodeOutcome:
    workflow_id = handle.id
    try:
        result = await handle.result()
    except WorkflowFailureError as exc:
        cause = exc.cause
        if isinstance(cause, CancelledError):
            return NodeOutcome(workflow_id=workflow_id, cancelled=True, error="cancelled")
        reason = failure_reason(cause) if cause is not None else str(exc)
        return NodeOutcome(workflow_id=workflow_id, error=reason, vm=failed_node_vm(cause))
    except RPCError as exc:
        if exc.status is not RPCStatusCode.NOT_FOUND:
            raise
        return NodeOutcome(workflow_id=workflow_id, error="its workflow was never started")
    return NodeOutcome(workflow_id=workflow_id, result=result)
