"""Deleting a cluster: every VM carrying the cluster's marker (found in vCenter,
not only from memory, so VMs a crashed run left are found too) is destroyed in
parallel under the vCenter task cap, fifty to an activity, and the cluster's
schedules go."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.commands import ClusterCommandActivities
    from activities.etcd import EtcdActivities
    from pke_vsphere.contracts.commands import DeleteOutcome
    from pke_vsphere.contracts.messages import DESTROY_BATCH, ClearEtcdPrefixInput
    from pke_vsphere.contracts.protocol import Patch
    from pke_vsphere.contracts.state import ClusterPhase
    from pke_vsphere.runtime.failures import failure_reason
    from workflows import vm_steps
    from workflows.cluster_steps import ClusterSteps
    from workflows.policies import ETCD_CALL_TIMEOUT, ETCD_RETRY, LOCAL_WORK_RETRY, LOCAL_WORK_TIMEOUT


class DeletionSteps(ClusterSteps):
    async def _delete(self) -> DeleteOutcome:
        self.state.phase = ClusterPhase.DELETING
        found = await self._find_vms()
        if workflow.patched(Patch.DESTROY_IN_BATCHES):
            batches = [found.vms[i : i + DESTROY_BATCH] for i in range(0, len(found.vms), DESTROY_BATCH)]
            datacenter = self.spec.vsphere.datacenter
            await asyncio.gather(
                *(
                    vm_steps.destroy_vms(self.spec.name, datacenter, batch, self.spec.vsphere)
                    for batch in batches
                )
            )
        else:
            await asyncio.gather(*(self._destroy_vm(vm.name, vm.instance_uuid, vm.ref) for vm in found.vms))
        schedules = await workflow.execute_activity_method(
            ClusterCommandActivities.delete_cluster_schedules,
            self.spec.name,
            start_to_close_timeout=LOCAL_WORK_TIMEOUT,
            retry_policy=LOCAL_WORK_RETRY,
        )
        outcome = DeleteOutcome(cluster=self.spec.name, schedules_removed=schedules)
        outcome.etcd_keys_deleted, outcome.etcd_problem = await self._clear_etcd_prefix()
        self.state.nodes.clear()
        self.state.phase = ClusterPhase.DELETED
        self._deleted = True
        # Every VM found is gone now: destroyed here, or by an attempt a crash cut short.
        names = [vm.name for vm in found.vms]
        outcome.destroyed = sorted(names)
        workflow.logger.info(
            "deleted cluster %s: %d VMs, schedules %s", self.spec.name, len(names), schedules
        )
        return outcome

    async def _clear_etcd_prefix(self) -> tuple[int | None, str | None]:
        """With an external etcd: delete the cluster's keys if the prefix is its own.
        How many, and why keys were left (None: none were)."""
        etcd, prefix = self.spec.control_plane.external_etcd, self.spec.etcd_prefix
        if etcd is None or prefix is None:
            return None, None
        try:
            cleared = await workflow.execute_activity_method(
                EtcdActivities.clear_etcd_prefix,
                ClearEtcdPrefixInput(
                    cluster=self.spec.name,
                    cluster_uid=self.state.cluster_uid,
                    endpoints=etcd.endpoints,
                    credential=etcd.credential,
                    prefix=prefix,
                ),
                start_to_close_timeout=ETCD_CALL_TIMEOUT,
                retry_policy=ETCD_RETRY,
            )
        except ActivityError as err:
            problem = f"the keys under {prefix} are left in etcd: {failure_reason(err)}"
            workflow.logger.warning("cluster %s: %s", self.spec.name, problem)
            return None, problem
        if not cleared.owned:
            workflow.logger.info("cluster %s never took %s; left it untouched", self.spec.name, prefix)
        return cleared.deleted, None
