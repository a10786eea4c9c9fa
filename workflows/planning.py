"""Where a cluster's decisions are made: pure functions of its ``ClusterState``.

Which nodes a create plans, which a scale adds or removes, what a reconcile
repairs, when an orphan is old enough to destroy, whether the join credential
can be reused, what the status and a master's bootstrap material say. No I/O
and no Temporal calls: the cluster's workflow (workflows/cluster.py and its
steps) carries these decisions out, and tests/test_planning.py checks them
without any server.

Functions that name a new node record it in the state they are given (its
generation bumped), so that the identity exists in history before any VM does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import BootstrapMaterial, ClusterState, ClusterVm, KubeAccess
from pke_vsphere.contracts.spec import NodePoolSpec, NodeRole
from pke_vsphere.contracts.state import (
    ClusterServices,
    ClusterStatus,
    Drift,
    NodeIdentity,
    NodeKind,
    NodePhase,
    NodeProgress,
    NodeState,
    ReconcileReport,
)
from pke_vsphere.render import keepalived

EXTERNAL_CLOUD_PROVIDER = "external"


# --- nodes -------------------------------------------------------------------
def pool_nodes(state: ClusterState, pool: str) -> list[NodeState]:
    """The pool's nodes, oldest (lowest index) first."""
    return sorted(
        (n for n in state.nodes.values() if n.identity.pool == pool), key=lambda n: n.identity.index
    )


def new_node(state: ClusterState, pool: NodePoolSpec, index: int, kind: NodeKind | None = None) -> NodeState:
    """Record a node about to get a VM. A name seen before gets the next generation,
    so its instance UUID (and token id) differ from any earlier VM's."""
    name = ids.node_name(state.spec.name, pool.name, index)
    generation = state.generations[name] + 1 if name in state.generations else 0
    state.generations[name] = generation
    if kind is None:
        kind = NodeKind.MASTER if pool.role is NodeRole.MASTER else NodeKind.WORKER
    node = NodeState(
        identity=NodeIdentity(
            cluster=state.spec.name,
            cluster_uid=state.cluster_uid,
            pool=pool.name,
            name=name,
            kind=kind,
            index=index,
            instance_uuid=ids.instance_uuid(state.cluster_uid, name, generation),
            generation=generation,
        )
    )
    state.nodes[name] = node
    return node


def plan_create(state: ClusterState) -> list[NodeState]:
    """Every node of the spec; the first master is the leader."""
    return [
        new_node(state, pool, index, NodeKind.LEADER if pool.role is NodeRole.MASTER and index == 1 else None)
        for pool in state.spec.pools
        for index in range(1, pool.count + 1)
    ]


def set_pool(state: ClusterState, pool: NodePoolSpec | None, name: str) -> None:
    """Replace (or with None, drop) a pool in the desired spec."""
    pools = [p for p in state.spec.pools if p.name != name]
    if pool is not None:
        pools.append(pool)
    state.spec = state.spec.model_copy(update={"pools": pools})


@dataclass
class ScalePlan:
    add: list[NodeState] = field(default_factory=list)
    """New nodes, recorded in the state, to launch."""
    remove: list[NodeState] = field(default_factory=list)
    """Nodes to drain and destroy, newest first."""


def plan_scale(state: ClusterState, pool_name: str, size: int) -> ScalePlan:
    """Set the pool's desired size; the nodes to add (after the highest index so far)
    or to remove (newest first: indices only grow)."""
    pool = state.spec.pool(pool_name)
    current = pool_nodes(state, pool_name)
    pool = pool.model_copy(update={"count": size})
    set_pool(state, pool, pool_name)
    if size > len(current):
        start = max((n.identity.index for n in current), default=0) + 1
        return ScalePlan(add=[new_node(state, pool, i) for i in range(start, start + size - len(current))])
    newest_first = sorted(current, key=lambda n: n.identity.index, reverse=True)
    return ScalePlan(remove=newest_first[: len(current) - size])


# --- reconcile -------------------------------------------------------------------
@dataclass
class ReconcilePlan:
    report: ReconcileReport
    relaunch: list[NodeState] = field(default_factory=list)
    """Replacements (recorded in the state) of Ready nodes whose VM vanished."""
    restart: list[NodeState] = field(default_factory=list)
    """Ready nodes whose VM is powered off."""
    destroy: list[ClusterVm] = field(default_factory=list)
    """Orphans past their grace period."""


def plan_reconcile(state: ClusterState, vms: list[ClusterVm], now: datetime, reason: str) -> ReconcilePlan:
    """Compare what vCenter holds with the nodes the cluster owns. Updates the state's
    record of orphans (first seen; forgotten once gone or destroyed)."""
    plan = ReconcilePlan(report=ReconcileReport(at=now, reason=reason))
    report = plan.report
    by_uuid = {vm.instance_uuid: vm for vm in vms if vm.instance_uuid}
    for node in list(state.nodes.values()):
        if node.phase is not NodePhase.READY:
            continue
        vm = by_uuid.get(node.identity.instance_uuid)
        if vm is None:
            report.drift.append(
                Drift(kind="missing", name=node.name, detail=f"VM {node.vm_ref} no longer exists")
            )
            replacement = _replacement(state, node)
            if replacement is None:
                report.actions.append(f"cannot recreate {node.name}: it is the cluster's only master")
            else:
                plan.relaunch.append(replacement)
                report.actions.append(f"recreate {node.name}")
        elif not vm.powered_on:
            report.drift.append(Drift(kind="powered-off", name=node.name, detail=f"VM {vm.ref} is off"))
            plan.restart.append(node)
            report.actions.append(f"power on {node.name} and wait for it to be Ready again")
    plan.destroy = _expired_orphans(state, vms, report)
    for vm in plan.destroy:
        state.orphans_seen.pop(vm.instance_uuid or vm.ref, None)
    return plan


def _replacement(state: ClusterState, node: NodeState) -> NodeState | None:
    """A new node (next generation) in place of one whose VM vanished; None for the
    only master of a cluster."""
    pool = state.spec.pool(node.identity.pool)
    if pool.role is NodeRole.MASTER and len(pool_nodes(state, pool.name)) == 1:
        return None
    del state.nodes[node.name]
    # A replaced leader joins the surviving control plane like any follower.
    return new_node(state, pool, node.identity.index)


def _expired_orphans(state: ClusterState, vms: list[ClusterVm], report: ReconcileReport) -> list[ClusterVm]:
    owned = {n.identity.instance_uuid for n in state.nodes.values()}
    grace = state.spec.reconcile.orphan_grace_seconds
    now = report.at
    seen: set[str] = set()
    expired = []
    for vm in vms:
        if vm.instance_uuid in owned:
            continue
        key = vm.instance_uuid or vm.ref
        seen.add(key)
        age = (now - state.orphans_seen.setdefault(key, now)).total_seconds()
        report.drift.append(Drift(kind="orphan", name=vm.name, detail=f"{vm.ref}, seen for {age:.0f}s"))
        if age >= grace:
            expired.append(vm)
            report.actions.append(f"destroy orphan {vm.name} ({vm.ref})")
        else:
            report.actions.append(f"keep orphan {vm.name} for {grace - age:.0f}s more")
    for key in set(state.orphans_seen) - seen:
        del state.orphans_seen[key]
    return expired


# --- progress ------------------------------------------------------------------
def apply_progress(state: ClusterState, progress: NodeProgress) -> None:
    """A node workflow's phase change; a node already Ready or Failed keeps its end."""
    node = state.nodes.get(progress.name)
    if node is None or node.phase in (NodePhase.READY, NodePhase.FAILED):
        return
    node.phase = progress.phase
    node.updated_at = progress.at
    if progress.vm_ref:
        node.vm_ref = progress.vm_ref
        node.created_at = node.created_at or progress.at
    if progress.ip:
        node.ip = progress.ip
    if progress.phase is NodePhase.WAITING_FOR_IP:
        node.powered_on_at = progress.at
    if progress.phase is NodePhase.READY:
        node.ready_at = progress.at
    if progress.error:
        node.last_error = progress.error


# --- the cluster's endpoints and credentials ---------------------------------------
def api_address(state: ClusterState) -> str | None:
    """Where the orchestrator reaches the API: the VIP, else the first master's address."""
    cp = state.spec.control_plane
    if cp.vip is not None:
        return f"{cp.vip}:{cp.port}"
    masters = [n for n in pool_nodes(state, state.spec.master_pool.name) if n.ip]
    return f"{masters[0].ip}:{cp.port}" if masters else None


def api_endpoint(state: ClusterState) -> str | None:
    """What followers, workers and users use: the DNS name if given, else the API address."""
    cp = state.spec.control_plane
    if cp.dns_name is not None:
        return f"{cp.dns_name}:{cp.port}"
    return api_address(state)


def admin_access(state: ClusterState) -> KubeAccess | None:
    """How the cluster's activities reach its API (None: no endpoint or PKI yet)."""
    endpoint = api_address(state)
    if endpoint is None or state.pki is None:
        return None
    return KubeAccess(
        endpoint=endpoint,
        ca_cert_pem=state.pki.kubernetes_ca.cert_pem,
        ca_key_pem=state.pki.kubernetes_ca.key_pem,
    )


def join_access_reusable(access: KubeAccess | None, window: timedelta, now: datetime) -> bool:
    """The join credential handed to node workflows is reused while it still covers a
    whole bootstrap window from now."""
    return access is not None and access.expires_at is not None and access.expires_at - window >= now


# --- what the cluster tells ---------------------------------------------------------
def router_id(state: ClusterState) -> int | None:
    return state.vrrp_router_id if state.spec.control_plane.vip is not None else None


def memo(state: ClusterState) -> dict[str, object]:
    """What other workflows may read without a worker: the VRRP router id in use."""
    return {ids.VRRP_MEMO: {"router_id": router_id(state), "network": state.spec.vsphere.network}}


def services(state: ClusterState) -> ClusterServices:
    spec = state.spec
    cp = spec.control_plane
    return ClusterServices(
        topology=cp.topology.value,
        etcd_endpoints=etcd.endpoints if (etcd := cp.external_etcd) else [],
        etcd_prefix=spec.etcd_prefix,
        api_endpoint=api_endpoint(state),
        vip=str(cp.vip) if cp.vip else None,
        dns_name=cp.dns_name,
        vrrp_router_id=router_id(state),
        network=spec.vsphere.network,
        load_balancer_addresses=list(lb.addresses) if (lb := spec.load_balancer) else [],
        storage_class=storage.class_name if (storage := spec.storage) else None,
        storage_class_default=bool(storage and storage.default_class),
        cloud_provider=state.cloud_provider,
    )


def status(state: ClusterState, operation: str | None) -> ClusterStatus:
    return ClusterStatus(
        name=state.spec.name,
        cluster_uid=state.cluster_uid,
        phase=state.phase,
        api_endpoint=api_endpoint(state),
        error=state.error,
        created_at=state.created_at,
        ready_at=state.ready_at,
        nodes=sorted(state.nodes.values(), key=lambda n: (n.identity.pool, n.identity.index)),
        pools={p.name: p.count for p in state.spec.pools},
        operation=operation,
        last_reconcile=state.last_reconcile,
        services=services(state),
    )


class NotAMaster(Exception):
    """Bootstrap material is for the cluster's masters only."""


def bootstrap_material(state: ClusterState, node_name: str) -> BootstrapMaterial | None:
    """The CAs and keys a master needs; None while the PKI is not generated."""
    node = state.nodes.get(node_name)
    if node is None or node.identity.kind is NodeKind.WORKER:
        raise NotAMaster(f"{node_name} is not a master of this cluster")
    if state.pki is None:
        return None
    spec = state.spec
    cp = spec.control_plane
    return BootstrapMaterial(
        pki=state.pki,
        api_endpoint=api_endpoint(state),
        api_port=cp.port,
        vip=str(cp.vip) if cp.vip else None,
        vrrp_router_id=router_id(state),
        vrrp_interface=cp.interface,
        vrrp_priority=keepalived.priority(node.identity.index),
        kind=node.identity.kind.value,
        cluster_uid=state.cluster_uid,
        load_balancer=spec.load_balancer,
        storage=spec.storage,
        storage_target=state.storage_target,
        external_etcd=cp.external_etcd,
        etcd_prefix=spec.etcd_prefix,
        cloud_provider_credential=(
            spec.cloud_provider_credential if state.cloud_provider == EXTERNAL_CLOUD_PROVIDER else None
        ),
        kubernetes_version=spec.kubernetes_version,
        node_address=node.ip,
    )
