"""NodeWorkflowV1: the node workflow of 0.2, kept so that node workflows a 0.2
worker started finish on the code they started with (a cluster workflow of 0.3
starts :class:`~workflows.node.NodeWorkflow` instead). Frozen: change nothing
here but what a replay of its histories allows; remove it once no 0.2 cluster
is left running.

One VM from clone to joined, one child workflow per node.

Steps, each with its own deadline from the spec: ensure the VM exists (found
by its instance UUID, else cloned), configure it, power it on, wait for its IP,
then wait for the node's own report (``ready`` from the leader, ``joined`` from
the others). Every phase change is signalled to the cluster workflow, which
serves the status query.

This workflow is also the authority on the node's credentials: every call the
node makes to the node API is the ``node_call`` update here, checked by the
node's :class:`~workflows.bootstrap_session.BootstrapSession`, so a token works
only from power-on until the report, and never after this workflow ends. It
mints the node's own join token when asked, deletes it from the cluster once
the node reported, and takes the node's token out of its guestinfo.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

from temporalio import workflow
from temporalio.exceptions import ApplicationError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.vms import VSphereActivities
    from pke_vsphere.contracts.messages import (
        ConfigureVmInput,
        EnsureVmInput,
        JoinInfo,
        NodeCallGrant,
        NodeCallRequest,
        NodeReport,
        NodeReportKind,
        NodeResult,
        NodeWorkflowInput,
    )
    from pke_vsphere.contracts.pki import BootstrapToken
    from pke_vsphere.contracts.protocol import (
        ErrorType,
        NodeCall,
        Query,
        Refusal,
        Signal,
        Update,
        WorkflowType,
    )
    from pke_vsphere.contracts.state import NodeKind, NodePhase, NodeProgress
    from pke_vsphere.pki.bootstrap_tokens import usable
    from workflows import node_credentials, vm_steps
    from workflows.bootstrap_session import BootstrapSession, CallRefused, bootstrap_window
    from workflows.policies import JOIN_TOKEN_MARGIN, VSPHERE_HEARTBEAT, VSPHERE_RETRY, vcenter_queue


def _cancel_requested() -> bool:
    """Whether this workflow was asked to cancel while an activity that waits for its
    own cancellation (the clone) finished anyway: the SDK then hands back the
    activity's result, and the request must still end the workflow."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@workflow.defn(name=WorkflowType.NODE_V1)
class NodeWorkflowV1:
    def __init__(self) -> None:
        self._report: NodeReport | None = None
        self._phase = NodePhase.PENDING
        self._signals: list[asyncio.Task[None]] = []
        self._session: BootstrapSession | None = None
        self._input: NodeWorkflowInput | None = None
        self._join_tokens: list[BootstrapToken] = []
        self._join_lock = asyncio.Lock()

    # --- the node's calls, from the node API --------------------------------------
    # A call still being answered when this workflow ends (a join token being minted
    # while the node is given up or its cluster deleted) is abandoned: the node API
    # then gets "workflow execution already completed", a 401 for the node.
    @workflow.update(name=Update.NODE_CALL, unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON)
    async def node_call(self, request: NodeCallRequest) -> NodeCallGrant:
        """Serve one call of the node: counted, bound to its node key, and for a
        join, with the node's own bootstrap token."""
        session = self._session
        assert session is not None and session.address is not None
        try:
            served = session.claim(request, workflow.now())
        except CallRefused as refused:
            raise ApplicationError(refused.message, type=refused.refusal, non_retryable=True) from None
        join = await self._join_info(session.address) if request.call is NodeCall.JOIN else None
        if request.call is NodeCall.REPORT and self._report is None:
            self._report = request.report
        return NodeCallGrant(call=request.call, served=served, node_address=session.address, join=join)

    @node_call.validator
    def _check_call(self, request: NodeCallRequest) -> None:
        """Refuse without a trace in history: a dead token costs nothing."""
        refused = (
            self._session.refusal(request, workflow.now())
            if self._session is not None
            else CallRefused(Refusal.NOT_YET, "not yet: the node's workflow is starting")
        )
        if refused is not None:
            raise ApplicationError(refused.message, type=refused.refusal, non_retryable=True)

    async def _join_info(self, address: str) -> JoinInfo:
        """The node's own bootstrap token, minted on its first join call and served
        again to its repeats while it stays valid."""
        assert self._input is not None
        join, node = self._input.join, self._input.identity
        if join is None:
            raise ApplicationError(f"{node.name} does not join", type=Refusal.NOT_THIS_NODE)
        async with self._join_lock:
            token = self._join_tokens[-1] if self._join_tokens else None
            if not usable(token, workflow.now(), JOIN_TOKEN_MARGIN):
                token = await node_credentials.mint_join_token(node.cluster, node.name, join)
                self._join_tokens.append(token)
        assert token is not None
        return JoinInfo(
            token=token.token.get_secret_value(),
            expires_at=token.expires_at,
            ca_cert_hash=join.ca_cert_hash,
            api_endpoint=join.api_endpoint,
            node_address=address,
        )

    @workflow.query(name=Query.NODE_PHASE)
    def phase(self) -> NodePhase:
        return self._phase

    def _progress(self, phase: NodePhase, **fields: str | None) -> None:
        """Tell the cluster's workflow, without waiting: a cancellation that arrives
        while a signal is in flight must reach the step this workflow is on (an
        awaited external signal absorbs it)."""
        self._phase = phase
        parent = workflow.info().parent
        if parent is None:
            return
        progress = NodeProgress(name=self._name, phase=phase, at=workflow.now(), **fields)
        signal = workflow.get_external_workflow_handle(parent.workflow_id).signal(
            Signal.NODE_PROGRESS, progress
        )
        self._signals.append(asyncio.create_task(signal))

    @workflow.run
    async def run(self, input: NodeWorkflowInput) -> NodeResult:
        node = input.identity
        self._name = node.name
        self._input = input
        steps = input.timeouts
        deadline = workflow.now() + bootstrap_window(steps, node.kind)
        self._session = BootstrapSession(identity=node, deadline=deadline)
        try:
            return await self._run(input, deadline)
        except BaseException as exc:
            self._session.close(f"its workflow ended: {type(exc).__name__}")
            if self._join_tokens and input.join and not isinstance(exc, asyncio.CancelledError):
                await node_credentials.delete_join_tokens(node.cluster, input.join, self._join_tokens)
            raise

    async def _run(self, input: NodeWorkflowInput, deadline: datetime) -> NodeResult:
        node = input.identity
        steps = input.timeouts
        session = self._session
        assert session is not None

        self._progress(NodePhase.CLONING)
        vm = await workflow.execute_activity_method(
            VSphereActivities.ensure_vm,
            EnsureVmInput(
                identity=node,
                placement=input.placement,
                cpus=input.cpus,
                memory_mb=input.memory_mb,
                bootstrap=input.bootstrap,
                token_expires_at=deadline,
            ),
            task_queue=vcenter_queue(),
            schedule_to_close_timeout=steps.as_timedelta("clone"),
            heartbeat_timeout=VSPHERE_HEARTBEAT,
            retry_policy=VSPHERE_RETRY,
            # If the cluster is deleted mid-clone, the clone finishes before this
            # workflow ends, so the deletion's sweep finds the VM.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

        if _cancel_requested():  # the cluster is being deleted: its sweep takes the VM
            raise asyncio.CancelledError

        self._progress(NodePhase.CONFIGURING, vm_ref=vm.vm_ref)
        await workflow.execute_activity_method(
            VSphereActivities.configure_vm,
            ConfigureVmInput(vm_ref=vm.vm_ref, name=node.name, cpus=input.cpus, memory_mb=input.memory_mb),
            task_queue=vcenter_queue(),
            schedule_to_close_timeout=steps.as_timedelta("configure"),
            heartbeat_timeout=VSPHERE_HEARTBEAT,
            retry_policy=VSPHERE_RETRY,
        )

        self._progress(NodePhase.POWERING_ON)
        await vm_steps.power_on(vm.vm_ref, node.name, steps)
        session.open()

        self._progress(NodePhase.WAITING_FOR_IP)
        ip = await vm_steps.wait_for_ip(vm.vm_ref, node.name, steps, input.placement.network)
        if input.load_balancer is not None and (entry := input.load_balancer.containing(ip)):
            raise ApplicationError(
                f"{node.name} got the address {ip}, inside load_balancer.addresses {entry!r}: "
                "MetalLB would hand it to a Service too; keep that range out of the nodes' DHCP scope",
                type=ErrorType.ADDRESS_CONFLICT,
                non_retryable=True,
            )

        session.address = ip
        self._progress(NodePhase.BOOTSTRAPPING, ip=ip)
        leader = node.kind is NodeKind.LEADER
        expected = NodeReportKind.READY if leader else NodeReportKind.JOINED
        wait = steps.leader_ready if leader else steps.join
        try:
            await workflow.wait_condition(lambda: self._report is not None, timeout=wait)
        except TimeoutError:
            raise ApplicationError(
                f"{node.name} ({ip}) did not report {expected.value} within {wait}s; "
                "see the node's cloud-init log (/var/log/cloud-init-output.log)",
                type=ErrorType.NODE_REPORT_TIMEOUT,
                non_retryable=True,
            ) from None
        assert self._report is not None
        session.close(f"reported {self._report.kind.value}")
        await self._take_credentials_back(vm.vm_ref, self._report.kind)
        if self._report.kind is NodeReportKind.FAILED:
            raise ApplicationError(
                f"{node.name} reported a bootstrap failure: {self._report.message or 'no message'}",
                type=ErrorType.NODE_BOOTSTRAP_FAILED,
                non_retryable=True,
            )
        if self._report.address is not None and str(self._report.address) != ip:
            raise ApplicationError(
                f"{node.name} runs Kubernetes on {self._report.address}, but VMware Tools reported "
                f"{ip} on the cluster network's NIC ({input.placement.network or 'the first NIC'})",
                type=ErrorType.ADDRESS_MISMATCH,
                non_retryable=True,
            )
        self._progress(NodePhase.READY)
        await asyncio.gather(*self._signals)
        return NodeResult(name=node.name, vm_ref=vm.vm_ref, ip=ip)

    async def _take_credentials_back(self, vm_ref: str, report: NodeReportKind) -> None:
        """The node reported: its join token leaves the cluster, and (unless it failed,
        and its VM goes anyway) its token leaves the VM's guestinfo."""
        assert self._input is not None
        node, join = self._input.identity, self._input.join
        steps = []
        if join is not None and self._join_tokens:
            steps.append(node_credentials.delete_join_tokens(node.cluster, join, self._join_tokens))
            self._join_tokens = []
        if report is not NodeReportKind.FAILED:
            steps.append(node_credentials.remove_node_token(vm_ref, node.name))
        await asyncio.gather(*steps)  # both at once: the node's Ready waits for them
