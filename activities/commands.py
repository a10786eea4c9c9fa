"""Activities that act on Temporal itself: run an update on a cluster's workflow
(for ScaleClusterWorkflow and DeleteClusterWorkflow, since a workflow cannot send
an update) and remove a cluster's schedules."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.commands import ClusterUpdateCall
from pke_vsphere.contracts.protocol import ErrorType
from pke_vsphere.runtime import crashpoints

log = structlog.get_logger(__name__)
HEARTBEAT_SECONDS = 5


class ClusterCommandActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn
    async def run_cluster_update(self, call: ClusterUpdateCall) -> dict[str, Any] | None:
        """Run an update on the cluster's workflow and return its result; None if
        the cluster's workflow is not running. The update id makes a retry of this
        activity attach to the update the first attempt started."""
        handle = self._client.get_workflow_handle(ids.cluster_workflow_id(call.cluster))
        update = asyncio.ensure_future(
            handle.execute_update(call.update, call.argument, id=call.update_id, result_type=dict)
        )
        try:
            while True:
                done, _ = await asyncio.wait({update}, timeout=HEARTBEAT_SECONDS)
                if done:
                    result: dict[str, Any] = update.result()
                    return result
                activity.heartbeat()
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            raise ApplicationError(
                f"cluster {call.cluster}: {getattr(cause, 'message', cause)}",
                type=ErrorType.COMMAND_REFUSED,
                non_retryable=True,
            ) from None
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION):
                log.info("cluster.not_running", cluster=call.cluster, update=call.update)
                return None
            raise
        finally:
            update.cancel()

    @activity.defn
    async def delete_cluster_schedules(self, cluster: str) -> list[str]:
        removed = []
        async for schedule in await self._client.list_schedules():
            if ids.schedule_belongs_to(schedule.id, cluster):
                await self._client.get_schedule_handle(schedule.id).delete()
                removed.append(schedule.id)
        crashpoints.reach("schedules.deleted")
        log.info("schedules.deleted", cluster=cluster, schedules=removed)
        return removed
