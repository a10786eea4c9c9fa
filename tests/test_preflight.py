"""Preflight: a spec that cannot be placed, or whose VIP is taken, is refused
before anything exists, with every problem named at once."""

from __future__ import annotations

import socket

from pke_vsphere.contracts.state import ClusterPhase
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import random_ssh_keys, vms_of_cluster


async def test_every_placement_problem_and_a_taken_vip_are_reported_before_any_vm(stack: Stack) -> None:
    name = unique("preflight")
    spec = cluster_spec(
        name,
        masters=3,
        workers=1,
        vsphere={"template": "no-such-template", "folder": "no/such/folder", "network": "no-such-network"},
    )
    vip = str(spec.control_plane.vip)
    with socket.socket() as taken:  # something already answers on the VIP
        taken.bind((vip, 6443))
        taken.listen()
        await clusters.create(stack.client, spec, stack.task_queue)
        status = await wait_until_settled(stack, name, within=60)

    assert status.phase is ClusterPhase.FAILED
    assert status.error is not None
    assert status.error.startswith("preflight found 4 problem(s)")
    for problem in (
        "vsphere.template: nothing at 'DC0/vm/no-such-template'",
        "vsphere.folder: nothing at 'DC0/vm/no/such/folder'",
        "vsphere.network: nothing at 'DC0/network/no-such-network'",
        f"control_plane.vip: {vip} already answers on port 6443",
    ):
        assert problem in status.error
    assert status.cluster_uid is not None and all(n.vm_ref is None for n in status.nodes)
    assert vms_of_cluster(stack.sim, name) == {}


async def test_a_vm_given_as_template_is_refused_before_any_clone(stack: Stack) -> None:
    from sim.vcenter import PLAIN_VM

    name = unique("preflight-vm")
    spec = cluster_spec(name, masters=1, workers=0, vsphere={"template": PLAIN_VM})
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name, within=60)
    assert status.phase is ClusterPhase.FAILED
    assert (
        status.error
        == f"preflight found 1 problem(s): vsphere.template: '{PLAIN_VM}' is a VM, not a template"
    )
    assert vms_of_cluster(stack.sim, name) == {}


async def test_missing_vcenter_privileges_are_named_with_where_they_are_needed(stack: Stack) -> None:
    name = unique("preflight-privs")
    spec = cluster_spec(name, masters=1, workers=1)
    stack.sim.deny_privileges("VirtualMachine.Provisioning.Clone", "Network.Assign", "Global.CancelTask")
    try:
        await clusters.create(stack.client, spec, stack.task_queue)
        status = await wait_until_settled(stack, name, within=60)
    finally:
        stack.sim.deny_privileges()

    assert status.phase is ClusterPhase.FAILED
    assert status.error is not None and status.error.startswith("preflight found 3 problem(s)"), status.error
    for problem in (
        "vsphere.template: the vCenter account lacks VirtualMachine.Provisioning.Clone on the template",
        "vsphere.network: the vCenter account lacks Network.Assign on the network",
        "the vCenter root: the vCenter account lacks Global.CancelTask on the vCenter",
    ):
        assert problem in status.error
    assert vms_of_cluster(stack.sim, name) == {}


async def test_a_pool_larger_than_the_templates_hardware_version_allows_is_refused(stack: Stack) -> None:
    from sim.vcenter import OLD_TEMPLATE

    name = unique("preflight-hw")
    spec = cluster_spec(name, masters=1, workers=1, vsphere={"template": OLD_TEMPLATE})
    spec = spec.model_copy(update={"pools": [spec.pools[0], spec.pools[1].model_copy(update={"cpus": 96})]})
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name, within=60)
    assert status.phase is ClusterPhase.FAILED
    assert status.error == (
        "preflight found 1 problem(s): pools.1.cpus: 96 CPUs exceed the 64 that the template's "
        "hardware version vmx-10 allows; upgrade the template's compatibility"
    )
    assert vms_of_cluster(stack.sim, name) == {}


async def test_a_cloud_config_too_large_for_guestinfo_fails_the_create_before_any_vm(stack: Stack) -> None:
    """Checked where the cloud-config is made, right before the leader's clone."""
    name = unique("guestinfo-big")
    spec = cluster_spec(name, masters=1, workers=1, ssh_authorized_keys=random_ssh_keys(60))
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name, within=60)
    assert status.phase is ClusterPhase.FAILED
    assert status.error is not None
    assert "over the 64 KiB vCenter takes per guestinfo value; ssh_authorized_keys (" in status.error
    assert vms_of_cluster(stack.sim, name) == {}
