"""Scaling a running cluster: add nodes, or remove the newest ones after
draining them. vSphere has no scaling groups; this is ours.

Removal order per node: cordon and evict (PodDisruptionBudgets respected, up to
the spec's drain timeout, after which it proceeds and says so), delete the Node
object, then power off and destroy the VM. A node that never joined has nothing
to drain.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from pke_vsphere.contracts.commands import ScaleOutcome
    from pke_vsphere.contracts.messages import DeleteKubeNodeInput, DrainInput, DrainResult
    from pke_vsphere.contracts.spec import NodePoolSpec
    from pke_vsphere.contracts.state import NodePhase, NodeState
    from workflows.cluster_core import ClusterCore
    from workflows.failures import failure_reason
    from workflows.policies import KUBE_CALL_TIMEOUT, KUBE_HEARTBEAT, KUBE_RETRY


class ScalingMixin(ClusterCore):
    async def _scale(self, pool_name: str, size: int) -> ScaleOutcome:
        pool = self.spec.pool(pool_name)
        current = self._pool_nodes(pool_name)
        outcome = ScaleOutcome(cluster=self.spec.name, pool=pool_name, previous=len(current), requested=size)
        self._set_pool(pool.model_copy(update={"count": size}), pool_name)
        if size > len(current):
            await self._grow(self.spec.pool(pool_name), current, size, outcome)
        elif size < len(current):
            # Newest first: indices only grow, so the highest index is the newest node.
            victims = sorted(current, key=lambda n: n.identity.index, reverse=True)[: len(current) - size]
            await asyncio.gather(*(self._remove_node(n, outcome) for n in victims))
        workflow.logger.info(
            "scaled pool %s of %s: %s -> %s", pool_name, self.spec.name, outcome.previous, size
        )
        return outcome

    async def _grow(
        self, pool: NodePoolSpec, current: list[NodeState], size: int, outcome: ScaleOutcome
    ) -> None:
        next_index = max((n.identity.index for n in current), default=0) + 1
        added = [self._new_node(pool, i) for i in range(next_index, next_index + size - len(current))]
        outcome.added = [n.name for n in added]
        await asyncio.gather(*(self._launch(n) for n in added))
        outcome.failed.update(
            {n.name: n.last_error or "failed" for n in added if n.phase is NodePhase.FAILED}
        )

    async def _remove_node(self, node: NodeState, outcome: ScaleOutcome) -> None:
        if node.phase is NodePhase.READY:
            warning = await self._drain_and_delete(node)
            if warning:
                outcome.warnings.append(warning)
        node.phase, node.updated_at = NodePhase.REMOVING, workflow.now()
        await self._destroy_vm(node.name, node.identity.instance_uuid, node.vm_ref)
        # Gone from the inventory: its token no longer works (the node API asks us).
        del self._nodes[node.name]
        outcome.removed.append(node.name)

    async def _drain_and_delete(self, node: NodeState) -> str | None:
        """Drain the node and delete it from Kubernetes; a warning if that was not clean."""
        node.phase, node.updated_at = NodePhase.DRAINING, workflow.now()
        drain_timeout = self.spec.drain.timeout_seconds
        access = self._kube_access()
        try:
            result = await workflow.execute_activity(
                "drain_node",
                DrainInput(
                    cluster=self.spec.name,
                    node=node.name,
                    access=access,
                    timeout_seconds=drain_timeout,
                ),
                result_type=DrainResult,
                schedule_to_close_timeout=timedelta(seconds=drain_timeout + 120),
                heartbeat_timeout=KUBE_HEARTBEAT,
                retry_policy=KUBE_RETRY,
            )
            await workflow.execute_activity(
                "delete_kube_node",
                DeleteKubeNodeInput(cluster=self.spec.name, node=node.name, access=access),
                schedule_to_close_timeout=timedelta(minutes=2),
                start_to_close_timeout=KUBE_CALL_TIMEOUT,
                retry_policy=KUBE_RETRY,
            )
        except ActivityError as err:
            return f"{node.name}: removed without a clean drain: {failure_reason(err)}"
        if result.timed_out:
            return (
                f"{node.name}: drain timed out after {drain_timeout}s with "
                f"{len(result.remaining)} pod(s) left ({', '.join(result.remaining)}); removed anyway"
            )
        return None
