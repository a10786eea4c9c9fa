"""Scaling a running cluster: add nodes, or remove the newest ones after
draining them. vSphere has no scaling groups; this is ours. Which nodes is
decided by ``planning.plan_scale``.

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
    from activities import kube as kube_activities
    from pke_vsphere.contracts.commands import ScaleOutcome
    from pke_vsphere.contracts.messages import DeleteKubeNodeInput, DrainInput
    from pke_vsphere.contracts.state import NodePhase, NodeState
    from pke_vsphere.runtime.failures import failure_reason
    from workflows import planning
    from workflows.cluster_steps import ClusterSteps
    from workflows.policies import KUBE_CALL_TIMEOUT, KUBE_HEARTBEAT, KUBE_RETRY


class ScalingSteps(ClusterSteps):
    async def _scale(self, pool_name: str, size: int) -> ScaleOutcome:
        previous = len(planning.pool_nodes(self.state, pool_name))
        outcome = ScaleOutcome(cluster=self.spec.name, pool=pool_name, previous=previous, requested=size)
        plan = planning.plan_scale(self.state, pool_name, size)
        outcome.added = [n.name for n in plan.add]
        await asyncio.gather(
            self._launch_all(plan.add), *(self._remove_node(n, outcome) for n in plan.remove)
        )
        outcome.failed.update(
            {n.name: n.last_error or "failed" for n in plan.add if n.phase is NodePhase.FAILED}
        )
        workflow.logger.info("scaled pool %s of %s: %s -> %s", pool_name, self.spec.name, previous, size)
        return outcome

    async def _remove_node(self, node: NodeState, outcome: ScaleOutcome) -> None:
        if node.phase is NodePhase.READY:
            warning = await self._drain_and_delete(node)
            if warning:
                outcome.warnings.append(warning)
        node.phase, node.updated_at = NodePhase.REMOVING, workflow.now()
        await self._destroy_vm(node.name, node.identity.instance_uuid, node.vm_ref)
        del self.state.nodes[node.name]
        outcome.removed.append(node.name)

    async def _drain_and_delete(self, node: NodeState) -> str | None:
        """Drain the node and delete it from Kubernetes; a warning if that was not clean."""
        node.phase, node.updated_at = NodePhase.DRAINING, workflow.now()
        drain_timeout = self.spec.drain.timeout_seconds
        access = self._kube_access()
        try:
            result = await workflow.execute_activity(
                kube_activities.drain_node,
                DrainInput(
                    cluster=self.spec.name, node=node.name, access=access, timeout_seconds=drain_timeout
                ),
                schedule_to_close_timeout=timedelta(seconds=drain_timeout + 120),
                heartbeat_timeout=KUBE_HEARTBEAT,
                retry_policy=KUBE_RETRY,
            )
            await workflow.execute_activity(
                kube_activities.delete_kube_node,
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
