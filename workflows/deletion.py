"""Deleting a cluster: every VM carrying the cluster's marker (found in vCenter,
not only from memory, so VMs a crashed run left are found too) is destroyed in
parallel under the vCenter task cap, fifty to an activity, and the cluster's
schedules go. The VMs its nodes recorded are destroyed while the sweep runs."""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.commands import ClusterCommandActivities
    from activities.etcd import EtcdActivities
    from pke_vsphere.contracts.commands import DeleteOutcome
    from pke_vsphere.contracts.messages import DESTROY_BATCH, ClearEtcdPrefixInput, ClusterVm
    from pke_vsphere.contracts.protocol import Patch
    from pke_vsphere.contracts.state import ClusterPhase
    from pke_vsphere.runtime.failures import failure_reason
    from workflows import vm_steps
    from workflows.cluster_steps import ClusterSteps
    from workflows.policies import ETCD_CALL_TIMEOUT, ETCD_RETRY, LOCAL_WORK_RETRY, LOCAL_WORK_TIMEOUT


class DeletionSteps(ClusterSteps):
    async def _delete(self) -> DeleteOutcome:
        self.state.phase = ClusterPhase.DELETING
        if workflow.patched(Patch.DESTROY_WHILE_SWEEPING):
            names = await self._destroy_while_sweeping()
        else:
            found = await self._find_vms()
            if workflow.patched(Patch.DESTROY_IN_BATCHES):
                await asyncio.gather(*(self._destroy_batch(batch) for batch in _batches(found.vms)))
            else:
                await asyncio.gather(
                    *(self._destroy_vm(vm.name, vm.instance_uuid, vm.ref) for vm in found.vms)
                )
            names = [vm.name for vm in found.vms]
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
        outcome.destroyed = sorted(names)
        workflow.logger.info(
            "deleted cluster %s: %d VMs, schedules %s", self.spec.name, len(names), schedules
        )
        return outcome

    async def _destroy_while_sweeping(self) -> list[str]:
        """The VMs the cluster's nodes recorded go at once (each read and checked by
        its batch), while a sweep looks in vCenter for every VM with the cluster's
        markers; what only the sweep found (a clone a crash left, a node whose VM was
        never recorded) goes once it ends. The names of the VMs gone: those the sweep
        found, and those of the recorded ones their batches destroyed."""
        recorded = [
            ClusterVm(
                ref=node.vm_ref,
                name=node.name,
                instance_uuid=node.identity.instance_uuid,
                powered_on=True,  # read by the batch
                cluster_uid=node.identity.cluster_uid,
                pool=node.identity.pool,
                node=node.name,
            )
            for node in self.state.nodes.values()
            if node.vm_ref is not None
        ]
        refs = {vm.ref for vm in recorded}

        async def sweep_then_the_rest() -> list[str]:
            found = await self._find_vms()
            rest = [vm for vm in found.vms if vm.ref not in refs]
            await asyncio.gather(*(self._destroy_batch(batch) for batch in _batches(rest)))
            return [vm.name for vm in found.vms]

        found, *destroyed = await asyncio.gather(
            sweep_then_the_rest(),
            *(self._destroy_batch(batch, swept=False) for batch in _batches(recorded)),
        )
        return sorted({*found, *(name for names in destroyed for name in names)})

    async def _destroy_batch(self, batch: list[ClusterVm], *, swept: bool = True) -> list[str]:
        datacenter = self.spec.vsphere.datacenter
        return await vm_steps.destroy_vms(self.spec.name, datacenter, batch, self.spec.vsphere, swept=swept)

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


def _batches(vms: list[ClusterVm]) -> list[list[ClusterVm]]:
    return [vms[i : i + DESTROY_BATCH] for i in range(0, len(vms), DESTROY_BATCH)]
