"""The worker is killed with SIGKILL at named points of create, scale and delete
(runtime/crashpoints.py); a new worker process finishes each operation, and
vCenter then holds exactly the VMs the cluster lists: no duplicate, no orphan.

Each point is a real crash of a real ``worker.py`` process between a vCenter or
Kubernetes side effect and the moment its result is recorded in Temporal. The
points of one operation run side by side, each with its own cluster, worker
process and task queue, to keep the suite short.
"""

from __future__ import annotations

import asyncio
import re
from functools import partial

import pytest
from temporalio.client import WorkflowExecutionStatus

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.state import ClusterPhase
from pke_vsphere.runtime import crashpoints
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import ROOT
from tests.reliability import Run, assert_ready_and_exact
from tests.workers import WorkerFactory, WorkerProcess, run_all

pytestmark = pytest.mark.asyncio(loop_scope="session")

CRASH_WITHIN = 60  # seconds for the operation to reach its crash point
FINISH_WITHIN = 150  # seconds for a new worker to finish it

CREATE_POINTS = [
    "pki.generated",
    "clone.started",
    "clone.finished@2",
    "clone.started@2",
    "ip.reported@2",
    "ip.reported",
    "join_token.installed",
    "node_workflows.started",
]
SCALE_UP_POINTS = ["clone.started", "ip.reported"]
SCALE_DOWN_POINTS = ["drain.finished", "kube_node.deleted", "power_off.started", "destroy.finished"]
DELETE_POINTS = ["destroy.started", "destroy.finished@2", "schedules.deleted"]


async def test_the_matrix_names_only_real_points_and_at_least_ten() -> None:
    points = CREATE_POINTS + SCALE_UP_POINTS + SCALE_DOWN_POINTS + DELETE_POINTS
    assert {p.split("@")[0] for p in points} <= crashpoints.POINTS
    assert len(set(points)) >= 10


async def test_every_crash_point_is_in_the_code_and_a_typo_is_refused() -> None:
    sources = "\n".join(path.read_text() for path in (ROOT / "activities").glob("*.py"))
    reached = set(re.findall(r'crashpoints\.reach\("([a-z_.]+)"\)', sources))
    tasks = {f"{name}.started" for name in re.findall(r'_run_task\([^"]*"([a-z_]+)"', sources)}
    assert reached | tasks == crashpoints.POINTS
    with pytest.raises(ValueError, match=r"unknown crash point 'clone\.strated'"):
        crashpoints._parse("clone.strated")
    assert crashpoints._parse("pki.generated, clone.started@3") == {"pki.generated": 1, "clone.started": 3}


async def ready_cluster(stack: Stack, worker: WorkerProcess, name: str, workers: int) -> None:
    """A cluster made by a worker without crash points, which is then stopped."""
    worker.start()
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=workers), worker.task_queue)
    status = await wait_until_settled(stack, name, within=FINISH_WITHIN)
    assert status.phase is ClusterPhase.READY, status.error
    worker.stop()


async def test_create_survives_a_kill_at_every_point(stack: Stack, new_worker: WorkerFactory) -> None:
    async def case(point: str) -> None:
        worker = new_worker(f"create-{point}")
        run = Run("SIGKILL", "create", point, unique("kc"))
        worker.start(crash_at=point)
        await clusters.create(
            stack.client, cluster_spec(run.cluster, masters=1, workers=2), worker.task_queue
        )
        await worker.wait_crashed(CRASH_WITHIN)
        worker.start()
        status = await wait_until_settled(stack, run.cluster, within=FINISH_WITHIN)
        assert_ready_and_exact(stack, run, status, size=3)

    await run_all([partial(case, p) for p in CREATE_POINTS])


async def test_scale_survives_a_kill_at_every_point(stack: Stack, new_worker: WorkerFactory) -> None:
    async def case(point: str, size: int) -> None:
        direction = "scale-up" if size > 2 else "scale-down"
        worker = new_worker(f"{direction}-{point}")
        run = Run("SIGKILL", direction, point, unique("ks"))
        await ready_cluster(stack, worker, run.cluster, workers=2)
        worker.start(crash_at=point)
        handle = await clusters.scale(stack.client, run.cluster, "workers", size, worker.task_queue)
        await worker.wait_crashed(CRASH_WITHIN)
        worker.start()
        outcome = await asyncio.wait_for(handle.result(), FINISH_WITHIN)
        assert outcome.requested == size and not outcome.failed, outcome
        status = await clusters.status(stack.client, run.cluster)
        assert_ready_and_exact(stack, run, status, size=1 + size)

    await run_all(
        [partial(case, p, 3) for p in SCALE_UP_POINTS] + [partial(case, p, 1) for p in SCALE_DOWN_POINTS]
    )


async def test_delete_survives_a_kill_at_every_point(stack: Stack, new_worker: WorkerFactory) -> None:
    async def case(point: str) -> None:
        worker = new_worker(f"delete-{point}")
        run = Run("SIGKILL", "delete", point, unique("kd"))
        await ready_cluster(stack, worker, run.cluster, workers=2)
        worker.start(crash_at=point)
        handle = await clusters.delete(stack.client, run.cluster, worker.task_queue)
        await worker.wait_crashed(CRASH_WITHIN)
        worker.start()
        outcome = await asyncio.wait_for(handle.result(), FINISH_WITHIN)
        described = await stack.client.get_workflow_handle(ids.cluster_workflow_id(run.cluster)).describe()
        run.finished = described.status is WorkflowExecutionStatus.COMPLETED
        run.check(stack.sim, None).record()
        assert run.ok, f"{run.describe()}; outcome {outcome}"
        assert len(outcome.destroyed) >= 1, outcome

    await run_all([partial(case, p) for p in DELETE_POINTS])


async def destroy_steps(stack: Stack, cluster: str) -> dict[str, dict[str, str | None]]:
    """Each VM's step as the delete's ``destroy_vms`` last heartbeat reached Temporal."""
    described = await stack.client.get_workflow_handle(ids.cluster_workflow_id(cluster)).describe()
    for pending in described.raw_description.pending_activities:
        if pending.activity_type.name == "destroy_vms" and pending.heartbeat_details.payloads:
            (details,) = await stack.client.data_converter.decode(pending.heartbeat_details.payloads)
            return dict(details["items"])
    return {}


async def test_a_worker_killed_while_a_batch_destroys_resumes_each_vms_task(
    stack: Stack, new_worker: WorkerFactory
) -> None:
    """The delete's batch heartbeats every VM's Destroy_Task; a worker killed while
    they run is followed by one that waits for each of those tasks, not a second
    destroy of any VM."""
    worker = new_worker("delete-batch")
    run = Run("SIGKILL", "delete", "every destroy in flight", unique("kb"))
    await ready_cluster(stack, worker, run.cluster, workers=3)
    stack.sim.set_task_seconds("Destroy_Task", 40, prefix=run.cluster)
    worker.start()
    handle = await clusters.delete(stack.client, run.cluster, worker.task_queue)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CRASH_WITHIN
    while True:
        steps = await destroy_steps(stack, run.cluster)
        if len(steps) == 4 and all(s.get("method") == "Destroy_Task" for s in steps.values()):
            break
        assert loop.time() < deadline, f"not every destroy was in flight: {steps}\n{worker.tail()}"
        await asyncio.sleep(0.5)
    worker.kill()
    before = worker.log.read_text(errors="replace").count("vcenter.earlier_task_resumed")
    worker.start()
    outcome = await asyncio.wait_for(handle.result(), FINISH_WITHIN)
    assert len(outcome.destroyed) == 4, outcome
    resumed = [
        line
        for line in worker.log.read_text(errors="replace").splitlines()
        if "vcenter.earlier_task_resumed" in line
    ]
    assert len(resumed) - before == 4 and all("Destroy_Task" in line for line in resumed), worker.tail()
    run.finished = True
    run.check(stack.sim, None).record()
    assert run.ok, run.describe()
