"""ClusterWorkflow: one long-running workflow per cluster (id ``pke-cluster-NAME``).

It generates the cluster's PKI, launches the leader master and waits until the
leader reports ready, then launches the follower masters and every worker pool
in parallel, one ``NodeWorkflow`` child per node. Once Ready it stays running,
holding the cluster's state (spec, PKI, node inventory), reconciling vCenter
with it every ``reconcile.interval_seconds``, and serving:

- queries ``status`` and ``bootstrap_material`` (the node API, for a master
  whose own workflow granted the call);
- updates ``scale_pool``, ``add_pool``, ``remove_pool``, ``reconcile`` and
  ``delete`` (people, schedules), and ``request_join`` (kept for histories of
  clusters from before nodes got their join tokens from their own workflows);
- the ``node_progress`` signal from its node workflows.

Commands run one at a time in arrival order; a command sent during the create
waits until the create is done. ``delete`` cancels whatever runs and refuses
what waits. The workflow continues as new when the SDK suggests it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from pke_vsphere.contracts.commands import (
        AddPoolRequest,
        DeleteOutcome,
        DeleteRequest,
        ReconcileRequest,
        RemovePoolRequest,
        ScaleOutcome,
        ScaleRequest,
    )
    from pke_vsphere.contracts.messages import (
        BootstrapMaterial,
        BootstrapMaterialRequest,
        ClusterResult,
        ClusterWorkflowInput,
        CreateTokenInput,
        GeneratePkiInput,
        JoinInfo,
        JoinRequest,
        MintTokenInput,
        PoolHardware,
        PreflightInput,
        PreflightResult,
        RouterIdsInput,
        RouterIdsInUse,
    )
    from pke_vsphere.contracts.pki import BootstrapToken, ClusterPKI
    from pke_vsphere.contracts.spec import ClusterSpec, NodeRole, validation_problems
    from pke_vsphere.contracts.state import (
        ClusterPhase,
        ClusterStatus,
        NodeKind,
        NodePhase,
        NodeProgress,
        ReconcileReport,
    )
    from pke_vsphere.pki.bootstrap_tokens import usable
    from pke_vsphere.render import keepalived
    from workflows import ids, validation
    from workflows.cluster_core import PATCH_JOIN_PER_NODE
    from workflows.deletion import DeletionMixin
    from workflows.failures import failure_reason
    from workflows.node import PROGRESS_SIGNAL
    from workflows.policies import (
        JOIN_TOKEN_MARGIN,
        JOIN_TOKEN_TTL,
        KUBE_CALL_TIMEOUT,
        KUBE_RETRY,
        LOCAL_WORK_RETRY,
        LOCAL_WORK_TIMEOUT,
        VSPHERE_RETRY,
    )
    from workflows.reconcile import ReconcileMixin
    from workflows.scaling import ScalingMixin

# Names the node API, the starter and the command workflows use.
STATUS_QUERY = "status"
BOOTSTRAP_QUERY = "bootstrap_material"
JOIN_UPDATE = "request_join"
SCALE_UPDATE = "scale_pool"
ADD_POOL_UPDATE = "add_pool"
REMOVE_POOL_UPDATE = "remove_pool"
RECONCILE_UPDATE = "reconcile"
DELETE_UPDATE = "delete"

# Changes to running workflows, guarded so older histories still replay.
PATCH_RECONCILE_LOOP = "reconcile-loop"
PATCH_TOKENS_IN_CLUSTER = "join-tokens-installed-in-cluster"
PATCH_PREFLIGHT = "preflight-before-create"
PATCH_VRRP_ROUTER_ID = "vrrp-router-id-checked"
PATCH_CLOUD_PROVIDER = "vsphere-cpi-add-on"

__all__ = ["ClusterWorkflow", "failure_reason"]


@workflow.defn(name="ClusterWorkflow")
class ClusterWorkflow(ScalingMixin, ReconcileMixin, DeletionMixin):
    def __init__(self) -> None:
        super().__init__()
        self._delete_outcome: DeleteOutcome | None = None

    # --- run --------------------------------------------------------------
    @workflow.run
    async def run(self, raw: dict[str, Any]) -> ClusterResult:
        """Input: a :class:`ClusterWorkflowInput` as JSON. It is validated here rather
        than by the data converter, so that a bad spec started from the Web UI or the
        ``temporal`` CLI fails the workflow with the reason instead of retrying forever."""
        try:
            input = ClusterWorkflowInput.model_validate(raw)
        except ValidationError as exc:
            raise ApplicationError(
                "invalid cluster spec: " + "; ".join(validation_problems(exc)),
                type="InvalidSpec",
                non_retryable=True,
            ) from None
        spec = self._spec = input.spec
        expected_id = ids.cluster_workflow_id(spec.name)
        if workflow.info().workflow_id != expected_id:
            raise ApplicationError(
                f"cluster {spec.name!r} needs workflow id {expected_id!r}, "
                f"not {workflow.info().workflow_id!r}",
                type="InvalidWorkflowId",
                non_retryable=True,
            )
        # Clusters from now on hand each joining node its own token (its workflow
        # mints it): the cluster-wide request_join stays for older histories only.
        self._per_node_joins = workflow.patched(PATCH_JOIN_PER_NODE)
        if input.state is not None:
            self._restore(input.state)
        else:
            self._uid = str(workflow.uuid4())
            try:
                await self._run_op("create", self._create)
            except ApplicationError as err:
                if err.type != "Deleting":
                    # A failed create leaves nothing behind in a shared etcd either.
                    await self._clear_etcd_prefix()
                    raise

        reconcile_loop = workflow.patched(PATCH_RECONCILE_LOOP)
        while True:
            if self._deleting:
                await workflow.wait_condition(lambda: self._deleted)
                await workflow.wait_condition(workflow.all_handlers_finished)
                return ClusterResult(name=self.spec.name, phase=ClusterPhase.DELETED)
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    ClusterWorkflowInput(spec=self.spec, state=self._state()).model_dump(mode="json"),
                    memo=self._memo(),
                )

            def wake() -> bool:
                return self._deleting or workflow.info().is_continue_as_new_suggested()

            if not reconcile_loop:
                await workflow.wait_condition(wake)
                continue
            try:
                interval = timedelta(seconds=self.spec.reconcile.interval_seconds)
                await workflow.wait_condition(wake, timeout=interval)
            except TimeoutError:
                try:
                    await self._run_op("reconcile", lambda: self._reconcile("periodic"))
                except ApplicationError as err:
                    workflow.logger.warning("periodic reconcile of %s failed: %s", spec.name, err)

    async def _create(self) -> None:
        spec = self.spec
        self._created_at = workflow.now()
        self._plan(spec)
        workflow.logger.info("creating cluster %s (%s nodes)", spec.name, len(self._nodes))

        if workflow.patched(PATCH_PREFLIGHT):
            await self._preflight(spec)
        if workflow.patched(PATCH_CLOUD_PROVIDER):
            self._cloud_provider = "external" if spec.cloud_provider_credential else None

        self._phase = ClusterPhase.CREATING_PKI
        self._pki = await workflow.execute_activity(
            "generate_pki",
            GeneratePkiInput(
                cluster=spec.name, cluster_uid=self.uid, etcd_ca=spec.control_plane.topology.runs_etcd
            ),
            result_type=ClusterPKI,
            start_to_close_timeout=LOCAL_WORK_TIMEOUT,
            retry_policy=LOCAL_WORK_RETRY,
        )

        self._phase = ClusterPhase.STARTING_LEADER
        leader = next(n for n in self._nodes.values() if n.identity.kind is NodeKind.LEADER)
        if not await self._launch(leader):
            self._phase = ClusterPhase.FAILED
            self._error = f"leader {leader.name} failed: {leader.last_error}"
            raise ApplicationError(self._error, type="LeaderFailed", non_retryable=True)

        self._phase = ClusterPhase.STARTING_NODES
        others = [n for n in self._nodes.values() if n.identity.kind is not NodeKind.LEADER]
        await asyncio.gather(*(self._launch(n) for n in others))
        self._phase = ClusterPhase.READY
        self._ready_at = workflow.now()
        failed = [n.name for n in self._nodes.values() if n.phase is NodePhase.FAILED]
        if failed:
            workflow.logger.warning("cluster %s is Ready with failed nodes: %s", spec.name, failed)

    async def _preflight(self, spec: ClusterSpec) -> None:
        """Check the placement and the VIP before anything is created; every problem at once."""
        self._phase = ClusterPhase.PREFLIGHT
        try:
            checked = await workflow.execute_activity(
                "preflight",
                PreflightInput(
                    cluster=spec.name,
                    placement=spec.vsphere,
                    vip=str(spec.control_plane.vip) if spec.control_plane.vip else None,
                    api_port=spec.control_plane.port,
                    storage=spec.storage,
                    cloud_provider_credential=spec.cloud_provider_credential,
                    external_etcd=spec.control_plane.external_etcd,
                    etcd_prefix=spec.etcd_prefix,
                    cluster_uid=self.uid,
                    pools=[
                        PoolHardware(index=i, cpus=pool.cpus, memory_mb=pool.memory_mb)
                        for i, pool in enumerate(spec.pools)
                    ],
                ),
                result_type=PreflightResult,
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=VSPHERE_RETRY,
            )
            self._storage_target = checked.storage_target
        except ActivityError as err:
            self._fail_preflight(failure_reason(err))
        if workflow.patched(PATCH_VRRP_ROUTER_ID):
            if spec.control_plane.vip is not None:
                await self._choose_router_id(spec)
            # Other clusters' preflights read it from the memo, without asking this workflow.
            workflow.upsert_memo(self._memo())

    async def _choose_router_id(self, spec: ClusterSpec) -> None:
        in_use = await workflow.execute_activity(
            "vrrp_router_ids_in_use",
            RouterIdsInput(cluster=spec.name, network=spec.vsphere.network),
            result_type=RouterIdsInUse,
            start_to_close_timeout=LOCAL_WORK_TIMEOUT,
            retry_policy=LOCAL_WORK_RETRY,
        )
        try:
            self._vrrp_router_id = keepalived.choose_router_id(
                self.uid, spec.control_plane.vrrp_router_id, in_use.taken
            )
        except keepalived.RouterIdTaken as exc:
            self._fail_preflight(f"preflight found 1 problem: {exc}")

    def _fail_preflight(self, reason: str) -> NoReturn:
        self._phase = ClusterPhase.FAILED
        self._error = reason
        raise ApplicationError(reason, type="PreflightFailed", non_retryable=True)

    def _plan(self, spec: ClusterSpec) -> None:
        """Every node's identity, recorded before any VM is cloned."""
        for pool in spec.pools:
            for index in range(1, pool.count + 1):
                leader = pool.role is NodeRole.MASTER and index == 1
                self._new_node(pool, index, NodeKind.LEADER if leader else None)

    # --- signals from node workflows -----------------------------------------
    @workflow.signal(name=PROGRESS_SIGNAL)
    def node_progress(self, progress: NodeProgress) -> None:
        node = self._nodes.get(progress.name)
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

    # --- queries ------------------------------------------------------------
    @workflow.query(name=STATUS_QUERY)
    def status(self) -> ClusterStatus:
        return self._status()

    @workflow.query(name=BOOTSTRAP_QUERY)
    def bootstrap_material(self, request: BootstrapMaterialRequest) -> BootstrapMaterial:
        """The CAs and keys a master needs. Queries are not recorded in history."""
        node = self._nodes.get(request.node)
        if node is None or node.identity.kind is NodeKind.WORKER or self._deleting:
            raise ApplicationError(f"{request.node} is not a master of this cluster", type="NotAMaster")
        if self._pki is None:
            raise ApplicationError("the cluster's PKI is not generated yet", type="NotYet")
        cp = self.spec.control_plane
        return BootstrapMaterial(
            pki=self._pki,
            api_endpoint=self._api_endpoint(),
            vip=str(cp.vip) if cp.vip else None,
            vrrp_router_id=self._router_id(),
            vrrp_interface=cp.interface,
            vrrp_priority=keepalived.priority(node.identity.index),
            kind=node.identity.kind.value,
            cluster_uid=self.uid,
            load_balancer=self.spec.load_balancer,
            storage=self.spec.storage,
            storage_target=self._storage_target,
            external_etcd=cp.external_etcd,
            etcd_prefix=self.spec.etcd_prefix,
            cloud_provider_credential=(
                self.spec.cloud_provider_credential if self._cloud_provider == "external" else None
            ),
            kubernetes_version=self.spec.kubernetes_version,
            node_address=node.ip,
        )

    # --- updates from the node API ---------------------------------------------
    @workflow.update(name=JOIN_UPDATE)
    async def request_join(self, request: JoinRequest) -> JoinInfo:
        """Join information for a follower or worker: a bootstrap token (reused while
        it stays valid, never after expiry; installed in the cluster when minted),
        the CA hash and the API endpoint."""
        async with self._token_lock:
            if not usable(self._join_token, workflow.now(), JOIN_TOKEN_MARGIN):
                self._join_token = await self._mint_join_token()
        token, endpoint = self._join_token, self._api_endpoint()
        assert token is not None and self._pki is not None and endpoint is not None
        return JoinInfo(
            token=token.token.get_secret_value(),
            expires_at=token.expires_at,
            ca_cert_hash=self._pki.ca_cert_hash,
            api_endpoint=endpoint,
            node_address=self._nodes[request.node].ip,
        )

    async def _mint_join_token(self) -> BootstrapToken:
        ttl = int(JOIN_TOKEN_TTL.total_seconds())
        token: BootstrapToken
        if workflow.patched(PATCH_TOKENS_IN_CLUSTER):
            token = await workflow.execute_activity(
                "create_bootstrap_token",
                CreateTokenInput(cluster=self.spec.name, access=self._kube_access(), ttl_seconds=ttl),
                result_type=BootstrapToken,
                schedule_to_close_timeout=timedelta(minutes=2),
                start_to_close_timeout=KUBE_CALL_TIMEOUT,
                retry_policy=KUBE_RETRY,
            )
            return token
        token = await workflow.execute_activity(
            "mint_bootstrap_token",
            MintTokenInput(cluster=self.spec.name, ttl_seconds=ttl),
            result_type=BootstrapToken,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=LOCAL_WORK_RETRY,
        )
        return token

    @request_join.validator
    def _validate_join(self, request: JoinRequest) -> None:
        if self._per_node_joins:
            raise ApplicationError(
                "each joining node gets its own join token from its node workflow", type="NotAJoiner"
            )
        node = self._nodes.get(request.node)
        if node is None or self._deleting:
            raise ApplicationError(f"{request.node} is not a node of this cluster", type="UnknownNode")
        if node.identity.kind is NodeKind.LEADER:
            raise ApplicationError("the leader initialises the cluster; it does not join", type="NotAJoiner")
        if self._phase not in (ClusterPhase.STARTING_NODES, ClusterPhase.READY):
            raise ApplicationError("not yet: the leader is not ready", type="NotYet")
        if node.ip is None:
            raise ApplicationError(
                "not yet: VMware Tools has not reported this node's address", type="NotYet"
            )

    # --- commands ----------------------------------------------------------------
    def _spec_or_refuse(self) -> ClusterSpec:
        if self._spec is None:
            raise validation.refuse("the cluster's workflow is still starting; retry", "NotYet")
        return self._spec

    # Command updates take JSON and parse it themselves, so a malformed request is
    # refused with the field and the rule, not a decoding error.
    @workflow.update(name=SCALE_UPDATE)
    async def scale_pool(self, raw: dict[str, Any]) -> ScaleOutcome:
        """Set a pool's size: new nodes join; removed ones (newest first) are drained first."""
        request = validation.parse(ScaleRequest, raw)
        return await self._run_op(
            f"scale {request.pool} to {request.size}",
            lambda: self._scale(request.pool, request.size),
        )

    @scale_pool.validator
    def _validate_scale(self, raw: dict[str, Any]) -> None:
        validation.scale(self._spec_or_refuse(), validation.parse(ScaleRequest, raw), self._deleting)

    @workflow.update(name=ADD_POOL_UPDATE)
    async def add_pool(self, raw: dict[str, Any]) -> ScaleOutcome:
        request = validation.parse(AddPoolRequest, raw)

        async def add() -> ScaleOutcome:
            self._set_pool(request.pool.model_copy(update={"count": 0}), request.pool.name)
            return await self._scale(request.pool.name, request.pool.count)

        return await self._run_op(f"add pool {request.pool.name}", add)

    @add_pool.validator
    def _validate_add_pool(self, raw: dict[str, Any]) -> None:
        validation.add_pool(self._spec_or_refuse(), validation.parse(AddPoolRequest, raw), self._deleting)

    @workflow.update(name=REMOVE_POOL_UPDATE)
    async def remove_pool(self, raw: dict[str, Any]) -> ScaleOutcome:
        request = validation.parse(RemovePoolRequest, raw)

        async def remove() -> ScaleOutcome:
            outcome = await self._scale(request.pool, 0)
            self._set_pool(None, request.pool)
            return outcome

        return await self._run_op(f"remove pool {request.pool}", remove)

    @remove_pool.validator
    def _validate_remove_pool(self, raw: dict[str, Any]) -> None:
        validation.remove_pool(
            self._spec_or_refuse(), validation.parse(RemovePoolRequest, raw), self._deleting
        )

    @workflow.update(name=RECONCILE_UPDATE)
    async def reconcile(self, raw: dict[str, Any]) -> ReconcileReport:
        """Compare vCenter with the desired state now and repair what drifted."""
        request = validation.parse(ReconcileRequest, raw)
        return await self._run_op("reconcile", lambda: self._reconcile(request.reason))

    @reconcile.validator
    def _validate_reconcile(self, raw: dict[str, Any]) -> None:
        validation.parse(ReconcileRequest, raw)
        validation.not_deleting(self._deleting, self._spec_or_refuse())

    @workflow.update(name=DELETE_UPDATE)
    async def delete(self, raw: dict[str, Any]) -> DeleteOutcome:
        """Cancel what runs, destroy every VM of the cluster, remove its schedules, finish."""
        request = validation.parse(DeleteRequest, raw)
        if not self._deleting:
            self._deleting = True
            workflow.logger.info("deleting cluster %s (%s)", self.spec.name, request.reason)
            if self._op_task is not None:
                self._op_task.cancel()
        async with self._op_lock:
            if self._delete_outcome is None:
                self._delete_outcome = await self._delete()
        return self._delete_outcome

    @delete.validator
    def _validate_delete(self, raw: dict[str, Any]) -> None:
        validation.parse(DeleteRequest, raw)
        self._spec_or_refuse()
