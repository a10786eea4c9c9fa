"""NodeWorkflow: one VM from clone to joined, one child workflow per node.

Its history is kept short, because a cluster has up to a thousand of them: one
activity does the node's whole VM step (find or clone it powered on, match its
hardware, wait for its address: ``provision_vm``), then the workflow waits for
the node's own report (``ready`` from the leader, ``joined`` from the others).
The cluster's workflow hears from it twice, when it starts and when it ends (its
result); where the node is in between, ``status`` reads from the ``progress``
query and the provisioning activity's heartbeat (starter/node_detail.py).

This workflow is also the authority on the node's credentials: every call the
node makes to the node API is the ``node_call`` update here, checked by the
node's :class:`~workflows.bootstrap_session.BootstrapSession`, so a token works
only from the moment its VM has an address until the report, and never after
this workflow ends. It mints the node's own join token when asked and deletes it
from the cluster once the node reported, each a local activity (a marker in
history). The node's token leaves its VM's guestinfo as soon as the VM has its
address, within ``provision_vm``: cloud-init has read it by then.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from activities.vms import VSphereActivities
    from pke_vsphere.contracts.messages import (
        JoinInfo,
        NodeCallGrant,
        NodeCallRequest,
        NodeReport,
        NodeReportKind,
        NodeResult,
        NodeVm,
        NodeWorkflowInput,
        ProvisionVmInput,
        ProvisionVmResult,
    )
    from pke_vsphere.contracts.pki import BootstrapToken
    from pke_vsphere.contracts.protocol import (
        ErrorType,
        NodeCall,
        Patch,
        Query,
        Refusal,
        Update,
        WorkflowType,
    )
    from pke_vsphere.contracts.state import NodeKind, NodePhase, NodeProgress
    from pke_vsphere.pki.bootstrap_tokens import usable
    from workflows import node_credentials
    from workflows.bootstrap_session import BootstrapSession, CallRefused, bootstrap_window
    from workflows.policies import JOIN_TOKEN_MARGIN, VSPHERE_RETRY, vcenter_queue

# A retry after a worker crash gets what is left of the step, plus this to say why.
PROVISION_SLACK = timedelta(seconds=30)


def _cancel_requested() -> bool:
    """Whether this workflow was asked to cancel while an activity that waits for its
    own cancellation (the clone) finished anyway: the SDK then hands back the
    activity's result, and the request must still end the workflow."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# Not sandboxed: a create runs a thousand of these at once, and the sandbox builds
# each run its own copy of this module and a restricted environment. At 3 + 997 that
# cost the worker 13 of its 49 CPU-seconds and 50 MB, and node calls waited for it
# (10 node API 503s, none without it). What the sandbox would catch is kept out by
# other means: everything this module imports is passed through and pure or an
# activity reference (the import contracts), it holds no module state, and the
# stored histories replay (tests/test_replay.py).
@workflow.defn(name=WorkflowType.NODE, sandboxed=False)
class NodeWorkflow:
    def __init__(self) -> None:
        self._report: NodeReport | None = None
        self._progress: NodeProgress | None = None
        self._session: BootstrapSession | None = None
        self._input: NodeWorkflowInput | None = None
        self._join_tokens: list[BootstrapToken] = []
        self._join_lock = asyncio.Lock()
        self._held: set[NodeCall] = set()

    # --- the node's calls, from the node API --------------------------------------
    # A call still being answered when this workflow ends (a join token being minted
    # while the node is given up or its cluster deleted) is abandoned: the node API
    # then gets "workflow execution already completed", a 401 for the node.
    @workflow.update(name=Update.NODE_CALL, unfinished_policy=workflow.HandlerUnfinishedPolicy.ABANDON)
    async def node_call(self, request: NodeCallRequest) -> NodeCallGrant:
        """Serve one call of the node: counted, bound to its node key, and for a
        join, with the node's own bootstrap token."""
        session = self._session
        assert session is not None
        if not session.answers_calls:
            # Asked before VMware Tools reported the address (or before its token left
            # guestinfo): held until the session opens or ends, so the node has its
            # answer the moment it may, instead of at its next retry.
            self._held.add(request.call)
            try:
                await workflow.wait_condition(lambda: session.answers_calls or session.closed is not None)
            finally:
                self._held.discard(request.call)
        try:
            served = session.claim(request, workflow.now())
        except CallRefused as refused:
            raise ApplicationError(refused.message, type=refused.refusal, non_retryable=True) from None
        assert session.address is not None
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
        # A call that comes early waits in the handler, one of each kind at a time:
        # any other is refused here, and asks again later.
        held = refused is not None and refused.refusal is Refusal.NOT_YET and self._session is not None
        if held and request.call not in self._held:
            return
        if refused is not None:
            raise ApplicationError(refused.message, type=refused.refusal, non_retryable=True)

    async def _join_info(self, address: str) -> JoinInfo:
        """The node's own bootstrap token: the one it was launched with, else (or once
        that is about to expire) one minted now; served again to its repeats while
        it stays valid."""
        assert self._input is not None
        join, node = self._input.join, self._input.identity
        if join is None:
            raise ApplicationError(f"{node.name} does not join", type=Refusal.NOT_THIS_NODE)
        async with self._join_lock:
            token = self._join_tokens[-1] if self._join_tokens else None
            if not usable(token, workflow.now(), JOIN_TOKEN_MARGIN):
                token = await node_credentials.mint_join_token(node.cluster, node.name, join, local=True)
                self._join_tokens.append(token)
        assert token is not None
        return JoinInfo(
            token=token.token.get_secret_value(),
            expires_at=token.expires_at,
            ca_cert_hash=join.ca_cert_hash,
            api_endpoint=join.api_endpoint,
            node_address=address,
        )

    @workflow.query(name=Query.NODE_PROGRESS)
    def progress(self) -> NodeProgress | None:
        """Where the node is (None: the workflow has not started its run yet)."""
        return self._progress

    def _at(self, phase: NodePhase, **fields: str | None) -> None:
        assert self._progress is not None
        self._progress = self._progress.model_copy(update={"phase": phase, "at": workflow.now(), **fields})

    @workflow.run
    async def run(self, input: NodeWorkflowInput) -> NodeResult:
        node = input.identity
        self._input = input
        self._progress = NodeProgress(name=node.name, phase=NodePhase.CLONING, at=workflow.now())
        deadline = workflow.now() + bootstrap_window(input.timeouts, node.kind)
        self._session = BootstrapSession(identity=node, deadline=deadline)
        if input.join_token is not None:
            self._join_tokens = [input.join_token]
        try:
            return await self._run(input, deadline)
        except BaseException as exc:
            self._session.close(f"its workflow ended: {type(exc).__name__}")
            if self._join_tokens and input.join:
                # Cancelled too: a node removed mid-create leaves a live cluster, where
                # its pre-minted token would otherwise work until it expires.
                cancelled = isinstance(exc, asyncio.CancelledError)
                if not cancelled or workflow.patched(Patch.CANCELLED_NODE_TOKENS):
                    await node_credentials.delete_join_tokens(
                        node.cluster,
                        input.join,
                        self._join_tokens,
                        local=True,
                        deadline=(
                            node_credentials.CANCELLED_CLEANUP_DEADLINE
                            if cancelled
                            else node_credentials.CLEANUP_DEADLINE
                        ),
                    )
            raise

    async def _run(self, input: NodeWorkflowInput, deadline: datetime) -> NodeResult:
        try:
            return await self._provision_and_wait(input, deadline)
        except ApplicationError as err:
            if self._progress is None or self._progress.vm_ref is None:
                raise
            # The cluster hears of the node only through this workflow's end: a
            # failure past the VM step carries the VM and its address with it.
            raise ApplicationError(
                err.message,
                NodeVm(vm_ref=self._progress.vm_ref, ip=self._progress.ip),
                type=err.type,
                non_retryable=True,
            ) from None

    async def _provision_and_wait(self, input: NodeWorkflowInput, deadline: datetime) -> NodeResult:
        node = input.identity
        steps = input.timeouts
        session = self._session
        assert session is not None

        window = sum((steps.as_timedelta(s) for s in ("clone", "configure", "power_on", "ip")), timedelta())
        vm: ProvisionVmResult = await workflow.execute_activity_method(
            VSphereActivities.provision_vm,
            ProvisionVmInput(
                identity=node,
                placement=input.placement,
                refs=input.placement_refs,
                cpus=input.cpus,
                memory_mb=input.memory_mb,
                bootstrap=input.bootstrap,
                timeouts=steps,
                token_expires_at=deadline,
            ),
            task_queue=vcenter_queue(),
            schedule_to_close_timeout=window + PROVISION_SLACK,
            heartbeat_timeout=steps.as_timedelta("heartbeat"),
            retry_policy=VSPHERE_RETRY,
            # If the cluster is deleted mid-clone, the clone finishes before this
            # workflow ends, so the deletion's sweep finds the VM.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        if _cancel_requested():  # the cluster is being deleted: its sweep takes the VM
            raise asyncio.CancelledError

        ip = vm.ip
        if input.load_balancer is not None and (entry := input.load_balancer.containing(ip)):
            raise ApplicationError(
                f"{node.name} got the address {ip}, inside load_balancer.addresses {entry!r}: "
                "MetalLB would hand it to a Service too; keep that range out of the nodes' DHCP scope",
                type=ErrorType.ADDRESS_CONFLICT,
                non_retryable=True,
            )
        session.open()
        session.address = ip
        self._at(NodePhase.BOOTSTRAPPING, vm_ref=vm.vm_ref, ip=ip)
        leader = node.kind is NodeKind.LEADER
        expected = NodeReportKind.READY if leader else NodeReportKind.JOINED
        wait = steps.leader_ready if leader else steps.join
        # The deadline's timer is not cancelled when the report comes: it ends with
        # the workflow, which spares the history a TimerCanceled event per node.
        deadline_passed = asyncio.create_task(asyncio.sleep(wait))
        await workflow.wait_condition(lambda: self._report is not None or deadline_passed.done())
        if self._report is None:
            raise ApplicationError(
                f"{node.name} ({ip}) did not report {expected.value} within {wait}s; "
                "see the node's cloud-init log (/var/log/cloud-init-output.log)",
                type=ErrorType.NODE_REPORT_TIMEOUT,
                non_retryable=True,
            )
        session.close(f"reported {self._report.kind.value}")
        # A node that joined hands its join tokens' ids to its cluster, which deletes
        # those of a round of nodes together; on every other way out of this
        # workflow (a failure report, a mismatch, a cancellation) ``run`` deletes them.
        in_rounds = input.hand_back_join_tokens
        if not in_rounds:
            await self._take_join_tokens_back()
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
        self._at(NodePhase.READY)
        handed_back = [t.token_id for t in self._join_tokens] if in_rounds else []
        self._join_tokens = []
        return NodeResult(
            name=node.name,
            vm_ref=vm.vm_ref,
            ip=ip,
            powered_on_at=vm.powered_on_at,
            join_token_ids=handed_back,
        )

    async def _take_join_tokens_back(self) -> None:
        """The node reported: its join token leaves the cluster. (Its token left its
        VM's guestinfo when the VM got its address: ``provision_vm``.)"""
        assert self._input is not None
        node, join = self._input.identity, self._input.join
        if join is not None and self._join_tokens:
            tokens, self._join_tokens = self._join_tokens, []
            await node_credentials.delete_join_tokens(node.cluster, join, tokens, local=True)
