"""The steps every command of a cluster's workflow shares: launching a node's
workflow, reaching the cluster's API, running one command at a time, and the
vCenter activities of more than one command.

``ClusterWorkflow`` (workflows/cluster.py) is this plus the scaling, reconcile
and deletion steps; the Temporal handlers live there. What the cluster knows is
one :class:`ClusterState` (``self.state``), and what to do with it is decided in
workflows/planning.py; the steps here carry the decisions out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities import kube as kube_activities
    from activities import pki as pki_activities
    from activities.node_workflows import NodeWorkflowActivities
    from pke_vsphere.contracts import ids
    from pke_vsphere.contracts.messages import (
        AwaitNodesInput,
        AwaitNodesResult,
        CancelNodesInput,
        ClusterState,
        CreateTokensInput,
        FindClusterVmsResult,
        IssueKubeCredentialInput,
        KubeAccess,
        NodeBootstrapSettings,
        NodeJoinContext,
        NodeOutcome,
        NodeWorkflowInput,
        StartNodesInput,
    )
    from pke_vsphere.contracts.pki import BootstrapToken
    from pke_vsphere.contracts.protocol import ErrorType, Patch
    from pke_vsphere.contracts.spec import ClusterSpec, Topology
    from pke_vsphere.contracts.state import NodeKind, NodePhase, NodeState
    from pke_vsphere.runtime.failures import failed_node_vm, failure_reason
    from workflows import node_credentials, planning, vm_steps
    from workflows.bootstrap_session import bootstrap_window
    from workflows.node import NodeWorkflow
    from workflows.node_v1 import NodeWorkflowV1
    from workflows.policies import (
        JOIN_ACCESS_SLACK,
        JOIN_TOKEN_TTL,
        KUBE_CALL_TIMEOUT,
        KUBE_RETRY,
        LOCAL_WORK_RETRY,
        LOCAL_WORK_TIMEOUT,
        NODE_OUTCOMES_PER_ROUND,
        NODE_START_ACTIVITIES,
        NODE_STARTS_PER_ACTIVITY,
        NODE_STARTS_TIMEOUT,
        NODE_WORKFLOWS_HEARTBEAT,
        NODE_WORKFLOWS_SLACK,
    )

T = TypeVar("T")


class ClusterSteps:
    def __init__(self) -> None:
        self._state: ClusterState | None = None
        # One command at a time; delete cancels the one running.
        self._op_lock = asyncio.Lock()
        self._operation: str | None = None
        self._op_task: asyncio.Task[Any] | None = None
        self._access_lock = asyncio.Lock()
        self._deleting = False
        self._deleted = False

    @property
    def state(self) -> ClusterState:
        assert self._state is not None
        return self._state

    @property
    def spec(self) -> ClusterSpec:
        return self.state.spec

    # --- the cluster's API ----------------------------------------------------------
    def _kube_access(self) -> KubeAccess:
        access = planning.admin_access(self.state)
        if access is None:
            raise ApplicationError("the cluster has no reachable API endpoint yet", non_retryable=True)
        return access

    async def _join_context(self) -> NodeJoinContext:
        """What a joining node's workflow needs to mint its node's own join token: a
        client credential issued for the bootstrap window (reused while it covers a
        whole window), never the CA key."""
        state = self.state
        window = bootstrap_window(self.spec.timeouts, NodeKind.WORKER)
        async with self._access_lock:
            if not planning.join_access_reusable(state.join_access, window, workflow.now()):
                state.join_access = await workflow.execute_activity(
                    pki_activities.issue_kube_credential,
                    IssueKubeCredentialInput(
                        cluster=self.spec.name,
                        access=self._kube_access(),
                        validity_seconds=int((window + JOIN_ACCESS_SLACK).total_seconds()),
                    ),
                    start_to_close_timeout=LOCAL_WORK_TIMEOUT,
                    retry_policy=LOCAL_WORK_RETRY,
                )
        endpoint = planning.api_endpoint(state)
        assert state.pki is not None and endpoint is not None and state.join_access is not None
        return NodeJoinContext(
            api_endpoint=endpoint, ca_cert_hash=state.pki.ca_cert_hash, access=state.join_access
        )

    # --- launching a node -------------------------------------------------------
    def _bootstrap_settings(self) -> NodeBootstrapSettings:
        spec = self.spec
        return NodeBootstrapSettings(
            kubernetes_version=spec.kubernetes_version,
            api_endpoint=planning.api_endpoint(self.state),
            api_port=spec.control_plane.port,
            # With a VIP the control plane can grow later, so it starts in HA mode.
            master_mode="ha" if spec.control_plane.vip is not None else "default",
            pod_cidr=str(spec.network.pod_cidr),
            service_cidr=str(spec.network.service_cidr),
            ssh_authorized_keys=spec.ssh_authorized_keys,
            api_server_cert_sans=spec.control_plane.cert_sans,
            schedulable_masters=spec.control_plane.topology is Topology.SHARED,
            cloud_provider=self.state.cloud_provider,
            etcd_endpoints=etcd.endpoints if (etcd := spec.control_plane.external_etcd) else [],
            etcd_prefix=spec.etcd_prefix,
        )

    async def _launch_all(self, nodes: list[NodeState]) -> list[bool]:
        """Run the workflows of ``nodes`` at once (see :meth:`_launch`). Their join
        tokens are minted together first, one per joining node, so no node's join
        call waits for the API server; if that fails, each node's workflow mints
        its own when asked."""
        tokens: dict[str, BootstrapToken] = {}
        joiners = [n.name for n in nodes if n.identity.kind is not NodeKind.LEADER]
        if joiners and workflow.patched(Patch.NODE_WORKFLOW_V2):
            join = await self._join_context()
            try:
                minted = await workflow.execute_activity(
                    kube_activities.create_bootstrap_tokens,
                    CreateTokensInput(
                        cluster=self.spec.name,
                        access=join.access,
                        ttl_seconds=int(JOIN_TOKEN_TTL.total_seconds()),
                        nodes=joiners,
                    ),
                    start_to_close_timeout=KUBE_CALL_TIMEOUT * 4,
                    schedule_to_close_timeout=timedelta(minutes=2),
                    retry_policy=KUBE_RETRY,
                )
                tokens = minted.tokens
            except ActivityError as err:
                workflow.logger.warning("join tokens not minted ahead: %s", failure_reason(err))
        if nodes and workflow.patched(Patch.NODE_WORKFLOWS_BY_ACTIVITY):
            return await self._run_node_workflows(nodes, tokens)
        return list(await asyncio.gather(*(self._launch(n, tokens.get(n.name)) for n in nodes)))

    async def _run_node_workflows(
        self, nodes: list[NodeState], tokens: dict[str, BootstrapToken]
    ) -> list[bool]:
        """Start the nodes' workflows by activity (activities/node_workflows.py: far
        faster than children, which Temporal starts one by one) and settle each
        node as its workflow ends. Cancelled (the cluster is being deleted), it
        cancels them and waits until each has ended, so the deletion's sweep finds
        every VM they cloned."""
        inputs = []
        hand_back = workflow.patched(Patch.JOIN_TOKENS_BACK_IN_ROUNDS)
        for node in nodes:
            input = await self._node_input(node, tokens.get(node.name))
            input.placement_refs = self.state.placement_refs
            input.hand_back_join_tokens = hand_back
            inputs.append(input)
            node.phase, node.updated_at = NodePhase.CLONING, workflow.now()
        ok: dict[str, bool] = {}
        pending = {ids.node_workflow_id(self.spec.name, n.name): n for n in nodes}
        batches = [
            inputs[first : first + NODE_STARTS_PER_ACTIVITY]
            for first in range(0, len(inputs), NODE_STARTS_PER_ACTIVITY)
        ]
        try:
            if workflow.patched(Patch.NODE_STARTS_TOGETHER):
                await self._start_node_workflows_together(batches)
            else:
                for batch in batches:
                    await self._start_node_workflows(batch)
            while pending:
                ended = await self._await_node_workflows(list(pending))
                settled = [
                    (pending.pop(o.workflow_id), o) for o in ended.outcomes if o.workflow_id in pending
                ]
                results, _ = await asyncio.gather(
                    asyncio.gather(*(self._settle(node, o) for node, o in settled)),
                    self._take_join_tokens_back([o for _, o in settled]),
                )
                ok.update((node.name, result) for (node, _), result in zip(settled, results, strict=True))
        except (asyncio.CancelledError, ActivityError) as err:
            # Cancelled (a delete: the activity awaited fails with a cancellation), or
            # an activity gave up: no node workflow is left running unwatched, and
            # the join tokens of those that never started leave the cluster.
            never_started = await self._stop_node_workflows(list(pending))
            left = [tokens[n.name] for wid, n in pending.items() if wid in never_started and n.name in tokens]
            if left and workflow.patched(Patch.CANCELLED_NODE_TOKENS):
                join = await self._join_context()
                await node_credentials.delete_join_tokens(
                    self.spec.name, join, left, deadline=node_credentials.CANCELLED_CLEANUP_DEADLINE
                )
            if isinstance(err, ActivityError) and self._deleting:
                raise asyncio.CancelledError from err
            raise
        return [ok.get(node.name, False) for node in nodes]

    async def _take_join_tokens_back(self, outcomes: list[NodeOutcome]) -> None:
        """The join tokens the nodes that joined handed back leave the cluster, in one
        activity for the round (only nodes launched with ``hand_back_join_tokens``
        hand any back)."""
        token_ids = [i for o in outcomes if o.result is not None for i in o.result.join_token_ids]
        if token_ids:
            join = await self._join_context()
            await node_credentials.delete_joined_nodes_tokens(self.spec.name, join, token_ids)

    async def _start_node_workflows(
        self, batch: list[NodeWorkflowInput], wait_cancelled: bool = False
    ) -> None:
        await workflow.execute_activity_method(
            NodeWorkflowActivities.start_node_workflows,
            StartNodesInput(task_queue=workflow.info().task_queue, nodes=batch),
            start_to_close_timeout=NODE_STARTS_TIMEOUT,
            heartbeat_timeout=NODE_WORKFLOWS_HEARTBEAT,
            retry_policy=LOCAL_WORK_RETRY,
            # Cancelled, a start in flight ends before the node workflows are
            # stopped, so none it started is left running unwatched.
            cancellation_type=(
                ActivityCancellationType.WAIT_CANCELLATION_COMPLETED
                if wait_cancelled
                else ActivityCancellationType.TRY_CANCEL
            ),
        )

    async def _start_node_workflows_together(self, batches: list[list[NodeWorkflowInput]]) -> None:
        """Start the batches NODE_START_ACTIVITIES at a time (one after another, 1000
        nodes took a minute to start). If one start gives up, the others are
        cancelled and waited for before the error goes on."""
        gate = asyncio.Semaphore(NODE_START_ACTIVITIES)

        async def start(batch: list[NodeWorkflowInput]) -> None:
            async with gate:
                await self._start_node_workflows(batch, wait_cancelled=True)

        starts = [asyncio.ensure_future(start(batch)) for batch in batches]
        try:
            await asyncio.gather(*starts)
        except BaseException:
            for task in starts:
                task.cancel()
            await asyncio.gather(*starts, return_exceptions=True)
            raise

    async def _stop_node_workflows(self, workflow_ids: list[str]) -> set[str]:
        """Cancel the node workflows and wait until each has ended (a clone in flight
        finishes first, so a sweep after this finds its VM); the ids of those that
        were never started."""
        never_started: set[str] = set()
        if not workflow_ids:
            return never_started
        await workflow.execute_activity_method(
            NodeWorkflowActivities.cancel_node_workflows,
            CancelNodesInput(workflow_ids=workflow_ids),
            start_to_close_timeout=NODE_STARTS_TIMEOUT,
            retry_policy=LOCAL_WORK_RETRY,
        )
        left = set(workflow_ids)
        while left:
            ended = await self._await_node_workflows(sorted(left))
            left -= {outcome.workflow_id for outcome in ended.outcomes}
            never_started |= {outcome.workflow_id for outcome in ended.outcomes if outcome.never_started}
        return never_started

    async def _await_node_workflows(self, workflow_ids: list[str]) -> AwaitNodesResult:
        window = bootstrap_window(self.spec.timeouts, NodeKind.MASTER)
        return await workflow.execute_activity_method(
            NodeWorkflowActivities.await_node_workflows,
            AwaitNodesInput(workflow_ids=workflow_ids, max_outcomes=NODE_OUTCOMES_PER_ROUND),
            start_to_close_timeout=window + NODE_WORKFLOWS_SLACK,
            heartbeat_timeout=NODE_WORKFLOWS_HEARTBEAT,
            retry_policy=LOCAL_WORK_RETRY,
        )

    async def _node_input(self, node: NodeState, join_token: BootstrapToken | None) -> NodeWorkflowInput:
        spec = self.spec
        pool = spec.pool(node.identity.pool)
        join = await self._join_context() if node.identity.kind is not NodeKind.LEADER else None
        return NodeWorkflowInput(
            identity=node.identity,
            placement=spec.vsphere,
            cpus=pool.cpus,
            memory_mb=pool.memory_mb,
            bootstrap=self._bootstrap_settings(),
            timeouts=spec.timeouts,
            load_balancer=spec.load_balancer,
            join=join,
            join_token=join_token,
        )

    async def _launch(self, node: NodeState, join_token: BootstrapToken | None = None) -> bool:
        """Run the node's workflow to completion, as a child; on failure mark the
        node Failed, destroy its VM, and return False."""
        input = await self._node_input(node, join_token)
        node_id = ids.node_workflow_id(self.spec.name, node.name)
        try:
            if workflow.patched(Patch.NODE_WORKFLOW_V2):
                # The node's workflow sends nothing until its result: where it is in
                # between, its own progress query says (starter/node_detail.py).
                node.phase, node.updated_at = NodePhase.CLONING, workflow.now()
                input.placement_refs = self.state.placement_refs
                result = await workflow.execute_child_workflow(NodeWorkflow.run, input, id=node_id)
            else:
                result = await workflow.execute_child_workflow(NodeWorkflowV1.run, input, id=node_id)
        except ChildWorkflowError as err:
            if self._deleting:  # the node was cancelled because the cluster is going
                raise asyncio.CancelledError from err
            vm = failed_node_vm(err.cause)
            return await self._settle(
                node, NodeOutcome(workflow_id=node_id, error=failure_reason(err), vm=vm)
            )
        return await self._settle(node, NodeOutcome(workflow_id=node_id, result=result))

    async def _settle(self, node: NodeState, outcome: NodeOutcome) -> bool:
        """Record how the node's workflow ended: Ready with its VM and address, or
        Failed with its reason, its VM destroyed."""
        result = outcome.result
        if result is None:
            node.phase = NodePhase.FAILED
            node.last_error = outcome.error or "its workflow ended without a result"
            node.updated_at = workflow.now()
            if (vm := outcome.vm) is not None:
                node.vm_ref, node.ip = vm.vm_ref, vm.ip or node.ip
            workflow.logger.warning("node %s failed: %s", node.name, node.last_error)
            await self._remove_given_up(node)
            return False
        node.vm_ref, node.ip = result.vm_ref, result.ip
        if result.powered_on_at is not None:
            node.powered_on_at = result.powered_on_at
            node.created_at = node.created_at or result.powered_on_at
        if node.phase is not NodePhase.READY:  # progress signal not yet processed
            node.phase = NodePhase.READY
            node.ready_at = node.updated_at = workflow.now()
        return True

    async def _remove_given_up(self, node: NodeState) -> None:
        """A node given up on leaves no VM behind (its reason stays in the status)."""
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
                    type=ErrorType.DELETING,
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
                        type=ErrorType.DELETING,
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
