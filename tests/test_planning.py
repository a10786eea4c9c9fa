"""A cluster's decisions, without any server: workflows/planning.py on a ClusterState."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import ClusterState, ClusterVm, KubeAccess
from pke_vsphere.contracts.state import NodeKind, NodePhase, NodeProgress
from pke_vsphere.pki.cluster import generate_cluster_pki
from tests.conftest import cluster_spec
from workflows import planning

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def state(masters: int = 3, workers: int = 2, **spec: object) -> ClusterState:
    return ClusterState(
        spec=cluster_spec("plan", masters=masters, workers=workers, **spec),
        cluster_uid="uid-1",
        created_at=NOW,
    )


def ready(cluster: ClusterState) -> ClusterState:
    for i, node in enumerate(cluster.nodes.values(), start=10):
        node.phase, node.ip, node.vm_ref = NodePhase.READY, f"10.0.0.{i}", f"vm-{i}"
    return cluster


def vm_of(cluster: ClusterState, name: str, powered_on: bool = True) -> ClusterVm:
    node = cluster.nodes[name]
    return ClusterVm(
        ref=node.vm_ref or "vm-x",
        name=name,
        instance_uuid=node.identity.instance_uuid,
        powered_on=powered_on,
        cluster_uid=cluster.cluster_uid,
        pool=node.identity.pool,
        node=name,
    )


def orphan(ref: str = "vm-99") -> ClusterVm:
    return ClusterVm(
        ref=ref,
        name="plan-workers-07",
        instance_uuid="u-" + ref,
        powered_on=True,
        cluster_uid="old",
        pool=None,
        node=None,
    )


# --- create and scale -------------------------------------------------------------
def test_a_create_plans_every_node_with_the_first_master_as_leader() -> None:
    cluster = state(masters=3, workers=2)
    planned = planning.plan_create(cluster)
    assert [n.name for n in planned] == [
        "plan-master-01", "plan-master-02", "plan-master-03", "plan-workers-01", "plan-workers-02"
    ]  # fmt: skip
    kinds = [n.identity.kind for n in planned]
    assert kinds == [NodeKind.LEADER, NodeKind.MASTER, NodeKind.MASTER, NodeKind.WORKER, NodeKind.WORKER]
    assert set(cluster.nodes) == {n.name for n in planned}
    assert all(cluster.generations[n.name] == 0 for n in planned)
    assert planned[0].identity.instance_uuid == ids.instance_uuid("uid-1", "plan-master-01", 0)
    assert len({n.identity.instance_uuid for n in planned}) == 5


def test_growing_a_pool_adds_after_its_highest_index_and_records_the_new_size() -> None:
    cluster = state(workers=2)
    planning.plan_create(cluster)
    del cluster.nodes["plan-workers-01"]  # a gap: indices are never reused while a node holds one
    plan = planning.plan_scale(cluster, "workers", 3)
    assert [n.name for n in plan.add] == ["plan-workers-03", "plan-workers-04"]
    assert plan.remove == []
    assert cluster.spec.pool("workers").count == 3
    assert all(n.name in cluster.nodes and n.phase is NodePhase.PENDING for n in plan.add)


def test_shrinking_a_pool_removes_the_newest_nodes_first() -> None:
    cluster = state(workers=4)
    planning.plan_create(cluster)
    plan = planning.plan_scale(cluster, "workers", 1)
    assert [n.name for n in plan.remove] == ["plan-workers-04", "plan-workers-03", "plan-workers-02"]
    assert plan.add == []
    assert cluster.spec.pool("workers").count == 1
    assert planning.plan_scale(cluster, "workers", 4).add == []  # the removal is not done yet: no one to add


def test_a_name_used_before_gets_a_new_generation_and_instance_uuid() -> None:
    cluster = state(workers=2)
    planning.plan_create(cluster)
    first = cluster.nodes["plan-workers-02"].identity
    for node in planning.plan_scale(cluster, "workers", 1).remove:
        del cluster.nodes[node.name]
    (again,) = planning.plan_scale(cluster, "workers", 2).add
    assert again.name == first.name
    assert again.identity.generation == 1
    assert again.identity.instance_uuid != first.instance_uuid


# --- reconcile --------------------------------------------------------------------
def test_a_ready_node_whose_vm_vanished_is_replaced_by_its_next_generation() -> None:
    cluster = ready(state(workers=2))
    planning.plan_create(cluster)
    ready(cluster)
    old = cluster.nodes["plan-workers-01"].identity
    vms = [vm_of(cluster, n) for n in cluster.nodes if n != "plan-workers-01"]
    plan = planning.plan_reconcile(cluster, vms, NOW, "test")
    (new,) = plan.relaunch
    assert new.name == old.name and new.identity.generation == old.generation + 1
    assert cluster.nodes[old.name] is new and new.phase is NodePhase.PENDING
    assert [(d.kind, d.name) for d in plan.report.drift] == [("missing", old.name)]
    assert plan.report.actions == [f"recreate {old.name}"]
    assert plan.restart == [] and plan.destroy == []


def test_the_only_master_is_not_recreated_and_the_report_says_why() -> None:
    cluster = state(masters=1, workers=1)
    planning.plan_create(cluster)
    ready(cluster)
    plan = planning.plan_reconcile(cluster, [vm_of(cluster, "plan-workers-01")], NOW, "test")
    assert plan.relaunch == []
    assert plan.report.actions == ["cannot recreate plan-master-01: it is the cluster's only master"]
    assert cluster.nodes["plan-master-01"].identity.generation == 0


def test_a_powered_off_vm_is_restarted_and_nodes_still_joining_are_left_alone() -> None:
    cluster = state(masters=1, workers=2)
    planning.plan_create(cluster)
    ready(cluster)
    cluster.nodes["plan-workers-02"].phase = NodePhase.BOOTSTRAPPING
    vms = [vm_of(cluster, "plan-master-01"), vm_of(cluster, "plan-workers-01", powered_on=False)]
    plan = planning.plan_reconcile(cluster, vms, NOW, "test")
    assert [n.name for n in plan.restart] == ["plan-workers-01"]
    assert plan.relaunch == []  # workers-02 has no VM found, but it is not Ready yet: its workflow owns it


def test_an_orphan_is_kept_for_its_grace_period_then_destroyed_and_forgotten() -> None:
    cluster = state(masters=1, workers=0, reconcile={"orphan_grace_seconds": 600})
    planning.plan_create(cluster)
    ready(cluster)
    vms = [vm_of(cluster, "plan-master-01"), orphan()]
    first = planning.plan_reconcile(cluster, vms, NOW, "periodic")
    assert first.destroy == [] and first.report.actions == ["keep orphan plan-workers-07 for 600s more"]
    assert cluster.orphans_seen == {"u-vm-99": NOW}
    later = planning.plan_reconcile(cluster, vms, NOW + timedelta(seconds=599), "periodic")
    assert later.destroy == []
    due = planning.plan_reconcile(cluster, vms, NOW + timedelta(seconds=600), "periodic")
    assert [vm.ref for vm in due.destroy] == ["vm-99"]
    assert cluster.orphans_seen == {}


def test_an_orphan_that_went_away_by_itself_is_forgotten() -> None:
    cluster = state(masters=1, workers=0)
    planning.plan_create(cluster)
    ready(cluster)
    planning.plan_reconcile(cluster, [vm_of(cluster, "plan-master-01"), orphan()], NOW, "periodic")
    assert cluster.orphans_seen
    report = planning.plan_reconcile(cluster, [vm_of(cluster, "plan-master-01")], NOW, "periodic").report
    assert cluster.orphans_seen == {} and report.drift == []


# --- progress, endpoints, credentials ------------------------------------------------
def test_progress_moves_a_node_on_but_never_out_of_ready_or_failed() -> None:
    cluster = state(masters=1, workers=1)
    planning.plan_create(cluster)
    at = NOW + timedelta(seconds=5)
    planning.apply_progress(
        cluster, NodeProgress(name="plan-workers-01", phase=NodePhase.CONFIGURING, vm_ref="vm-7", at=at)
    )
    node = cluster.nodes["plan-workers-01"]
    assert (node.phase, node.vm_ref, node.created_at) == (NodePhase.CONFIGURING, "vm-7", at)
    node.phase = NodePhase.READY
    planning.apply_progress(
        cluster, NodeProgress(name="plan-workers-01", phase=NodePhase.BOOTSTRAPPING, at=at)
    )
    assert node.phase is NodePhase.READY
    planning.apply_progress(cluster, NodeProgress(name="no-such-node", phase=NodePhase.READY, at=at))
    assert "no-such-node" not in cluster.nodes


@pytest.mark.parametrize(
    ("control_plane", "address", "endpoint"),
    [
        ({}, "10.0.0.10:6443", "10.0.0.10:6443"),
        ({"port": 8443}, "10.0.0.10:8443", "10.0.0.10:8443"),
        ({"vip": "127.0.9.9", "port": 8443}, "127.0.9.9:8443", "127.0.9.9:8443"),
        ({"vip": "127.0.9.9", "dns_name": "api.example.org"}, "127.0.9.9:6443", "api.example.org:6443"),
    ],
)
def test_the_api_is_reached_at_the_vip_or_first_master_and_joined_at_the_dns_name(
    control_plane: dict[str, object], address: str, endpoint: str
) -> None:
    cluster = state(masters=1, workers=1, control_plane=control_plane)
    planning.plan_create(cluster)
    assert planning.api_address(cluster) == (address if "vip" in control_plane else None)
    ready(cluster)
    assert planning.api_address(cluster) == address
    assert planning.api_endpoint(cluster) == endpoint


def test_the_join_credential_is_reused_only_while_it_covers_a_whole_window() -> None:
    window = timedelta(minutes=20)
    access = KubeAccess.model_validate(
        {"endpoint": "e:6443", "ca_cert_pem": "CA", "client_cert_pem": "C", "client_key_pem": "K"}
        | {"expires_at": NOW + timedelta(minutes=30)}
    )
    assert planning.join_access_reusable(access, window, NOW)
    assert planning.join_access_reusable(access, window, NOW + timedelta(minutes=10))
    assert not planning.join_access_reusable(access, window, NOW + timedelta(minutes=11))
    assert not planning.join_access_reusable(None, window, NOW)
    assert not planning.join_access_reusable(access.model_copy(update={"expires_at": None}), window, NOW)


def test_bootstrap_material_is_for_masters_and_waits_for_the_pki() -> None:
    cluster = state(masters=3, workers=1, control_plane={"port": 8443})
    planning.plan_create(cluster)
    cluster.vrrp_router_id = 42
    assert planning.bootstrap_material(cluster, "plan-master-02") is None  # no PKI yet
    cluster.pki = generate_cluster_pki("plan")
    material = planning.bootstrap_material(cluster, "plan-master-02")
    assert material is not None
    assert (material.kind, material.vrrp_router_id, material.api_port) == ("master", 42, 8443)
    for refused in ("plan-workers-01", "plan-master-09"):
        with pytest.raises(planning.NotAMaster, match=refused):
            planning.bootstrap_material(cluster, refused)


def test_status_counts_pools_and_hides_the_router_id_without_a_vip() -> None:
    cluster = state(masters=1, workers=2)
    planning.plan_create(cluster)
    cluster.vrrp_router_id = 7  # never chosen without a VIP; were it set, nothing would use it
    status = planning.status(cluster, "create")
    assert status.pools == {"master": 1, "workers": 2}
    assert [n.name for n in status.nodes] == ["plan-master-01", "plan-workers-01", "plan-workers-02"]
    assert status.operation == "create"
    assert status.services is not None and status.services.vrrp_router_id is None
    assert planning.memo(cluster) == {
        ids.VRRP_MEMO: {"router_id": None, "network": cluster.spec.vsphere.network}
    }
