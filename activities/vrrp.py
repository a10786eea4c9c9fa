"""Which VRRP router ids the other clusters on a network use, read from their
workflows' status, so that the keepalived instances of two clusters never share
one (a shared id on one network makes both VIPs flap)."""

from __future__ import annotations

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from models.messages import RouterIdsInput, RouterIdsInUse
from models.state import ClusterStatus
from workflows import ids

log = structlog.get_logger(__name__)

RUNNING_CLUSTERS = "WorkflowType = 'ClusterWorkflow' AND ExecutionStatus = 'Running'"


class VrrpActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name="vrrp_router_ids_in_use")
    async def vrrp_router_ids_in_use(self, input: RouterIdsInput) -> RouterIdsInUse:
        taken: dict[int, str] = {}
        async for execution in self._client.list_workflows(RUNNING_CLUSTERS):
            cluster = execution.id.removeprefix(ids.CLUSTER_PREFIX)
            if cluster == input.cluster or not execution.id.startswith(ids.CLUSTER_PREFIX):
                continue
            handle = self._client.get_workflow_handle(execution.id)
            try:
                status = await handle.query("status", result_type=ClusterStatus)
            except (RPCError, WorkflowQueryFailedError) as exc:
                # A cluster that cannot answer now is skipped, not a reason to fail the create.
                log.warning("vrrp.status_unavailable", cluster=cluster, error=str(exc))
                continue
            services = status.services
            if services and services.vrrp_router_id and services.network == input.network:
                taken[services.vrrp_router_id] = cluster
        return RouterIdsInUse(taken=taken)
