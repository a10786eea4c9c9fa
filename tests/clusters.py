"""Helpers for tests that create clusters."""

from __future__ import annotations

import asyncio
from typing import Any

from pyVim import connect
from pyVmomi import vim
from temporalio.client import WorkflowHandle

from pke_vsphere.contracts.commands import ScaleOutcome, ScaleRequest
from pke_vsphere.contracts.protocol import Update
from pke_vsphere.contracts.state import ClusterPhase, ClusterStatus
from sim.vcenter import Simulator
from starter import clusters
from tests.conftest import Stack, cluster_spec, unique_vip
from tests.etcd_server import CREDENTIAL

SETTLED = {ClusterPhase.READY, ClusterPhase.FAILED}


async def wait_until_settled(stack: Stack, name: str, within: float = 90) -> ClusterStatus:
    """Poll the status query until the cluster is Ready or Failed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: ClusterStatus | None = None
    while loop.time() < deadline:
        try:
            last = await clusters.status(stack.client, name)
        except Exception:
            last = None
        if last is not None and last.phase in SETTLED:
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"cluster {name} did not settle within {within}s: {last!r}")


async def create_ready(stack: Stack, name: str, **spec: Any) -> ClusterStatus:
    """Create a cluster from ``cluster_spec(name, **spec)`` and wait until it is Ready."""
    await clusters.create(stack.client, cluster_spec(name, **spec), stack.task_queue)
    status = await wait_until_settled(stack, name)
    assert status.phase is ClusterPhase.READY, status.error
    return status


async def scale(handle: WorkflowHandle[Any, Any], pool: str, size: int) -> ScaleOutcome:
    outcome: ScaleOutcome = await handle.execute_update(
        Update.SCALE_POOL, ScaleRequest(pool=pool, size=size), result_type=ScaleOutcome
    )
    return outcome


def removal_times(sim: Simulator) -> dict[str, float]:
    """When vCenter removed each VM, from its own event log."""
    si = sim.connect()
    try:
        events = si.content.eventManager.QueryEvents(
            vim.event.EventFilterSpec(eventTypeId=["VmRemovedEvent"], maxCount=1000)
        )
        return {e.vm.name: e.createdTime.timestamp() for e in events if e.vm is not None}
    finally:
        connect.Disconnect(si)


def external_etcd_control_plane(stack: Stack, **etcd: Any) -> dict[str, Any]:
    """A control plane of the external_etcd topology on the tests' etcd, with ``etcd`` changes."""
    return {
        "vip": unique_vip(),
        "topology": "external_etcd",
        "external_etcd": {"endpoints": stack.etcd.endpoints, "credential": CREDENTIAL, **etcd},
    }
