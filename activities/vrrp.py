"""Which VRRP router ids the other clusters on a network use, so that the
keepalived instances of two clusters never share one (a shared id on one network
makes both VIPs flap).

Each cluster workflow keeps its router id in its memo, which the visibility
list returns without asking the workflow; clusters created before that are
asked with a status query, all at once and each for at most a few seconds, so
a cluster whose worker is down delays the check by seconds and is skipped.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import structlog
from temporalio import activity
from temporalio.client import Client, WorkflowExecution, WorkflowQueryFailedError
from temporalio.service import RPCError

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import RouterIdsInput, RouterIdsInUse
from pke_vsphere.contracts.protocol import Query, WorkflowType
from pke_vsphere.contracts.state import ClusterStatus

log = structlog.get_logger(__name__)

RUNNING_CLUSTERS = f"WorkflowType = '{WorkflowType.CLUSTER}' AND ExecutionStatus = 'Running'"
QUERY_TIMEOUT = timedelta(seconds=3)


class VrrpActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn
    async def vrrp_router_ids_in_use(self, input: RouterIdsInput) -> RouterIdsInUse:
        others = [
            execution
            async for execution in self._client.list_workflows(RUNNING_CLUSTERS)
            if execution.id.startswith(ids.CLUSTER_PREFIX)
            and execution.id.removeprefix(ids.CLUSTER_PREFIX) != input.cluster
        ]
        found = await asyncio.gather(*(self._router_id(execution) for execution in others))
        taken: dict[int, str] = {}
        for execution, (router_id, network) in zip(others, found, strict=True):
            if router_id is not None and network == input.network:
                taken[router_id] = execution.id.removeprefix(ids.CLUSTER_PREFIX)
        return RouterIdsInUse(taken=taken)

    async def _router_id(self, execution: WorkflowExecution) -> tuple[int | None, str | None]:
        memo: dict[str, Any] | None = await execution.memo_value(ids.VRRP_MEMO, None)
        if memo is not None:
            router_id = memo.get("router_id")
            return (int(router_id) if router_id is not None else None), memo.get("network")
        cluster = execution.id.removeprefix(ids.CLUSTER_PREFIX)
        try:
            # The client retries a timed-out query, so the deadline is also
            # held here, around all of its attempts.
            async with asyncio.timeout(QUERY_TIMEOUT.total_seconds()):
                status = await self._client.get_workflow_handle(execution.id).query(
                    Query.STATUS, result_type=ClusterStatus, rpc_timeout=QUERY_TIMEOUT
                )
        except TimeoutError:
            log.warning("vrrp.status_unavailable", cluster=cluster, error="no answer in time")
            return None, None
        except (RPCError, WorkflowQueryFailedError) as exc:
            # A cluster that cannot answer now (its worker is down) is skipped.
            log.warning("vrrp.status_unavailable", cluster=cluster, error=str(exc))
            return None, None
        services = status.services
        if services is None:
            return None, None
        return services.vrrp_router_id, services.network
