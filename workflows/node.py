"""NodeWorkflow: one VM from clone to joined, one child workflow per node.

Steps, each with its own deadline from the spec: ensure the VM exists (found
by its instance UUID, else cloned), configure it, power it on, wait for its IP,
then wait for the node's own report (``ready`` from the leader, ``joined`` from
the others) that the node API delivers as the ``report`` signal. Every phase
change is signalled to the cluster workflow, which serves the status query.
"""

from __future__ import annotations

import asyncio

from temporalio import workflow
from temporalio.exceptions import ApplicationError
from temporalio.workflow import ActivityCancellationType

with workflow.unsafe.imports_passed_through():
    from models.messages import (
        ConfigureVmInput,
        EnsureVmInput,
        EnsureVmResult,
        NodeReport,
        NodeReportKind,
        NodeResult,
        NodeWorkflowInput,
    )
    from models.state import NodeKind, NodePhase, NodeProgress
    from workflows import vm_steps
    from workflows.policies import VSPHERE_HEARTBEAT, VSPHERE_RETRY

# Signal names, shared with the node API and the cluster workflow.
REPORT_SIGNAL = "report"
PROGRESS_SIGNAL = "node_progress"

# Changes to running workflows, guarded so older histories still replay.
PATCH_BACKGROUND_PROGRESS = "progress-signals-in-background"


def _cancel_requested() -> bool:
    """Whether this workflow was asked to cancel while an activity that waits for its
    own cancellation (the clone) finished anyway: the SDK then hands back the
    activity's result, and the request must still end the workflow."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


@workflow.defn(name="NodeWorkflow")
class NodeWorkflow:
    def __init__(self) -> None:
        self._report: NodeReport | None = None
        self._phase = NodePhase.PENDING
        self._signals: list[asyncio.Task[None]] = []

    @workflow.signal(name=REPORT_SIGNAL)
    def report(self, report: NodeReport) -> None:
        """The node's own report, delivered by the node API. The first one counts."""
        if self._report is None:
            self._report = report

    @workflow.query(name="phase")
    def phase(self) -> NodePhase:
        return self._phase

    async def _progress(self, phase: NodePhase, **fields: str | None) -> None:
        """Tell the cluster's workflow, without waiting: a cancellation that arrives
        while a signal is in flight must reach the step this workflow is on (an
        awaited external signal absorbs it)."""
        self._phase = phase
        parent = workflow.info().parent
        if parent is None:
            return
        progress = NodeProgress(name=self._name, phase=phase, at=workflow.now(), **fields)
        signal = workflow.get_external_workflow_handle(parent.workflow_id).signal(PROGRESS_SIGNAL, progress)
        if workflow.patched(PATCH_BACKGROUND_PROGRESS):
            self._signals.append(asyncio.create_task(signal))
        else:
            await signal

    @workflow.run
    async def run(self, input: NodeWorkflowInput) -> NodeResult:
        node = input.identity
        self._name = node.name
        steps = input.timeouts

        await self._progress(NodePhase.CLONING)
        vm = await workflow.execute_activity(
            "ensure_vm",
            EnsureVmInput(
                identity=node,
                placement=input.placement,
                cpus=input.cpus,
                memory_mb=input.memory_mb,
                bootstrap=input.bootstrap,
            ),
            result_type=EnsureVmResult,
            schedule_to_close_timeout=steps.as_timedelta("clone"),
            heartbeat_timeout=VSPHERE_HEARTBEAT,
            retry_policy=VSPHERE_RETRY,
            # If the cluster is deleted mid-clone, the clone finishes before this
            # workflow ends, so the deletion's sweep finds the VM.
            cancellation_type=ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )

        if _cancel_requested():  # the cluster is being deleted: its sweep takes the VM
            raise asyncio.CancelledError

        await self._progress(NodePhase.CONFIGURING, vm_ref=vm.vm_ref)
        await workflow.execute_activity(
            "configure_vm",
            ConfigureVmInput(vm_ref=vm.vm_ref, name=node.name, cpus=input.cpus, memory_mb=input.memory_mb),
            schedule_to_close_timeout=steps.as_timedelta("configure"),
            heartbeat_timeout=VSPHERE_HEARTBEAT,
            retry_policy=VSPHERE_RETRY,
        )

        await self._progress(NodePhase.POWERING_ON)
        await vm_steps.power_on(vm.vm_ref, node.name, steps)

        await self._progress(NodePhase.WAITING_FOR_IP)
        ip = await vm_steps.wait_for_ip(vm.vm_ref, node.name, steps, input.placement.network)
        if input.load_balancer is not None and (entry := input.load_balancer.containing(ip)):
            raise ApplicationError(
                f"{node.name} got the address {ip}, inside load_balancer.addresses {entry!r}: "
                "MetalLB would hand it to a Service too; keep that range out of the nodes' DHCP scope",
                type="AddressConflict",
                non_retryable=True,
            )

        await self._progress(NodePhase.BOOTSTRAPPING, ip=ip)
        leader = node.kind is NodeKind.LEADER
        expected = NodeReportKind.READY if leader else NodeReportKind.JOINED
        deadline = steps.leader_ready if leader else steps.join
        try:
            await workflow.wait_condition(lambda: self._report is not None, timeout=deadline)
        except TimeoutError:
            raise ApplicationError(
                f"{node.name} ({ip}) did not report {expected.value} within {deadline}s; "
                "see the node's cloud-init log (/var/log/cloud-init-output.log)",
                type="NodeReportTimeout",
                non_retryable=True,
            ) from None
        assert self._report is not None
        if self._report.kind is NodeReportKind.FAILED:
            raise ApplicationError(
                f"{node.name} reported a bootstrap failure: {self._report.message or 'no message'}",
                type="NodeBootstrapFailed",
                non_retryable=True,
            )
        if self._report.address is not None and str(self._report.address) != ip:
            raise ApplicationError(
                f"{node.name} runs Kubernetes on {self._report.address}, but VMware Tools reported "
                f"{ip} on the cluster network's NIC ({input.placement.network or 'the first NIC'})",
                type="AddressMismatch",
                non_retryable=True,
            )
        await self._progress(NodePhase.READY)
        await asyncio.gather(*self._signals)
        return NodeResult(name=node.name, vm_ref=vm.vm_ref, ip=ip)
