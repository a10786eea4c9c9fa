"""Where a batch of node workflows is started, awaited and cancelled.

The cluster workflow launches the nodes of a create or a scale-up through
these activities instead of as child workflows: Temporal starts a child through
its parent, one at a time (200 children of one workflow took 23 to 28 s to
start on the benchmark's server under load, 200 workflows started by a client
0.8 s), so the last node of a large pool began its clone half a minute after
the first. The node workflows are the same either way; each one's id names its
cluster and node, so a retried start finds the one already running.

Awaiting them, the worker keeps one watch (a long poll for the workflow's end)
per node workflow across the cluster workflow's rounds: a round returns the
outcomes that ended and leaves the other watches running for the next, so a
thousand nodes ending over a minute cost a thousand polls, not a thousand per
round.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
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
WATCH_IDLE_SECONDS = 600.0
"""A watch no round asked for this long is dropped (its cluster workflow moved
to another worker, or stopped asking)."""


class NodeWorkflowActivities:
    def __init__(self, client: Client) -> None:
        self._client = client
        self._watches: dict[str, asyncio.Future[NodeOutcome]] = {}
        self._asked: dict[str, float] = {}

    def _watch(self, workflow_id: str) -> asyncio.Future[NodeOutcome]:
        self._asked[workflow_id] = time.monotonic()
        watch = self._watches.get(workflow_id)
        if watch is None or (watch.done() and watch.exception() is not None):
            handle = self._client.get_workflow_handle(workflow_id, result_type=NodeResult)
            watch = self._watches[workflow_id] = asyncio.ensure_future(_outcome(handle))
        return watch

    def _forget(self, workflow_ids: list[str]) -> None:
        for workflow_id in workflow_ids:
            self._watches.pop(workflow_id, None)
            self._asked.pop(workflow_id, None)
        idle = time.monotonic() - WATCH_IDLE_SECONDS
        for workflow_id in [w for w, asked in self._asked.items() if asked < idle]:
            self._watches.pop(workflow_id).cancel()
            del self._asked[workflow_id]

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
        with those that end within ``gather_seconds`` after it, at most
        ``max_outcomes`` (the others are answered by the next round at once)."""
        watches = {workflow_id: self._watch(workflow_id) for workflow_id in input.workflow_ids}
        waiting = set(watches.values())
        done: set[asyncio.Future[NodeOutcome]] = set()
        while not done:
            done, _ = await asyncio.wait(waiting, timeout=HEARTBEAT_SECONDS, return_when="FIRST_COMPLETED")
            activity.heartbeat()
        if len(done) < len(waiting) and len(done) < input.max_outcomes and input.gather_seconds > 0:
            done, _ = await asyncio.wait(waiting, timeout=input.gather_seconds)
        ended = [workflow_id for workflow_id, watch in watches.items() if watch in done][: input.max_outcomes]
        try:
            outcomes = [
                watches[workflow_id].result() for workflow_id in ended
            ]  # a watch's RPC error fails the round
        finally:
            self._forget(ended)
        return AwaitNodesResult(outcomes=outcomes)

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
        return NodeOutcome(
            workflow_id=workflow_id, error="its workflow was never started", never_started=True
        )
    return NodeOutcome(workflow_id=workflow_id, result=result)
