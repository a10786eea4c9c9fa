"""A clone that outlives its step's deadline is cancelled in vCenter and waited
for, so no VM appears after the node was given up: for a worker (the cluster is
Ready without it) and for the leader (the create fails and leaves nothing)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pyVim import connect
from pyVmomi import vim, vmodl

from pke_vsphere.contracts.state import ClusterPhase, ClusterStatus, NodePhase
from pke_vsphere.vsphere import inventory, properties, tasks
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import clone_counts, vms_of_cluster
from tests.workers import WorkerFactory

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLONE_STEP = 20  # seconds the spec gives a clone
CLONE_SECONDS = 60.0  # how long vCenter would take


def clone_outcome(stack: Stack, spec_name: str, vm_name: str) -> object:
    """The fault vCenter's clone task to ``vm_name`` ended with."""
    si = stack.sim.connect()
    try:
        placement = inventory.resolve(si, cluster_spec(spec_name).vsphere)
        task = tasks.find_clone(si, placement, vm_name, since=datetime.now(UTC) - timedelta(minutes=10))
        assert task is not None, f"vCenter lists no clone task to {vm_name}"
        info = properties.read(si, task, ["info.state", "info.error"])
        assert info["info.state"] == vim.TaskInfo.State.error, info
        return info["info.error"]
    finally:
        connect.Disconnect(si)


async def create_with_a_late_clone(stack: Stack, name: str, late: str) -> ClusterStatus:
    """A 1 + 1 cluster whose ``late`` node's clone outlives the clone step, settled."""
    stack.sim.set_task_seconds("CloneVM_Task", CLONE_SECONDS, prefix=late)
    spec = cluster_spec(name, masters=1, workers=1, timeouts={"clone": CLONE_STEP})
    await clusters.create(stack.client, spec, stack.task_queue)
    return await wait_until_settled(stack, name, within=120)


async def test_a_worker_clone_past_its_deadline_is_cancelled_and_the_cluster_is_ready_without_it(
    stack: Stack,
) -> None:
    name = unique("late-w")
    late = f"{name}-workers-01"
    status = await create_with_a_late_clone(stack, name, late)

    node = next(n for n in status.nodes if n.name == late)
    assert node.phase is NodePhase.FAILED
    assert "cancelled in vCenter" in (node.last_error or ""), node.last_error
    assert isinstance(clone_outcome(stack, name, late), vmodl.fault.RequestCanceled)
    await asyncio.sleep(2)  # a clone that went on would not end before CLONE_SECONDS anyway
    assert sorted(vms_of_cluster(stack.sim, name)) == [f"{name}-master-01"]
    assert clone_counts(stack.sim)[late] == 1


async def test_a_leader_clone_past_its_deadline_fails_the_create_and_leaves_no_vm(stack: Stack) -> None:
    name = unique("late-l")
    leader = f"{name}-master-01"
    status = await create_with_a_late_clone(stack, name, leader)

    assert status.phase is ClusterPhase.FAILED
    assert "cancelled in vCenter" in (status.error or ""), status.error
    assert isinstance(clone_outcome(stack, name, leader), vmodl.fault.RequestCanceled)
    assert vms_of_cluster(stack.sim, name) == {}


async def test_a_clone_left_running_by_a_dead_worker_is_cancelled_when_its_node_is_given_up(
    stack: Stack, new_worker: WorkerFactory
) -> None:
    """The worker dies right after starting the clone and no worker runs until the
    clone step is over: what runs first then (the provisioning's retry, past its
    clone deadline, or the give-up destroy) finds the clone still running in
    vCenter and cancels it."""
    name = unique("late-k")
    late = f"{name}-workers-01"
    stack.sim.set_task_seconds("CloneVM_Task", CLONE_SECONDS, prefix=late)
    worker = new_worker("late-kill")
    worker.start(crash_at="clone.started@2")
    spec = cluster_spec(name, masters=1, workers=1, timeouts={"clone": CLONE_STEP})
    await clusters.create(stack.client, spec, worker.task_queue)
    await worker.wait_crashed(60)
    await asyncio.sleep(CLONE_STEP + 2)
    worker.start()
    status = await wait_until_settled(stack, name, within=120)

    assert status.phase is ClusterPhase.READY
    assert next(n for n in status.nodes if n.name == late).phase is NodePhase.FAILED
    assert isinstance(clone_outcome(stack, name, late), vmodl.fault.RequestCanceled)
    assert sorted(vms_of_cluster(stack.sim, name)) == [f"{name}-master-01"]
    assert "vm.clone_cancelled" in worker.log.read_text(), worker.tail()
