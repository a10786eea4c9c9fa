"""The control-plane endpoint on the simulated data center: a DNS name that nodes
join through and that the API server certificate carries, and VRRP router ids
that never repeat among the clusters on one network."""

from __future__ import annotations

import time
import uuid

from activities.vrrp import QUERY_TIMEOUT, VrrpActivities
from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import RouterIdsInput
from pke_vsphere.contracts.state import ClusterPhase, NodePhase
from sim import vcenter
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique, unique_vip
from tests.harness import pke_install_args, userdata_config, vms_of_cluster


def install_args(stack: Stack, cluster: str, node: str) -> list[str]:
    """The ``pke install`` arguments in the node's guestinfo userdata."""
    return pke_install_args(userdata_config(vms_of_cluster(stack.sim, cluster)[node]["extra"]))


async def test_nodes_join_through_the_dns_name_which_the_api_certificate_carries(stack: Stack) -> None:
    name = unique("dns")
    vip, dns_name = unique_vip(), f"api.{name}.example.com"
    spec = cluster_spec(name, masters=3, workers=1, control_plane={"vip": vip, "dns_name": dns_name})
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name)

    assert status.phase is ClusterPhase.READY, status.error
    assert all(n.phase is NodePhase.READY for n in status.nodes)
    assert status.services is not None
    assert status.services.api_endpoint == f"{dns_name}:6443"
    assert (status.services.vip, status.services.dns_name) == (vip, dns_name)
    for master in (f"{name}-master-01", f"{name}-master-02"):
        args = install_args(stack, name, master)
        assert f"--kubernetes-api-server-cert-sans={vip}" in args
        assert f"--kubernetes-api-server-cert-sans={dns_name}" in args
    # Followers and workers joined the API at the name they were given.
    joined = [
        e for n in status.nodes if n.identity.kind.value != "leader" for e in stack.nodes.nodes[n.name].events
    ]
    assert sum(1 for _, event in joined if event == "reported-joined") == 3


async def test_a_vrrp_router_id_in_use_on_the_network_is_refused_before_anything_exists(stack: Stack) -> None:
    in_use = await VrrpActivities(stack.client).vrrp_router_ids_in_use(
        RouterIdsInput(cluster="-", network=vcenter.NETWORK)
    )
    router_id = max(set(range(1, 256)) - set(in_use.taken))
    first, second = unique("vrrp-a"), unique("vrrp-b")
    spec = cluster_spec(
        first, masters=1, workers=0, control_plane={"vip": unique_vip(), "vrrp_router_id": router_id}
    )
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, first)
    assert status.phase is ClusterPhase.READY, status.error
    assert status.services is not None and status.services.vrrp_router_id == router_id

    taken = cluster_spec(
        second, masters=1, workers=0, control_plane={"vip": unique_vip(), "vrrp_router_id": router_id}
    )
    await clusters.create(stack.client, taken, stack.task_queue)
    refused = await wait_until_settled(stack, second)

    assert refused.phase is ClusterPhase.FAILED
    assert refused.error == (
        f"preflight found 1 problem: control_plane.vrrp_router_id {router_id} is already used by "
        f"cluster {first!r} on the same network; choose another id (1-255)"
    )
    assert vms_of_cluster(stack.sim, second) == {}


async def test_without_a_router_id_each_cluster_gets_one_no_other_uses(stack: Stack) -> None:
    names = [unique("vrrp-auto"), unique("vrrp-auto")]
    for name in names:
        spec = cluster_spec(name, masters=1, workers=0, control_plane={"vip": unique_vip()})
        await clusters.create(stack.client, spec, stack.task_queue)
    ids = []
    for name in names:
        status = await wait_until_settled(stack, name)
        assert status.phase is ClusterPhase.READY, status.error
        assert status.services is not None and status.services.vrrp_router_id is not None
        ids.append(status.services.vrrp_router_id)
    in_use = await VrrpActivities(stack.client).vrrp_router_ids_in_use(
        RouterIdsInput(cluster="-", network=vcenter.NETWORK)
    )
    assert [in_use.taken[i] for i in ids] == names  # each id belongs to exactly its cluster


async def test_a_cluster_whose_worker_is_gone_delays_the_router_id_check_by_seconds_only(
    stack: Stack,
) -> None:
    """Its workflow cannot answer a query; the check asks it for at most a few
    seconds (in parallel with any others like it) and goes on without it."""
    name = unique("no-worker")
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=0), f"nobody-{uuid.uuid4()}")
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    try:
        started = time.monotonic()
        in_use = await VrrpActivities(stack.client).vrrp_router_ids_in_use(
            RouterIdsInput(cluster="-", network=vcenter.NETWORK)
        )
        elapsed = time.monotonic() - started
        assert elapsed < QUERY_TIMEOUT.total_seconds() + 3, elapsed
        assert name not in in_use.taken.values()
    finally:
        await handle.terminate("test over")


async def test_a_shared_control_plane_runs_workloads_on_its_three_nodes_without_workers(stack: Stack) -> None:
    name = unique("shared")
    spec = cluster_spec(name, masters=3, workers=0, control_plane={"vip": unique_vip(), "topology": "shared"})
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name)

    assert status.phase is ClusterPhase.READY, status.error
    assert [n.identity.kind.value for n in status.nodes] == ["leader", "master", "master"]
    assert status.services is not None and status.services.topology == "shared"
    for node in status.nodes:
        args = install_args(stack, name, node.name)
        assert [a for a in args if a.startswith("--taints")] == ["--taints="]  # no NoSchedule


async def test_a_control_plane_on_port_8443_is_installed_checked_and_joined_on_8443(stack: Stack) -> None:
    name = unique("port")
    vip = unique_vip()
    spec = cluster_spec(name, masters=3, workers=1, control_plane={"vip": vip, "port": 8443})
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name)
    assert status.phase is ClusterPhase.READY, status.error
    assert all(n.phase is NodePhase.READY for n in status.nodes), status.nodes

    # pke install, as the script ran it: every master's API server binds 8443.
    for index in (1, 2, 3):
        master = stack.nodes.nodes[f"{name}-master-0{index}"]
        assert f"--kubernetes-advertise-address={master.ip}:8443" in master.pke_args, master.pke_args
        assert f"--kubernetes-api-server={vip}:8443" in master.pke_args
        # keepalived checks the API server on that port.
        assert master.root is not None
        conf = (master.root / "etc/keepalived/keepalived.conf").read_text()
        assert "https://127.0.0.1:8443/healthz" in conf and ":6443" not in conf
    worker = stack.nodes.nodes[f"{name}-workers-01"]
    assert f"--kubernetes-api-server={vip}:8443" in worker.pke_args

    # The endpoint: the leader's API answers on the VIP at 8443, and the orchestrator and
    # every node used it there (the join tokens were installed through it).
    assert status.services is not None and status.services.api_endpoint == f"{vip}:8443"
    kube = stack.nodes.cluster_apis[name]
    assert f"{vip}:8443" in kube.addresses and not any(a.endswith(":6443") for a in kube.addresses)
    assert len(kube.objects.secrets_created) == 3  # one join token per joining node
