"""ClusterWorkflow: one long-running workflow per cluster (id ``pke-cluster-NAME``).

It generates the cluster's PKI, launches the leader master and waits until the
leader reports ready, then launches the follower masters and every worker pool
in parallel, one ``NodeWorkflow`` child per node. Once Ready it stays running,
holding the cluster's :class:`ClusterState`, reconciling vCenter with it every
``reconcile.interval_seconds``, and serving (names in pke_vsphere/contracts/protocol.py):

- queries ``status`` and ``bootstrap_material`` (the node API, for a master
  whose own workflow granted the call);
- updates ``scale_pool``, ``add_pool``, ``remove_pool``, ``reconcile`` and
  ``delete`` (people, schedules), each with a validator that refuses bad input
  without a trace in history;
- the ``node_progress`` signal of 0.2's node workflows (0.3's send none: a
  node workflow's result says how its node ended).

Commands run one at a time in arrival order; a command sent during the create
waits until the create is done. ``delete`` cancels whatever runs and refuses
what waits. The workflow continues as new, with its state as it is, when the
SDK suggests it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from pydantic import ValidationError

    from activities import pki as pki_activities
    from activities.preflight import PreflightActivities
    from activities.vrrp import VrrpActivities
    from pke_vsphere.contracts import ids
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
        ClusterState,
        ClusterWorkflowInput,
        GeneratePkiInput,
        PoolHardware,
        PreflightInput,
        RouterIdsInput,
    )
    from pke_vsphere.contracts.protocol import ErrorType, Query, Signal, Update, WorkflowType
    from pke_vsphere.contracts.spec import ClusterSpec, validation_problems
    from pke_vsphere.contracts.state import (
        ClusterPhase,
        ClusterStatus,
        NodeKind,
        NodePhase,
        NodeProgress,
        ReconcileReport,
    )
    from pke_vsphere.render import keepalived
    from pke_vsphere.runtime.failures import failure_reason
    from workflows import planning, validation
    from workflows.deletion import DeletionSteps
    from workflows.policies import LOCAL_WORK_RETRY, LOCAL_WORK_TIMEOUT, VSPHERE_RETRY, vcenter_queue
    from workflows.reconcile import ReconcileSteps
    from workflows.scaling import ScalingSteps


@workflow.defn(name=WorkflowType.CLUSTER)
class ClusterWorkflow(ScalingSteps, ReconcileSteps, DeletionSteps):
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
                type=ErrorType.INVALID_SPEC,
                non_retryable=True,
            ) from None
        if input.state is not None:
            self._state = input.state
        else:
            assert input.spec is not None
            self._check_workflow_id(input.spec)
            self._state = ClusterState(
                spec=input.spec, cluster_uid=str(workflow.uuid4()), created_at=workflow.now()
            )
            try:
                await self._run_op("create", self._create)
            except ApplicationError as err:
                if err.type != ErrorType.DELETING:
                    # A failed create leaves nothing behind in a shared etcd either.
                    await self._clear_etcd_prefix()
                    raise

        while True:
            if self._deleting:
                await workflow.wait_condition(lambda: self._deleted)
                await workflow.wait_condition(workflow.all_handlers_finished)
                return ClusterResult(name=self.spec.name, phase=ClusterPhase.DELETED)
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    ClusterWorkflowInput(state=self.state).model_dump(mode="json"),
                    memo=planning.memo(self.state),
                )

            def wake() -> bool:
                return self._deleting or workflow.info().is_continue_as_new_suggested()

            try:
                interval = timedelta(seconds=self.spec.reconcile.interval_seconds)
                await workflow.wait_condition(wake, timeout=interval)
            except TimeoutError:
                try:
                    await self._run_op("reconcile", lambda: self._reconcile("periodic"))
                except ApplicationError as err:
                    workflow.logger.warning("periodic reconcile of %s failed: %s", self.spec.name, err)

    @staticmethod
    def _check_workflow_id(spec: ClusterSpec) -> None:
        expected_id = ids.cluster_workflow_id(spec.name)
        if workflow.info().workflow_id != expected_id:
            raise ApplicationError(
                f"cluster {spec.name!r} needs workflow id {expected_id!r}, "
                f"not {workflow.info().workflow_id!r}",
                type=ErrorType.INVALID_WORKFLOW_ID,
                non_retryable=True,
            )

    async def _create(self) -> None:
        state, spec = self.state, self.spec
        planning.plan_create(state)
        workflow.logger.info("creating cluster %s (%s nodes)", spec.name, len(state.nodes))

        await self._preflight(spec)
        state.cloud_provider = planning.EXTERNAL_CLOUD_PROVIDER if spec.cloud_provider_credential else None

        state.phase = ClusterPhase.CREATING_PKI
        state.pki = await workflow.execute_activity(
            pki_activities.generate_pki,
            GeneratePkiInput(
                cluster=spec.name,
                cluster_uid=state.cluster_uid,
                etcd_ca=spec.control_plane.topology.runs_etcd,
            ),
            start_to_close_timeout=LOCAL_WORK_TIMEOUT,
            retry_policy=LOCAL_WORK_RETRY,
        )

        state.phase = ClusterPhase.STARTING_LEADER
        leader = next(n for n in state.nodes.values() if n.identity.kind is NodeKind.LEADER)
        if not await self._launch(leader):
            state.phase = ClusterPhase.FAILED
            state.error = f"leader {leader.name} failed: {leader.last_error}"
            raise ApplicationError(state.error, type=ErrorType.LEADER_FAILED, non_retryable=True)

        state.phase = ClusterPhase.STARTING_NODES
        others = [n for n in state.nodes.values() if n.identity.kind is not NodeKind.LEADER]
        try:
            await self._launch_all(others)
        except ActivityError as err:  # the nodes' workflows are stopped already
            state.phase = ClusterPhase.FAILED
            state.error = f"the other nodes could not be launched: {failure_reason(err)}"
            raise ApplicationError(
                state.error, type=ErrorType.NODES_NOT_LAUNCHED, non_retryable=True
            ) from err
        state.phase = ClusterPhase.READY
        state.ready_at = workflow.now()
        failed = [n.name for n in state.nodes.values() if n.phase is NodePhase.FAILED]
        if failed:
            workflow.logger.warning("cluster %s is Ready with failed nodes: %s", spec.name, failed)

    async def _preflight(self, spec: ClusterSpec) -> None:
        """Check the placement and the VIP before anything is created; every problem at once."""
        self.state.phase = ClusterPhase.PREFLIGHT
        try:
            checked = await workflow.execute_activity_method(
                PreflightActivities.preflight,
                PreflightInput(
                    cluster=spec.name,
                    placement=spec.vsphere,
                    vip=str(spec.control_plane.vip) if spec.control_plane.vip else None,
                    api_port=spec.control_plane.port,
                    storage=spec.storage,
                    cloud_provider_credential=spec.cloud_provider_credential,
                    external_etcd=spec.control_plane.external_etcd,
                    etcd_prefix=spec.etcd_prefix,
                    cluster_uid=self.state.cluster_uid,
                    pools=[
                        PoolHardware(index=i, cpus=pool.cpus, memory_mb=pool.memory_mb)
                        for i, pool in enumerate(spec.pools)
                    ],
                ),
                task_queue=vcenter_queue(),
                start_to_close_timeout=timedelta(minutes=2),
                retry_policy=VSPHERE_RETRY,
            )
            self.state.storage_target = checked.storage_target
            self.state.placement_refs = checked.refs
        except ActivityError as err:
            self._fail_preflight(failure_reason(err))
        if spec.control_plane.vip is not None:
            await self._choose_router_id(spec)
        # Other clusters' preflights read it from the memo, without asking this workflow.
        workflow.upsert_memo(planning.memo(self.state))

    async def _choose_router_id(self, spec: ClusterSpec) -> None:
        in_use = await workflow.execute_activity_method(
            VrrpActivities.vrrp_router_ids_in_use,
            RouterIdsInput(cluster=spec.name, network=spec.vsphere.network),
            start_to_close_timeout=LOCAL_WORK_TIMEOUT,
            retry_policy=LOCAL_WORK_RETRY,
        )
        try:
            self.state.vrrp_router_id = keepalived.choose_router_id(
                self.state.cluster_uid, spec.control_plane.vrrp_router_id, in_use.taken
            )
        except keepalived.RouterIdTaken as exc:
            self._fail_preflight(f"preflight found 1 problem: {exc}")

    def _fail_preflight(self, reason: str) -> NoReturn:
        self.state.phase = ClusterPhase.FAILED
        self.state.error = reason
        raise ApplicationError(reason, type=ErrorType.PREFLIGHT_FAILED, non_retryable=True)

    # --- signals from node workflows -----------------------------------------
    @workflow.signal(name=Signal.NODE_PROGRESS)
    def node_progress(self, progress: NodeProgress) -> None:
        if self._state is not None:
            planning.apply_progress(self._state, progress)

    # --- queries ------------------------------------------------------------
    def _state_or_refuse(self) -> ClusterState:
        if self._state is None:
            raise validation.refuse(
                "the cluster's workflow is still starting; retry", ErrorType.NOT_READY_YET
            )
        return self._state

    @workflow.query(name=Query.STATUS)
    def status(self) -> ClusterStatus:
        return planning.status(self._state_or_refuse(), self._operation)

    @workflow.query(name=Query.BOOTSTRAP_MATERIAL)
    def bootstrap_material(self, request: BootstrapMaterialRequest) -> BootstrapMaterial:
        """The CAs and keys a master needs. Queries are not recorded in history."""
        try:
            if self._deleting:
                raise planning.NotAMaster(f"{request.node} is not a master of this cluster")
            material = planning.bootstrap_material(self._state_or_refuse(), request.node)
        except planning.NotAMaster as exc:
            raise ApplicationError(str(exc), type=ErrorType.NOT_A_MASTER) from None
        if material is None:
            raise ApplicationError("the cluster's PKI is not generated yet", type=ErrorType.NOT_READY_YET)
        return material

    # --- commands ----------------------------------------------------------------
    def _spec_or_refuse(self) -> ClusterSpec:
        return self._state_or_refuse().spec

    # Command updates take JSON and parse it themselves, so a malformed request is
    # refused with the field and the rule, not a decoding error.
    @workflow.update(name=Update.SCALE_POOL)
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

    @workflow.update(name=Update.ADD_POOL)
    async def add_pool(self, raw: dict[str, Any]) -> ScaleOutcome:
        request = validation.parse(AddPoolRequest, raw)

        async def add() -> ScaleOutcome:
            planning.set_pool(self.state, request.pool.model_copy(update={"count": 0}), request.pool.name)
            return await self._scale(request.pool.name, request.pool.count)

        return await self._run_op(f"add pool {request.pool.name}", add)

    @add_pool.validator
    def _validate_add_pool(self, raw: dict[str, Any]) -> None:
        validation.add_pool(self._spec_or_refuse(), validation.parse(AddPoolRequest, raw), self._deleting)

    @workflow.update(name=Update.REMOVE_POOL)
    async def remove_pool(self, raw: dict[str, Any]) -> ScaleOutcome:
        request = validation.parse(RemovePoolRequest, raw)

        async def remove() -> ScaleOutcome:
            outcome = await self._scale(request.pool, 0)
            planning.set_pool(self.state, None, request.pool)
            return outcome

        return await self._run_op(f"remove pool {request.pool}", remove)

    @remove_pool.validator
    def _validate_remove_pool(self, raw: dict[str, Any]) -> None:
        validation.remove_pool(
            self._spec_or_refuse(), validation.parse(RemovePoolRequest, raw), self._deleting
        )

    @workflow.update(name=Update.RECONCILE)
    async def reconcile(self, raw: dict[str, Any]) -> ReconcileReport:
        """Compare vCenter with the desired state now and repair what drifted."""
        request = validation.parse(ReconcileRequest, raw)
        return await self._run_op("reconcile", lambda: self._reconcile(request.reason))

    @reconcile.validator
    def _validate_reconcile(self, raw: dict[str, Any]) -> None:
        validation.parse(ReconcileRequest, raw)
        validation.not_deleting(self._deleting, self._spec_or_refuse())

    @workflow.update(name=Update.DELETE)
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
