"""Cluster operations on a Temporal client, used by the CLI and the tests."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.commands import DeleteClusterInput, DeleteOutcome, ScaleClusterInput, ScaleOutcome
from pke_vsphere.contracts.messages import ClusterResult, ClusterWorkflowInput
from pke_vsphere.contracts.protocol import Query, WorkflowType
from pke_vsphere.contracts.spec import ClusterSpec
from pke_vsphere.contracts.state import ClusterStatus


class ClusterExists(Exception):
    """A cluster of this name is already being created or running."""


class NoSuchCluster(Exception):
    """No workflow of this cluster name exists (never created, or long gone)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no cluster named {name!r} (no workflow {ids.cluster_workflow_id(name)})")


async def create(client: Client, spec: ClusterSpec, task_queue: str) -> WorkflowHandle[Any, ClusterResult]:
    try:
        return await client.start_workflow(
            WorkflowType.CLUSTER,
            ClusterWorkflowInput(spec=spec).model_dump(mode="json"),
            result_type=ClusterResult,
            id=ids.cluster_workflow_id(spec.name),
            task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except WorkflowAlreadyStartedError:
        raise ClusterExists(
            f"cluster {spec.name!r} already exists (workflow {ids.cluster_workflow_id(spec.name)})"
        ) from None


async def status(client: Client, name: str, rpc_timeout: timedelta | None = None) -> ClusterStatus:
    """The cluster's status query; ``rpc_timeout`` bounds the call (None: the SDK's default)."""
    handle = client.get_workflow_handle(ids.cluster_workflow_id(name))
    try:
        result: ClusterStatus = await handle.query(
            Query.STATUS, result_type=ClusterStatus, rpc_timeout=rpc_timeout
        )
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            raise NoSuchCluster(name) from None
        raise
    return result


async def exists(client: Client, name: str) -> bool:
    """Whether the cluster's workflow exists (running or closed, within retention)."""
    try:
        await client.get_workflow_handle(ids.cluster_workflow_id(name)).describe()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def closed(client: Client, name: str) -> bool:
    """Whether the cluster's workflow has ended (or never was). Raises RPCError when
    Temporal cannot tell."""
    try:
        description = await client.get_workflow_handle(ids.cluster_workflow_id(name)).describe()
    except RPCError as exc:
        if exc.status is RPCStatusCode.NOT_FOUND:
            return True
        raise
    return description.status is not WorkflowExecutionStatus.RUNNING


async def list_clusters(client: Client) -> list[tuple[str, WorkflowExecutionStatus | None]]:
    clusters = []
    query = f"WorkflowType = '{WorkflowType.CLUSTER}' AND WorkflowId STARTS_WITH '{ids.CLUSTER_PREFIX}'"
    async for wf in client.list_workflows(query):
        if "/node/" in wf.id:
            continue
        clusters.append((wf.id.removeprefix(ids.CLUSTER_PREFIX), wf.status))
    return clusters


async def scale(
    client: Client, cluster: str, pool: str, size: int, task_queue: str
) -> WorkflowHandle[Any, ScaleOutcome]:
    """Start a ScaleClusterWorkflow (the same type a schedule starts)."""
    request = ScaleClusterInput(cluster=cluster, pool=pool, size=size)
    return await client.start_workflow(
        WorkflowType.SCALE,
        request.model_dump(mode="json"),
        id=ids.scale_workflow_id(cluster, uuid.uuid4().hex[:12]),
        task_queue=task_queue,
        result_type=ScaleOutcome,
    )


async def delete(client: Client, cluster: str, task_queue: str) -> WorkflowHandle[Any, DeleteOutcome]:
    """Start (or join the running) DeleteClusterWorkflow for the cluster."""
    if not await exists(client, cluster):
        raise NoSuchCluster(cluster)
    return await client.start_workflow(
        WorkflowType.DELETE,
        DeleteClusterInput(cluster=cluster).model_dump(mode="json"),
        id=ids.delete_workflow_id(cluster),
        task_queue=task_queue,
        result_type=DeleteOutcome,
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
