"""Keeping the cluster at its desired state: compare what vCenter holds (found
by the cluster's markers) with the nodes the cluster owns, and repair.

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
    from pke_vsphere.contracts.messages import (
        ClusterVm,
        WaitNodeReadyInput,
    )
    from pke_vsphere.contracts.spec import NodeRole
    from pke_vsphere.contracts.state import Drift, NodePhase, NodeState, ReconcileReport
    from workflows import vm_steps
    from workflows.cluster_core import ClusterCore
    from workflows.failures import failure_reason
    from workflows.policies import KUBE_HEARTBEAT, KUBE_RETRY


class ReconcileMixin(ClusterCore):
    async def _reconcile(self, reason: str) -> ReconcileReport:
        found = await self._find_vms()
        now = workflow.now()
        report = ReconcileReport(at=now, reason=reason)
        by_uuid = {vm.instance_uuid: vm for vm in found.vms if vm.instance_uuid}

        relaunch: list[NodeState] = []
        restart: list[NodeState] = []
        for node in list(self._nodes.values()):
            if node.phase is not NodePhase.READY:
                continue
            vm = by_uuid.get(node.identity.instance_uuid)
            if vm is None:
                report.drift.append(
                    Drift(kind="missing", name=node.name, detail=f"VM {node.vm_ref} no longer exists")
                )
                replacement = self._replacement(node)
                if replacement is None:
                    report.actions.append(f"cannot recreate {node.name}: it is the cluster's only master")
                else:
                    relaunch.append(replacement)
                    report.actions.append(f"recreate {node.name}")
            elif not vm.powered_on:
                report.drift.append(Drift(kind="powered-off", name=node.name, detail=f"VM {vm.ref} is off"))
                restart.append(node)
                report.actions.append(f"power on {node.name} and wait for it to be Ready again")

        orphans = self._orphans(found.vms, report)
        await asyncio.gather(
            *(self._launch(n) for n in relaunch),
            *(self._restart(n) for n in restart),
            *(self._destroy_vm(vm.name, vm.instance_uuid, vm.ref) for vm in orphans),
        )
        for vm in orphans:
            self._orphans_seen.pop(vm.instance_uuid or vm.ref, None)
        self._last_reconcile = report
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
                "wait_for_kube_node_ready",
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

    def _replacement(self, node: NodeState) -> NodeState | None:
        """A new node (next generation) in place of one whose VM vanished."""
        pool = self.spec.pool(node.identity.pool)
        if pool.role is NodeRole.MASTER and len(self._pool_nodes(pool.name)) == 1:
            return None
        del self._nodes[node.name]
        # A replaced leader joins the surviving control plane like any follower.
        return self._new_node(pool, node.identity.index)

    def _orphans(self, vms: list[ClusterVm], report: ReconcileReport) -> list[ClusterVm]:
        """VMs marked with the cluster that it does not own; those past the grace period."""
        owned = {n.identity.instance_uuid for n in self._nodes.values()}
        grace = self.spec.reconcile.orphan_grace_seconds
        now = report.at
        seen: set[str] = set()
        expired = []
        for vm in vms:
            if vm.instance_uuid in owned:
                continue
            key = vm.instance_uuid or vm.ref
            seen.add(key)
            age = (now - self._orphans_seen.setdefault(key, now)).total_seconds()
            report.drift.append(Drift(kind="orphan", name=vm.name, detail=f"{vm.ref}, seen for {age:.0f}s"))
            if age >= grace:
                expired.append(vm)
                report.actions.append(f"destroy orphan {vm.name} ({vm.ref})")
            else:
                report.actions.append(f"keep orphan {vm.name} for {grace - age:.0f}s more")
        for key in set(self._orphans_seen) - seen:
            del self._orphans_seen[key]
        return expired
