"""VM steps that more than one workflow takes, with one set of timeouts and
retries: power a VM on, and wait for VMware Tools to report its address."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from models.messages import PowerOnInput, PowerOnResult, WaitForIpInput, WaitForIpResult
    from models.spec import Timeouts
    from workflows.policies import VSPHERE_HEARTBEAT, VSPHERE_RETRY


async def power_on(vm_ref: str, name: str, steps: Timeouts) -> PowerOnResult:
    result: PowerOnResult = await workflow.execute_activity(
        "power_on_vm",
        PowerOnInput(vm_ref=vm_ref, name=name),
        result_type=PowerOnResult,
        schedule_to_close_timeout=steps.as_timedelta("power_on"),
        heartbeat_timeout=VSPHERE_HEARTBEAT,
        retry_policy=VSPHERE_RETRY,
    )
    return result


async def wait_for_ip(vm_ref: str, name: str, steps: Timeouts) -> str:
    result: WaitForIpResult = await workflow.execute_activity(
        "wait_for_vm_ip",
        WaitForIpInput(vm_ref=vm_ref, name=name, timeout_seconds=steps.ip),
        result_type=WaitForIpResult,
        # A retry after a crash gets the rest of the step's deadline, not a new one.
        schedule_to_close_timeout=steps.as_timedelta("ip") + timedelta(seconds=30),
        heartbeat_timeout=VSPHERE_HEARTBEAT,
        retry_policy=VSPHERE_RETRY,
    )
    return result.ip
