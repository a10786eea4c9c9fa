"""End to end on the real Temporal dev server and the real vCenter simulator."""

from __future__ import annotations

from typing import Any

from pyVim import connect
from pyVmomi import vim

from pke_vsphere.contracts.spec import ClusterSpec
from pke_vsphere.contracts.state import ClusterPhase, NodePhase
from pke_vsphere.render import guestinfo
from pke_vsphere.vsphere import inventory, properties
from sim import vcenter
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import userdata_config, vms_of_cluster


def placement_of(stack: Stack, spec: ClusterSpec) -> dict[str, Any]:
    """Where the spec says the VMs go, resolved independently of the worker."""
    si = stack.sim.connect()
    try:
        where = inventory.resolve(si, spec.vsphere)
        if where.datastore_cluster is not None:
            stores = properties.read(si, where.datastore_cluster, ["childEntity"])["childEntity"]
        else:
            stores = [where.datastore]
        key = properties.read(si, where.network, ["key"])["key"] if where.network else None
        return {
            "folder": where.folder,
            "pool": where.pool,
            "datastores": list(stores),
            "portgroup_key": key,
        }
    finally:
        connect.Disconnect(si)


async def test_three_masters_two_workers_reach_ready(stack: Stack) -> None:
    name = unique("e2e")
    spec = cluster_spec(name)
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name)
    assert status.phase is ClusterPhase.READY, status.error
    assert [n.phase for n in status.nodes] == [NodePhase.READY] * 5
    assert status.api_endpoint == f"{spec.control_plane.vip}:6443"

    vms = vms_of_cluster(stack.sim, name)
    where = placement_of(stack, spec)
    expected = [
        f"{name}-master-01",
        f"{name}-master-02",
        f"{name}-master-03",
        f"{name}-workers-01",
        f"{name}-workers-02",
    ]
    assert sorted(vms) == expected
    used: set[object] = set()
    for vm_name, props in vms.items():
        pool = "master" if "-master-" in vm_name else "workers"
        assert props["config.hardware.numCPU"] == (2 if pool == "master" else 4)
        assert props["config.hardware.memoryMB"] == (4096 if pool == "master" else 8192)
        extra = props["extra"]
        assert extra["disk.enableUUID"] == "TRUE"
        assert extra[guestinfo.MARKER_POOL] == pool
        assert extra[guestinfo.MARKER_NODE] == vm_name
        assert extra["guestinfo.userdata.encoding"] == "gzip+base64"
        config = userdata_config(extra)
        assert config["hostname"] == vm_name
        assert props["runtime.powerState"] == "poweredOn"
        assert props["parent"] == where["folder"]
        assert props["resourcePool"] == where["pool"]
        assert len(props["datastore"]) == 1 and props["datastore"][0] in where["datastores"]
        used.add(props["datastore"][0])
        nics = [
            d for d in props["config.hardware.device"] if isinstance(d, vim.vm.device.VirtualEthernetCard)
        ]
        # The template's first NIC is connected to the spec's network; its second
        # stays on its own (another network).
        assert len(nics) == 2
        for card in nics:
            assert isinstance(
                card.backing, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo
            )
        keys = [card.backing.port.portgroupKey for card in nics]  # type: ignore[union-attr]
        assert keys.count(where["portgroup_key"]) == 1, keys
    # Each node's address is the one on its NIC on the spec's network, although the
    # guest lists its other NIC (on another network) first.
    ips = {n.name: n.ip for n in status.nodes}
    for vm_name, props in vms.items():
        listed = [(nic.network, list(nic.ipAddress or [])) for nic in props["guest.net"]]
        assert listed[0][0] == vcenter.OTHER_NETWORK and listed[0][1] != [ips[vm_name]], listed
        assert (vcenter.NETWORK, [ips[vm_name]]) in listed, listed
    # Storage DRS spreads the parallel clones over the datastore cluster's members.
    assert used == set(where["datastores"]), used

    # Followers and workers were powered on only after the leader reported ready.
    by_name = {n.name: n for n in status.nodes}
    leader = by_name[f"{name}-master-01"]
    assert leader.ready_at is not None
    for node in status.nodes:
        if node is not leader:
            assert node.powered_on_at is not None and node.powered_on_at > leader.ready_at, node.name


async def test_resource_pool_and_datastore_placement(stack: Stack) -> None:
    name = unique("placed")
    spec = cluster_spec(
        name,
        masters=1,
        workers=1,
        vsphere={
            "compute_cluster": None,
            "resource_pool": "DC0_C0/Resources/DC0_C0_RP1",
            "datastore_cluster": None,
            "datastore": "LocalDS_0",
            "network": None,
        },
    )
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name)
    assert status.phase is ClusterPhase.READY, status.error
    assert status.api_endpoint == f"{status.nodes[0].ip}:6443"  # one master: the leader's address
    where = placement_of(stack, spec)
    vms = vms_of_cluster(stack.sim, name)
    assert len(vms) == 2
    for props in vms.values():
        assert props["resourcePool"] == where["pool"]
        assert props["datastore"] == [where["datastores"][0]]
