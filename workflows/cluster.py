"""ClusterWorkflow: one long-running workflow per cluster (id ``pke-cluster-NAME``).

It generates the cluster's PKI, launches the leader master and waits until the
leader reports ready, then launches the follower masters and every worker pool
in parallel, one ``NodeWorkflow`` child per node. It stays running once Ready,
holding the cluster's state (spec, PKI, node inventory) for the status query,
the node API's queries and updates, and later commands; it continues as new
when the SDK suggests it.

A failed worker or follower is marked Failed and the rest go on; a failed
leader fails the create with the leader's reason.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, FailureError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from bootstrap import keepalived
    from models.messages import (
        BootstrapMaterial,
        BootstrapMaterialRequest,
        ClusterResult,
        ClusterState,
        ClusterWorkflowInput,
        GeneratePkiInput,
        JoinInfo,
        JoinRequest,
        MintTokenInput,
        NodeBootstrapSettings,
        NodeLookup,
        NodeLookupResult,
        NodeWorkflowInput,
    )
    from models.pki import BootstrapToken, ClusterPKI
    from models.spec import ClusterSpec, NodeRole, validation_problems
    from models.state import (
        ClusterPhase,
        ClusterStatus,
        NodeIdentity,
        NodeKind,
        NodePhase,
        NodeProgress,
        NodeState,
    )
    from pki.bootstrap_tokens import usable
    from workflows import ids
    from workflows.node import PROGRESS_SIGNAL, NodeWorkflow
    from workflows.policies import (
        JOIN_TOKEN_MARGIN,
        JOIN_TOKEN_TTL,
        LOCAL_WORK_RETRY,
        LOCAL_WORK_TIMEOUT,
    )

# Names the node API and the starter use.
STATUS_QUERY = "status"
NODE_QUERY = "node"
BOOTSTRAP_QUERY = "bootstrap_material"
JOIN_UPDATE = "request_join"


def failure_reason(err: BaseException) -> str:
    """The innermost message of a child or activity failure: what a person should read."""
    while isinstance(err, ChildWorkflowError | ActivityError) and err.cause is not None:
        err = err.cause
    return err.message if isinstance(err, FailureError) else str(err)


@workflow.defn(name="ClusterWorkflow")
class ClusterWorkflow:
    def __init__(self) -> None:
        self._spec: ClusterSpec | None = None
        self._uid: str | None = None
        self._phase = ClusterPhase.PENDING
        self._pki: ClusterPKI | None = None
        self._nodes: dict[str, NodeState] = {}
        self._join_token: BootstrapToken | None = None
        self._token_lock = asyncio.Lock()
        self._created_at = workflow.now()
        self._ready_at: datetime | None = None
        self._error: str | None = None

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
        if input.state is not None:
            self._restore(input.state)
        else:
            await self._create(spec)

        # Serve the node API and later commands until history grows long.
        await workflow.wait_condition(lambda: workflow.info().is_continue_as_new_suggested())
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(
            ClusterWorkflowInput(spec=spec, state=self._state()).model_dump(mode="json")
        )

    async def _create(self, spec: ClusterSpec) -> None:
        self._uid = str(workflow.uuid4())
        self._created_at = workflow.now()
        self._nodes = {n.name: n for n in self._plan(spec)}
        workflow.logger.info("creating cluster %s (%s nodes)", spec.name, len(self._nodes))

        self._phase = ClusterPhase.CREATING_PKI
        self._pki = await workflow.execute_activity(
            "generate_pki",
            GeneratePkiInput(cluster=spec.name, cluster_uid=self._uid),
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

    def _plan(self, spec: ClusterSpec) -> list[NodeState]:
        """Every node's identity, recorded before any VM is cloned."""
        assert self._uid is not None
        nodes = []
        for pool in spec.pools:
            for index in range(1, pool.count + 1):
                name = ids.node_name(spec.name, pool.name, index)
                if pool.role is NodeRole.MASTER:
                    kind = NodeKind.LEADER if index == 1 else NodeKind.MASTER
                else:
                    kind = NodeKind.WORKER
                identity = NodeIdentity(
                    cluster=spec.name,
                    cluster_uid=self._uid,
                    pool=pool.name,
                    name=name,
                    kind=kind,
                    index=index,
                    instance_uuid=ids.instance_uuid(self._uid, name),
                )
                nodes.append(NodeState(identity=identity))
        return nodes

    def _api_endpoint(self) -> str | None:
        """What followers and workers join: the VIP, else the leader's address."""
        assert self._spec is not None
        cp = self._spec.control_plane
        if cp.vip is not None:
            return f"{cp.vip}:{cp.port}"
        leader = next(n for n in self._nodes.values() if n.identity.kind is NodeKind.LEADER)
        return f"{leader.ip}:{cp.port}" if leader.ip else None

    async def _launch(self, node: NodeState) -> bool:
        """Run the node's workflow to completion; on failure mark the node Failed, return False."""
        spec = self._spec
        assert spec is not None
        pool = spec.pool(node.identity.pool)
        bootstrap = NodeBootstrapSettings(
            kubernetes_version=spec.kubernetes_version,
            api_endpoint=self._api_endpoint(),
            master_mode="ha" if spec.master_pool.count > 1 else "default",
            pod_cidr=str(spec.network.pod_cidr),
            service_cidr=str(spec.network.service_cidr),
            ssh_authorized_keys=spec.ssh_authorized_keys,
        )
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
                ),
                id=ids.node_workflow_id(spec.name, node.name),
            )
        except ChildWorkflowError as err:
            node.phase = NodePhase.FAILED
            node.last_error = failure_reason(err)
            node.updated_at = workflow.now()
            workflow.logger.warning("node %s failed: %s", node.name, node.last_error)
            return False
        node.vm_ref, node.ip = result.vm_ref, result.ip
        if node.phase is not NodePhase.READY:  # progress signal not yet processed
            node.phase = NodePhase.READY
            node.ready_at = node.updated_at = workflow.now()
        return True

    # --- state ------------------------------------------------------------
    def _state(self) -> ClusterState:
        assert self._uid is not None and self._pki is not None
        return ClusterState(
            cluster_uid=self._uid,
            phase=self._phase,
            pki=self._pki,
            nodes=list(self._nodes.values()),
            join_token=self._join_token,
            created_at=self._created_at,
            ready_at=self._ready_at,
            error=self._error,
        )

    def _restore(self, state: ClusterState) -> None:
        self._uid = state.cluster_uid
        self._phase = state.phase
        self._pki = state.pki
        self._nodes = {n.name: n for n in state.nodes}
        self._join_token = state.join_token
        self._created_at = state.created_at
        self._ready_at = state.ready_at
        self._error = state.error

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
        assert self._spec is not None
        return ClusterStatus(
            name=self._spec.name,
            cluster_uid=self._uid,
            phase=self._phase,
            api_endpoint=self._api_endpoint(),
            error=self._error,
            created_at=self._created_at,
            ready_at=self._ready_at,
            nodes=list(self._nodes.values()),
        )

    @workflow.query(name=NODE_QUERY)
    def node(self, lookup: NodeLookup) -> NodeLookupResult:
        return NodeLookupResult(cluster_uid=self._uid or "", node=self._nodes.get(lookup.node))

    @workflow.query(name=BOOTSTRAP_QUERY)
    def bootstrap_material(self, request: BootstrapMaterialRequest) -> BootstrapMaterial:
        """The CAs and keys a master needs. Queries are not recorded in history."""
        assert self._spec is not None
        node = self._nodes.get(request.node)
        if node is None or node.identity.kind is NodeKind.WORKER:
            raise ApplicationError(
                f"{request.node} is not a master of this cluster", type="NotAMaster"
            )
        if self._pki is None:
            raise ApplicationError("the cluster's PKI is not generated yet", type="NotYet")
        cp = self._spec.control_plane
        return BootstrapMaterial(
            pki=self._pki,
            api_endpoint=self._api_endpoint(),
            vip=str(cp.vip) if cp.vip else None,
            vrrp_router_id=keepalived.router_id(self._uid or ""),
            vrrp_interface=cp.interface,
            vrrp_priority=keepalived.priority(node.identity.index),
            kind=node.identity.kind.value,
        )

    # --- updates from the node API ---------------------------------------------
    @workflow.update(name=JOIN_UPDATE)
    async def request_join(self, request: JoinRequest) -> JoinInfo:
        """Join information for a follower or worker: a bootstrap token (reused while
        it stays valid, never after expiry), the CA hash and the API endpoint."""
        async with self._token_lock:
            if not usable(self._join_token, workflow.now(), JOIN_TOKEN_MARGIN):
                assert self._spec is not None
                self._join_token = await workflow.execute_activity(
                    "mint_bootstrap_token",
                    MintTokenInput(
                        cluster=self._spec.name, ttl_seconds=int(JOIN_TOKEN_TTL.total_seconds())
                    ),
                    result_type=BootstrapToken,
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=LOCAL_WORK_RETRY,
                )
        token, endpoint = self._join_token, self._api_endpoint()
        assert token is not None and self._pki is not None and endpoint is not None
        return JoinInfo(
            token=token.token.get_secret_value(),
            expires_at=token.expires_at,
            ca_cert_hash=self._pki.ca_cert_hash,
            api_endpoint=endpoint,
        )

    @request_join.validator
    def _validate_join(self, request: JoinRequest) -> None:
        node = self._nodes.get(request.node)
        if node is None:
            raise ApplicationError(
                f"{request.node} is not a node of this cluster", type="UnknownNode"
            )
        if node.identity.kind is NodeKind.LEADER:
            raise ApplicationError(
                "the leader initialises the cluster; it does not join", type="NotAJoiner"
            )
        if self._phase not in (ClusterPhase.STARTING_NODES, ClusterPhase.READY):
            raise ApplicationError("not yet: the leader is not ready", type="NotYet")
