"""VM steps that more than one workflow takes, with one set of timeouts and
retries: power a VM on, wait for VMware Tools to report its address, find a
cluster's VMs by marker, destroy one or a batch."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.vms import VSphereActivities
    from pke_vsphere.contracts.messages import (
        ClusterVm,
        DestroyVmInput,
        DestroyVmResult,
        DestroyVmsInput,
        DestroyVmsResult,
        FindClusterVmsInput,
        FindClusterVmsResult,
        PowerOnInput,
        PowerOnResult,
        WaitForIpInput,
        WaitForIpResult,
    )
    from pke_vsphere.contracts.spec import Timeouts, VSpherePlacement
    from workflows.policies import VSPHERE_HEARTBEAT, VSPHERE_RETRY, vcenter_queue

VM_STEP_TIMEOUT = timedelta(minutes=15)


async def power_on(vm_ref: str, name: str, steps: Timeouts) -> PowerOnResult:
    result: PowerOnResult = await workflow.execute_activity_method(
        VSphereActivities.power_on_vm,
        PowerOnInput(vm_ref=vm_ref, name=name),
        task_queue=vcenter_queue(),
        schedule_to_close_timeout=steps.as_timedelta("power_on"),
        heartbeat_timeout=steps.as_timedelta("heartbeat"),
        retry_policy=VSPHERE_RETRY,
    )
    return result


async def wait_for_ip(vm_ref: str, name: str, steps: Timeouts, network: str | None) -> str:
    """The node's address on ``network`` (the spec's port group; None: the VM's first NIC)."""
    result: WaitForIpResult = await workflow.execute_activity_method(
        VSphereActivities.wait_for_vm_ip,
        WaitForIpInput(vm_ref=vm_ref, name=name, timeout_seconds=steps.ip, network=network),
        # A retry after a crash gets the rest of the step's deadline, not a new one.
        task_queue=vcenter_queue(),
        schedule_to_close_timeout=steps.as_timedelta("ip") + timedelta(seconds=30),
        heartbeat_timeout=steps.as_timedelta("heartbeat"),
        retry_policy=VSPHERE_RETRY,
    )
    return result.ip


async def find_cluster_vms(cluster: str, datacenter: str | None) -> FindClusterVmsResult:
    """Every VM carrying the cluster's marker (datacenter None: all of vCenter)."""
    found: FindClusterVmsResult = await workflow.execute_activity_method(
        VSphereActivities.find_cluster_vms,
        FindClusterVmsInput(cluster=cluster, datacenter=datacenter),
        task_queue=vcenter_queue(),
        start_to_close_timeout=timedelta(minutes=5),
        retry_policy=VSPHERE_RETRY,
    )
    return found


async def destroy_vm(
    cluster: str,
    name: str,
    datacenter: str | None,
    instance_uuid: str | None,
    vm_ref: str | None,
    placement: VSpherePlacement | None = None,
) -> bool:
    """Power off and destroy one of the cluster's VMs; False if it was already gone.
    With the node's ``placement``, a clone of it still running in vCenter is
    cancelled first (and what it made destroyed)."""
    result: DestroyVmResult = await workflow.execute_activity_method(
        VSphereActivities.destroy_vm,
        DestroyVmInput(
            cluster=cluster,
            name=name,
            datacenter=datacenter,
            instance_uuid=instance_uuid,
            vm_ref=vm_ref,
            placement=placement,
        ),
        task_queue=vcenter_queue(),
        schedule_to_close_timeout=VM_STEP_TIMEOUT,
        heartbeat_timeout=VSPHERE_HEARTBEAT,
        retry_policy=VSPHERE_RETRY,
    )
    return result.destroyed


async def destroy_vms(
    cluster: str,
    datacenter: str | None,
    found: list[ClusterVm],
    placement: VSpherePlacement | None,
    *,
    swept: bool = True,
) -> list[str]:
    """Power off and destroy up to ``DESTROY_BATCH`` VMs in one activity: as a sweep
    found them, or (``swept=False``) as the cluster recorded them (with
    ``placement``, a clone still in flight is cancelled first, as
    :func:`destroy_vm` does); the names of those destroyed."""
    result: DestroyVmsResult = await workflow.execute_activity_method(
        VSphereActivities.destroy_vms,
        DestroyVmsInput(cluster=cluster, datacenter=datacenter, placement=placement, vms=found, swept=swept),
        task_queue=vcenter_queue(),
        schedule_to_close_timeout=VM_STEP_TIMEOUT,
        heartbeat_timeout=VSPHERE_HEARTBEAT,
        retry_policy=VSPHERE_RETRY,
    )
    return result.destroyed
