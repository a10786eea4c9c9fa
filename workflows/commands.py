"""Workflow types for cluster commands, so that the Temporal Web UI, the
``temporal`` CLI and Schedules can start them:

- ``ScaleClusterWorkflow`` (cluster, pool, size) runs the ``scale_pool`` update
  on the cluster's workflow and finishes with its outcome or its reason.
- ``DeleteClusterWorkflow`` (cluster) runs the ``delete`` update when the
  cluster's workflow is running, then sweeps vCenter for any VM still marked
  with the cluster (a failed create leaves its leader behind) and removes the
  cluster's schedules.

A workflow cannot send an update, so an activity does, with an update id
derived from this workflow's id: a retried activity attaches to the same update.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel

    from activities.commands import ClusterCommandActivities
    from pke_vsphere.contracts.commands import (
        ClusterUpdateCall,
        DeleteClusterInput,
        DeleteOutcome,
        DeleteRequest,
        ScaleClusterInput,
        ScaleOutcome,
        ScaleRequest,
    )
    from pke_vsphere.contracts.protocol import ErrorType, Update, WorkflowType
    from pke_vsphere.runtime.failures import failure_reason
    from workflows import validation, vm_steps
    from workflows.policies import LOCAL_WORK_RETRY, LOCAL_WORK_TIMEOUT

COMMAND_TIMEOUT = timedelta(hours=6)
COMMAND_HEARTBEAT = timedelta(seconds=10)


async def _cluster_update(cluster: str, update: Update, argument: BaseModel) -> dict[str, Any] | None:
    """The update's result; its refusal or failure becomes this workflow's failure,
    with the cluster's own reason on top (what the Web UI and the CLI show)."""
    try:
        return await _run_update(cluster, update, argument)
    except ActivityError as err:
        raise ApplicationError(
            failure_reason(err), type=ErrorType.COMMAND_FAILED, non_retryable=True
        ) from err


async def _run_update(cluster: str, update: Update, argument: BaseModel) -> dict[str, Any] | None:
    return await workflow.execute_activity_method(
        ClusterCommandActivities.run_cluster_update,
        ClusterUpdateCall(
            cluster=cluster,
            update=update,
            update_id=f"{update}:{workflow.info().workflow_id}:{workflow.info().run_id}",
            argument=argument.model_dump(mode="json"),
        ),
        start_to_close_timeout=COMMAND_TIMEOUT,
        heartbeat_timeout=COMMAND_HEARTBEAT,
        retry_policy=LOCAL_WORK_RETRY,
    )


@workflow.defn(name=WorkflowType.SCALE)
class ScaleClusterWorkflow:
    @workflow.run
    async def run(self, raw: dict[str, Any]) -> ScaleOutcome:
        input = validation.parse(ScaleClusterInput, raw)
        result = await _cluster_update(
            input.cluster, Update.SCALE_POOL, ScaleRequest(pool=input.pool, size=input.size)
        )
        if result is None:
            raise ApplicationError(
                f"cluster {input.cluster!r} is not running (never created, deleted, or failed)",
                type=ErrorType.NO_SUCH_CLUSTER,
                non_retryable=True,
            )
        outcome = ScaleOutcome.model_validate(result)
        if outcome.failed:
            raise ApplicationError(
                f"scaled {input.pool} of {input.cluster} to {input.size} with failed nodes: "
                + "; ".join(f"{k}: {v}" for k, v in outcome.failed.items()),
                outcome.model_dump(mode="json"),
                type=ErrorType.SCALE_INCOMPLETE,
                non_retryable=True,
            )
        return outcome


@workflow.defn(name=WorkflowType.DELETE)
class DeleteClusterWorkflow:
    @workflow.run
    async def run(self, raw: dict[str, Any]) -> DeleteOutcome:
        input = validation.parse(DeleteClusterInput, raw)
        result = await _cluster_update(
            input.cluster, Update.DELETE, DeleteRequest(reason=f"workflow {workflow.info().workflow_id}")
        )
        outcome = DeleteOutcome.model_validate(result) if result else DeleteOutcome(cluster=input.cluster)
        # Whatever the cluster's workflow did not know of (or could not, if it had failed).
        outcome.destroyed += await self._sweep(input.cluster)
        schedules = await workflow.execute_activity_method(
            ClusterCommandActivities.delete_cluster_schedules,
            input.cluster,
            start_to_close_timeout=LOCAL_WORK_TIMEOUT,
            retry_policy=LOCAL_WORK_RETRY,
        )
        outcome.schedules_removed = sorted({*outcome.schedules_removed, *schedules})
        return outcome

    async def _sweep(self, cluster: str) -> list[str]:
        """Destroy every VM anywhere in vCenter still marked with the cluster."""
        vms = await vm_steps.find_cluster_vms(cluster, None)
        await asyncio.gather(
            *(vm_steps.destroy_vm(cluster, vm.name, None, vm.instance_uuid, vm.ref) for vm in vms.vms)
        )
        # Every VM found is gone now, whichever attempt destroyed it.
        return [vm.name for vm in vms.vms]
