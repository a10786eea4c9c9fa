"""The vCenter task cap holds across workers: two worker processes with a cap
of 4 between them never have more than 4 tasks in flight in vCenter (read from
vCenter's own task list), and waiting for a slot makes no activity retry."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque

import pytest
from pyVim import connect
from temporalio.api.enums.v1 import EventType

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.state import ClusterPhase, ClusterStatus, NodePhase
from starter import clusters, node_detail
from starter.progress import console, render
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import tasks_running, vms_of_cluster
from tests.workers import WorkerFactory

pytestmark = pytest.mark.asyncio(loop_scope="session")

CAP = 4
CLONES = 20
CLONE_SECONDS = 3.0
# A count is taken once it held this long: this cluster's clones take 3 s, so a
# task past the cap would hold, while a clone of an earlier test's cluster still
# at work on the session's worker (every clone counts: see tasks_running) takes
# the simulator's default half-second.
HELD_FOR = 1.2
# The simulated nodes report their addresses with ReconfigVM_Task, as VMware
# Tools would; those are not the orchestrator's tasks.
ORCHESTRATOR_TASKS = ("CloneVM_Task", "PowerOnVM_Task", "PowerOffVM_Task", "Destroy_Task")


async def queued_as_shown(stack: Stack, name: str, settled: asyncio.Future[ClusterStatus]) -> str:
    """The status table's lines for nodes queued for vCenter, while the create runs."""
    lines: set[str] = set()
    while not settled.done():
        status = await clusters.status(stack.client, name)
        with console.capture() as captured:
            console.print(render(*await node_detail.refine(stack.client, status)))
        lines |= {line for line in captured.get().splitlines() if "queued" in line}
        await asyncio.sleep(1)
    return "\n".join(sorted(lines))


async def test_two_workers_with_a_cap_of_four_never_run_more_than_four_tasks(
    stack: Stack, new_worker: WorkerFactory
) -> None:
    name = unique("cap")
    queue = f"cap-{uuid.uuid4()}"
    stack.sim.set_task_seconds("CloneVM_Task", CLONE_SECONDS, prefix=f"{name}-")
    settings = {"PKE_VSPHERE_VCENTER_MAX_CONCURRENT_TASKS": str(CAP)}
    workers = [new_worker(f"worker-{i}", task_queue=queue, settings=settings) for i in range(2)]
    for worker in workers:
        worker.start()
    spec = cluster_spec(name, masters=1, workers=CLONES - 1)
    await clusters.create(stack.client, spec, queue)

    si = stack.sim.connect()
    most = 0
    samples: deque[tuple[float, int]] = deque()
    loop = asyncio.get_running_loop()
    settled = asyncio.ensure_future(wait_until_settled(stack, name, within=180))
    shown = asyncio.ensure_future(queued_as_shown(stack, name, settled))
    try:
        while not settled.done():
            running = tasks_running(stack.sim, si, vm_prefix=f"{name}-")
            samples.append((loop.time(), sum(running[m] for m in ORCHESTRATOR_TASKS)))
            while samples[-1][0] - samples[0][0] > HELD_FOR:
                most = max(most, min(count for _, count in samples))
                samples.popleft()
            await asyncio.sleep(0.1)
    finally:
        connect.Disconnect(si)
    status = await settled
    # `pke-vsphere status` showed nodes waiting for a slot as such.
    assert "(queued for vCenter)" in await shown

    assert status.phase is ClusterPhase.READY, status.error
    assert [n.phase for n in status.nodes] == [NodePhase.READY] * CLONES
    assert len(vms_of_cluster(stack.sim, name)) == CLONES
    assert most == CAP, f"at most {most} vCenter tasks at once, for a cap of {CAP}"
    # Both workers cloned (the cap is shared, not one worker doing all the work).
    for worker in workers:
        assert "vm.cloning" in worker.log.read_text(), worker.tail()
    # Waiting for a slot heartbeats: no activity attempt timed out and was retried.
    for node in status.nodes:
        history = await stack.client.get_workflow_handle(
            ids.node_workflow_id(name, node.name)
        ).fetch_history()
        attempts = [
            e.activity_task_started_event_attributes.attempt
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        ]
        assert attempts and set(attempts) == {1}, f"{node.name}: attempts {attempts}"
