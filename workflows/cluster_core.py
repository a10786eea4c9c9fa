"""The state a cluster's workflow holds and the steps every command shares:
planning node identities, launching a node's workflow, reaching the cluster's
API, running one command at a time, and calling activities.

``ClusterWorkflow`` (workflows/cluster.py) is this plus the scaling, reconcile
and deletion mixins; the Temporal handlers live there.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from pke_vsphere.contracts.messages import (
        ClusterState,
        FindClusterVmsResult,
        IssueKubeCredentialInput,
        KubeAccess,
        NodeBootstrapSettings,
        NodeJoinContext,
        NodeWorkflowInput,
        VCenterTarget,
    )
    from pke_vsphere.contracts.pki import BootstrapToken, ClusterPKI
    from pke_vsphere.contracts.spec import ClusterSpec, NodePoolSpec, NodeRole, Topology
    from pke_vsphere.contracts.state import (
        ClusterPhase,
        ClusterServices,
        ClusterStatus,
        NodeIdentity,
        NodeKind,
        NodePhase,
        NodeState,
        ReconcileReport,
    )
    from pke_vsphere.render import keepalived
    from workflows import ids, vm_steps
    from workflows.failures import failure_reason
    from workflows.node import NodeWorkflow, bootstrap_window
    from workflows.policies import JOIN_ACCESS_SLACK, LOCAL_WORK_RETRY, LOCAL_WORK_TIMEOUT

T = TypeVar("T")

# Changes to running workflows, guarded so older histories still replay.
PATCH_DESTROY_GIVEN_UP = "destroy-vms-of-given-up-nodes"
PATCH_JOIN_PER_NODE = "join-tokens-per-node"
LEGACY_CLOUD_PROVIDER = "vsphere"


class ClusterCore:
    def __init__(self) -> None:
        self._spec: ClusterSpec | None = None
        self._uid: str | None = None
        self._phase = ClusterPhase.PENDING
        self._pki: ClusterPKI | None = None
        self._nodes: dict[str, NodeState] = {}
        self._join_token: BootstrapToken | None = None  # clusters from before per-node tokens
        self._token_lock = asyncio.Lock()
        # What node workflows install and delete their nodes' join tokens with.
        self._join_access: KubeAccess | None = None
        self._per_node_joins = False
        self._created_at = workflow.now()
        self._ready_at: datetime | None = None
        self._error: str | None = None
        # Bumped per node name each time its VM is (re)created after the first.
        self._generations: dict[str, int] = {}
        self._orphans_seen: dict[str, datetime] = {}
        self._last_reconcile: ReconcileReport | None = None
        # Chosen at preflight, unique among the clusters on the network (None: older clusters).
        self._vrrp_router_id: int | None = None
        # Where the CSI driver connects, found at preflight (no secrets).
        self._storage_target: VCenterTarget | None = None
        # PKE's --kubernetes-cloud-provider for every node of this cluster, fixed at create:
        # 'external' (the vSphere CPI add-on) or None; clusters created before the CPI
        # add-on keep the in-tree 'vsphere' so that new nodes match their old ones.
        self._cloud_provider: str | None = LEGACY_CLOUD_PROVIDER
        # One command at a time; delete cancels the one running.
        self._op_lock = asyncio.Lock()
        self._operation: str | None = None
        self._op_task: asyncio.Task[Any] | None = None
        self._deleting = False
        self._deleted = False

    # --- accessors -----------------------------------------------------------
    @property
    def spec(self) -> ClusterSpec:
        assert self._spec is not None
        return self._spec

    @property
    def uid(self) -> str:
        assert self._uid is not None
        return self._uid

    def _pool_nodes(self, pool: str) -> list[NodeState]:
        return sorted(
            (n for n in self._nodes.values() if n.identity.pool == pool),
            key=lambda n: n.identity.index,
        )

    def _set_pool(self, pool: NodePoolSpec | None, name: str) -> None:
        """Replace (or with None, drop) a pool in the desired spec."""
        pools = [p for p in self.spec.pools if p.name != name]
        if pool is not None:
            pools.append(pool)
        self._spec = self.spec.model_copy(update={"pools": pools})

    # --- node identities ---------------------------------------------------------
    def _identity(self, pool: NodePoolSpec, index: int, kind: NodeKind | None = None) -> NodeIdentity:
        name = ids.node_name(self.spec.name, pool.name, index)
        generation = self._generations.get(name, 0)
        if kind is None:
            kind = NodeKind.MASTER if pool.role is NodeRole.MASTER else NodeKind.WORKER
        return NodeIdentity(
            cluster=self.spec.name,
            cluster_uid=self.uid,
            pool=pool.name,
            name=name,
            kind=kind,
            index=index,
            instance_uuid=ids.instance_uuid(self.uid, name, generation),
            generation=generation,
        )

    def _new_node(self, pool: NodePoolSpec, index: int, kind: NodeKind | None = None) -> NodeState:
        """A node about to get a VM: a name seen before gets a new generation, so
        its instance UUID (and token id) differ from any earlier VM's."""
        name = ids.node_name(self.spec.name, pool.name, index)
        if name in self._generations:
            self._generations[name] += 1
        else:
            self._generations[name] = 0
        node = NodeState(identity=self._identity(pool, index, kind))
        self._nodes[name] = node
        return node

    # --- the cluster's endpoints ----------------------------------------------------
    def _api_address(self) -> str | None:
        """Where the orchestrator reaches the API: the VIP, else the first master's address."""
        cp = self.spec.control_plane
        if cp.vip is not None:
            return f"{cp.vip}:{cp.port}"
        masters = [n for n in self._pool_nodes(self.spec.master_pool.name) if n.ip]
        return f"{masters[0].ip}:{cp.port}" if masters else None

    def _api_endpoint(self) -> str | None:
        """What followers, workers and users use: the DNS name if given, else the API address."""
        cp = self.spec.control_plane
        if cp.dns_name is not None:
            return f"{cp.dns_name}:{cp.port}"
        return self._api_address()

    def _kube_access(self) -> KubeAccess:
        endpoint = self._api_address()
        if endpoint is None or self._pki is None:
            raise ApplicationError("the cluster has no reachable API endpoint yet", non_retryable=True)
        return KubeAccess(
            endpoint=endpoint,
            ca_cert_pem=self._pki.kubernetes_ca.cert_pem,
            ca_key_pem=self._pki.kubernetes_ca.key_pem,
        )

    async def _join_context(self) -> NodeJoinContext:
        """What a joining node's workflow needs to mint its node's own join token: a
        client credential issued for the bootstrap window (reused while it covers a
        whole window), never the CA key."""
        window = bootstrap_window(self.spec.timeouts, NodeKind.WORKER)
        async with self._token_lock:
            access = self._join_access
            if access is None or access.expires_at is None or access.expires_at - window < workflow.now():
                access = self._join_access = await workflow.execute_activity(
                    "issue_kube_credential",
                    IssueKubeCredentialInput(
                        cluster=self.spec.name,
                        access=self._kube_access(),
                        validity_seconds=int((window + JOIN_ACCESS_SLACK).total_seconds()),
                    ),
                    result_type=KubeAccess,
                    start_to_close_timeout=LOCAL_WORK_TIMEOUT,
                    retry_policy=LOCAL_WORK_RETRY,
                )
        endpoint = self._api_endpoint()
        assert self._pki is not None and endpoint is not None
        return NodeJoinContext(api_endpoint=endpoint, ca_cert_hash=self._pki.ca_cert_hash, access=access)

    # --- launching a node -------------------------------------------------------
    async def _launch(self, node: NodeState) -> bool:
        """Run the node's workflow to completion; on failure mark the node Failed, return False."""
        spec = self.spec
        pool = spec.pool(node.identity.pool)
        bootstrap = NodeBootstrapSettings(
            kubernetes_version=spec.kubernetes_version,
            api_endpoint=self._api_endpoint(),
            # With a VIP the control plane can grow later, so it starts in HA mode.
            master_mode="ha" if spec.control_plane.vip is not None else "default",
            pod_cidr=str(spec.network.pod_cidr),
            service_cidr=str(spec.network.service_cidr),
            ssh_authorized_keys=spec.ssh_authorized_keys,
            api_server_cert_sans=spec.control_plane.cert_sans,
            schedulable_masters=spec.control_plane.topology is Topology.SHARED,
            cloud_provider=self._cloud_provider,
            etcd_endpoints=etcd.endpoints if (etcd := spec.control_plane.external_etcd) else [],
            etcd_prefix=spec.etcd_prefix,
        )
        join = None
        if node.identity.kind is not NodeKind.LEADER and self._per_node_joins:
            join = await self._join_context()
        try:
            result = await workflow.execute_child_workflow(
                NodeWorkflow.run,
                NodeWorkflowInput(
                    identity=node.identity,
                    placement=spec.vsphere,
                    cpus=pool.cpus,
                    memory_mb=pool.memory_mb,
                    bootstrap=bootstrap,
                    timeouts=spec.timeouts,
                    load_balancer=spec.load_balancer,
                    join=join,
                ),
                id=ids.node_workflow_id(spec.name, node.name),
            )
        except ChildWorkflowError as err:
            if self._deleting:  # the node was cancelled because the cluster is going
                raise asyncio.CancelledError from err
            node.phase = NodePhase.FAILED
            node.last_error = failure_reason(err)
            node.updated_at = workflow.now()
            workflow.logger.warning("node %s failed: %s", node.name, node.last_error)
            await self._remove_given_up(node)
            return False
        node.vm_ref, node.ip = result.vm_ref, result.ip
        if node.phase is not NodePhase.READY:  # progress signal not yet processed
            node.phase = NodePhase.READY
            node.ready_at = node.updated_at = workflow.now()
        return True

    async def _remove_given_up(self, node: NodeState) -> None:
        """A node given up on leaves no VM behind (its reason stays in the status)."""
        if not workflow.patched(PATCH_DESTROY_GIVEN_UP):
            return
        try:
            await self._destroy_vm(node.name, node.identity.instance_uuid, node.vm_ref)
        except ActivityError as err:
            node.last_error = f"{node.last_error}; and its VM could not be removed: {failure_reason(err)}"
            return
        node.vm_ref = None

    # --- one command at a time ------------------------------------------------------
    async def _run_op(self, description: str, body: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a command under the cluster's lock. Commands queue in arrival order;
        a delete cancels the running one and every queued one is then refused."""
        async with self._op_lock:
            if self._deleting:
                raise ApplicationError(
                    f"cannot {description}: the cluster is being deleted",
                    type="Deleting",
                    non_retryable=True,
                )
            self._operation = description
            task: asyncio.Task[T] = asyncio.create_task(body())
            self._op_task = task
            try:
                return await task
            except asyncio.CancelledError:
                if self._deleting:
                    raise ApplicationError(
                        f"{description} stopped: the cluster is being deleted",
                        type="Deleting",
                        non_retryable=True,
                    ) from None
                raise
            finally:
                self._operation = None
                self._op_task = None

    # --- vCenter activities shared by commands ----------------------------------------
    async def _find_vms(self) -> FindClusterVmsResult:
        return await vm_steps.find_cluster_vms(self.spec.name, self.spec.vsphere.datacenter)

    async def _destroy_vm(self, name: str, instance_uuid: str | None, vm_ref: str | None) -> bool:
        """Destroy one of the cluster's VMs, and a clone of it still running in vCenter."""
        return await vm_steps.destroy_vm(
            self.spec.name, name, self.spec.vsphere.datacenter, instance_uuid, vm_ref, self.spec.vsphere
        )

    # --- status and continue-as-new ---------------------------------------------------
    def _status(self) -> ClusterStatus:
        return ClusterStatus(
            name=self.spec.name,
            cluster_uid=self._uid,
            phase=self._phase,
            api_endpoint=self._api_endpoint() if self._uid else None,
            error=self._error,
            created_at=self._created_at,
            ready_at=self._ready_at,
            nodes=sorted(self._nodes.values(), key=lambda n: (n.identity.pool, n.identity.index)),
            pools={p.name: p.count for p in self.spec.pools},
            operation=self._operation,
            last_reconcile=self._last_reconcile,
            services=self._services() if self._uid else None,
        )

    def _router_id(self) -> int:
        """This cluster's VRRP router id: chosen at preflight, or (clusters created
        before that check) derived from the cluster uid."""
        return self._vrrp_router_id or keepalived.router_id(self.uid)

    def _memo(self) -> dict[str, Any]:
        """What other workflows may read without a worker: the VRRP router id in use."""
        router_id = self._router_id() if self.spec.control_plane.vip else None
        return {ids.VRRP_MEMO: {"router_id": router_id, "network": self.spec.vsphere.network}}

    def _services(self) -> ClusterServices:
        cp = self.spec.control_plane
        return ClusterServices(
            topology=cp.topology.value,
            etcd_endpoints=etcd.endpoints if (etcd := cp.external_etcd) else [],
            etcd_prefix=self.spec.etcd_prefix,
            api_endpoint=self._api_endpoint(),
            vip=str(cp.vip) if cp.vip else None,
            dns_name=cp.dns_name,
            vrrp_router_id=self._router_id() if cp.vip else None,
            network=self.spec.vsphere.network,
            load_balancer_addresses=list(lb.addresses) if (lb := self.spec.load_balancer) else [],
            storage_class=storage.class_name if (storage := self.spec.storage) else None,
            storage_class_default=bool(storage and storage.default_class),
            cloud_provider=self._cloud_provider,
        )

    def _state(self) -> ClusterState:
        assert self._pki is not None
        return ClusterState(
            cluster_uid=self.uid,
            phase=self._phase,
            pki=self._pki,
            nodes=list(self._nodes.values()),
            join_token=self._join_token,
            join_access=self._join_access,
            created_at=self._created_at,
            ready_at=self._ready_at,
            error=self._error,
            generations=self._generations,
            orphans_seen=self._orphans_seen,
            last_reconcile=self._last_reconcile,
            vrrp_router_id=self._vrrp_router_id,
            storage_target=self._storage_target,
            cloud_provider=self._cloud_provider,
        )

    def _restore(self, state: ClusterState) -> None:
        self._uid = state.cluster_uid
        self._phase = state.phase
        self._pki = state.pki
        self._nodes = {n.name: n for n in state.nodes}
        self._join_token = state.join_token
        self._join_access = state.join_access
        self._created_at = state.created_at
        self._ready_at = state.ready_at
        self._error = state.error
        self._generations = dict(state.generations) or {n: 0 for n in self._nodes}
        self._orphans_seen = dict(state.orphans_seen)
        self._last_reconcile = state.last_reconcile
        self._vrrp_router_id = state.vrrp_router_id
        self._storage_target = state.storage_target
        self._cloud_provider = state.cloud_provider
