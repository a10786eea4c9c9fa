"""Keeping the cluster at its desired state: compare what vCenter holds (found
by the cluster's markers) with the nodes the cluster owns, and repair. What to
repair is decided by ``planning.plan_reconcile``:

- A Ready node whose VM is gone is recreated (new generation, so a new instance
  UUID) and re-joins; the only master of a cluster cannot be, and says so.
- A Ready node whose VM is powered off is powered on; it re-joins when its
  kubelet reports Ready again (cloud-init does not run twice on one instance).
- A VM marked with the cluster that the cluster does not own is an orphan: it
  is destroyed once it has been seen for the spec's grace period.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities import kube as kube_activities
    from pke_vsphere.contracts.messages import WaitNodeReadyInput
    from pke_vsphere.contracts.state import NodePhase, NodeState, ReconcileReport
    from pke_vsphere.runtime.failures import failure_reason
    from workflows import planning, vm_steps
    from workflows.cluster_steps import ClusterSteps
    from workflows.policies import KUBE_HEARTBEAT, KUBE_RETRY


class ReconcileSteps(ClusterSteps):
    async def _reconcile(self, reason: str) -> ReconcileReport:
        found = await self._find_vms()
        plan = planning.plan_reconcile(self.state, found.vms, workflow.now(), reason)
        await asyncio.gather(
            *(self._launch(n) for n in plan.relaunch),
            *(self._restart(n) for n in plan.restart),
            *(self._destroy_vm(vm.name, vm.instance_uuid, vm.ref) for vm in plan.destroy),
        )
        report = self.state.last_reconcile = plan.report
        if report.drift:
            workflow.logger.info(
                "reconcile of %s (%s): drift %s; actions %s",
                self.spec.name,
                reason,
                [f"{d.kind}:{d.name}" for d in report.drift],
                report.actions,
            )
        return report

    async def _restart(self, node: NodeState) -> None:
        """Power a node's VM back on and wait until Kubernetes sees it Ready."""
        assert node.vm_ref is not None
        steps = self.spec.timeouts
        try:
            node.phase, node.updated_at = NodePhase.POWERING_ON, workflow.now()
            await vm_steps.power_on(node.vm_ref, node.name, steps)
            node.phase, node.powered_on_at = NodePhase.WAITING_FOR_IP, workflow.now()
            await vm_steps.wait_for_ip(node.vm_ref, node.name, steps, self.spec.vsphere.network)
            node.phase, node.updated_at = NodePhase.BOOTSTRAPPING, workflow.now()
            await workflow.execute_activity(
                kube_activities.wait_for_kube_node_ready,
                WaitNodeReadyInput(
                    cluster=self.spec.name,
                    node=node.name,
                    access=self._kube_access(),
                    timeout_seconds=steps.join,
                ),
                schedule_to_close_timeout=steps.as_timedelta("join") + timedelta(seconds=60),
                heartbeat_timeout=KUBE_HEARTBEAT,
                retry_policy=KUBE_RETRY,
            )
        except ActivityError as err:
            node.phase, node.last_error = NodePhase.FAILED, failure_reason(err)
            node.updated_at = workflow.now()
            return
        node.phase = NodePhase.READY
        node.ready_at = node.updated_at = workflow.now()
