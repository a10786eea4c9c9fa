"""Reconcile: vCenter drifts out of band; the cluster notices and repairs it,
and says what it found and did."""

from __future__ import annotations

import asyncio

from pyVim import connect
from pyVmomi import vim

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.commands import ReconcileRequest
from pke_vsphere.contracts.protocol import Query, Update
from pke_vsphere.contracts.state import ClusterStatus, NodePhase, ReconcileReport
from pke_vsphere.vsphere.waits import wait_for_task
from starter import clusters
from tests.clusters import create_ready
from tests.conftest import Stack, unique
from tests.harness import destroy_planted, plant_marked_vm, vms_of_cluster


def out_of_band(stack: Stack, action: str, vm_ref: str) -> None:
    """What an operator does in the vSphere client, behind the orchestrator's back."""
    si = stack.sim.connect()
    try:
        vm = vim.VirtualMachine(vm_ref, si._stub)
        wait_for_task(si, vm.PowerOffVM_Task(), timeout=30)
        if action == "destroy":
            wait_for_task(si, vm.Destroy_Task(), timeout=30)
    finally:
        connect.Disconnect(si)


async def reconcile(stack: Stack, name: str) -> ReconcileReport:
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    report: ReconcileReport = await handle.execute_update(
        Update.RECONCILE, ReconcileRequest(), result_type=ReconcileReport
    )
    return report


async def test_a_vm_destroyed_out_of_band_is_replaced_and_rejoins(stack: Stack) -> None:
    name = unique("rec-gone")
    before = await create_ready(stack, name, masters=1, workers=2)
    victim = next(n for n in before.nodes if n.name == f"{name}-workers-02")
    assert victim.vm_ref is not None
    out_of_band(stack, "destroy", victim.vm_ref)

    report = await reconcile(stack, name)

    assert [(d.kind, d.name) for d in report.drift] == [("missing", victim.name)]
    assert report.actions == [f"recreate {victim.name}"]
    after = await clusters.status(stack.client, name)
    replaced = next(n for n in after.nodes if n.name == victim.name)
    assert replaced.phase is NodePhase.READY
    assert replaced.identity.generation == 1
    assert replaced.identity.instance_uuid != victim.identity.instance_uuid
    assert replaced.vm_ref != victim.vm_ref
    vms = vms_of_cluster(stack.sim, name)
    assert len(vms) == 3 and vms[victim.name]["config.instanceUuid"] == replaced.identity.instance_uuid
    assert after.last_reconcile is not None and after.last_reconcile.drift[0].name == victim.name
    # The replacement joined the cluster's (stand-in) API server again.
    assert victim.name in stack.nodes.cluster_apis[name].objects.nodes


async def test_a_vm_powered_off_out_of_band_is_powered_on_and_rejoins(stack: Stack) -> None:
    name = unique("rec-off")
    before = await create_ready(stack, name, masters=1, workers=1)
    worker = next(n for n in before.nodes if n.identity.kind.value == "worker")
    assert worker.vm_ref is not None
    out_of_band(stack, "power-off", worker.vm_ref)
    kube = stack.nodes.cluster_apis[name]

    async def kubelet_down() -> None:
        while kube.objects.nodes[worker.name]["status"]["conditions"][0]["status"] == "True":  # noqa: ASYNC110
            await asyncio.sleep(0.1)

    await asyncio.wait_for(kubelet_down(), 10)  # Kubernetes noticed the node went away

    report = await reconcile(stack, name)

    assert [(d.kind, d.name) for d in report.drift] == [("powered-off", worker.name)]
    vms = vms_of_cluster(stack.sim, name)
    assert vms[worker.name]["runtime.powerState"] == "poweredOn"
    assert vms[worker.name]["ref"] == worker.vm_ref  # the same VM, not a new one
    assert kube.objects.nodes[worker.name]["status"]["conditions"][0]["status"] == "True"
    assert stack.nodes.nodes[worker.name].events[-1][1] == "kubelet-ready"
    after = await clusters.status(stack.client, name)
    assert all(n.phase is NodePhase.READY for n in after.nodes)


async def test_an_orphan_is_kept_for_its_grace_period_then_destroyed(stack: Stack) -> None:
    name = unique("rec-orphan")
    await create_ready(stack, name, masters=1, workers=1, reconcile={"orphan_grace_seconds": 2})
    orphan_ref = plant_marked_vm(stack.sim, name, f"{name}-stray")
    theirs = plant_marked_vm(stack.sim, name, f"{name}-theirs", installation="another-site")

    first = await reconcile(stack, name)
    assert [(d.kind, d.name) for d in first.drift] == [("orphan", f"{name}-stray")]
    assert first.actions[0].startswith(f"keep orphan {name}-stray")
    assert f"{name}-stray" in vms_of_cluster(stack.sim, name)

    await asyncio.sleep(2.5)
    second = await reconcile(stack, name)
    assert second.actions == [f"destroy orphan {name}-stray ({orphan_ref})"]
    # Another installation's VM of a cluster of the same name is not this cluster's orphan.
    mine = [f"{name}-master-01", f"{name}-theirs", f"{name}-workers-01"]
    assert sorted(vms_of_cluster(stack.sim, name)) == mine
    destroy_planted(stack.sim, theirs)


async def test_periodic_reconcile_repairs_without_being_asked(stack: Stack) -> None:
    name = unique("rec-periodic")
    before = await create_ready(stack, name, masters=1, workers=1, reconcile={"interval_seconds": 10})
    worker = next(n for n in before.nodes if n.identity.kind.value == "worker")
    assert worker.vm_ref is not None
    out_of_band(stack, "destroy", worker.vm_ref)
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    for _ in range(100):
        status: ClusterStatus = await handle.query(Query.STATUS, result_type=ClusterStatus)
        report = status.last_reconcile
        if report and report.reason == "periodic" and report.drift:
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError("no periodic reconcile found the missing VM")
    await asyncio.sleep(1)
    assert worker.name in vms_of_cluster(stack.sim, name)
