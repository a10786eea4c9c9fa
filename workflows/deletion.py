"""Deleting a cluster: every VM carrying the cluster's marker (found in vCenter,
not only from memory, so VMs a crashed run left are found too) is destroyed in
parallel under the worker's vCenter task cap, and the cluster's schedules go."""

from __future__ import annotations

import asyncio

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models.commands import DeleteOutcome
    from models.state import ClusterPhase
    from workflows.cluster_core import ClusterCore
    from workflows.policies import LOCAL_WORK_RETRY, LOCAL_WORK_TIMEOUT


class DeletionMixin(ClusterCore):
    async def _delete(self) -> DeleteOutcome:
        self._phase = ClusterPhase.DELETING
        found = await self._find_vms()
        await asyncio.gather(*(self._destroy_vm(vm.name, vm.instance_uuid, vm.ref) for vm in found.vms))
        schedules: list[str] = await workflow.execute_activity(
            "delete_cluster_schedules",
            self.spec.name,
            result_type=list[str],
            start_to_close_timeout=LOCAL_WORK_TIMEOUT,
            retry_policy=LOCAL_WORK_RETRY,
        )
        self._nodes.clear()
        self._phase = ClusterPhase.DELETED
        self._deleted = True
        # Every VM found is gone now: destroyed here, or by an attempt a crash cut short.
        names = [vm.name for vm in found.vms]
        workflow.logger.info("deleted cluster %s: VMs %s, schedules %s", self.spec.name, names, schedules)
        return DeleteOutcome(cluster=self.spec.name, destroyed=sorted(names), schedules_removed=schedules)
