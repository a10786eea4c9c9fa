"""Scaling on the real Temporal server, the real simulator and the stand-in
Kubernetes API: the right VMs after each step, removals drained first."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle, WorkflowUpdateFailedError

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.commands import AddPoolRequest, RemovePoolRequest, ScaleOutcome, ScaleRequest
from pke_vsphere.contracts.protocol import Query, Update
from pke_vsphere.contracts.spec import NodePoolSpec
from pke_vsphere.contracts.state import ClusterPhase, ClusterStatus, NodePhase
from starter import clusters
from tests.clusters import removal_times, scale, wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import vms_of_cluster


async def ready_cluster(
    stack: Stack, name: str, masters: int = 1, workers: int = 2
) -> WorkflowHandle[Any, Any]:
    await clusters.create(
        stack.client, cluster_spec(name, masters=masters, workers=workers), stack.task_queue
    )
    status = await wait_until_settled(stack, name)
    assert status.phase is ClusterPhase.READY, status.error
    return stack.client.get_workflow_handle(ids.cluster_workflow_id(name))


def worker_names(name: str, *indices: int) -> list[str]:
    return [f"{name}-workers-{i:02d}" for i in indices]


async def test_scale_workers_2_5_2_drains_before_destroying(stack: Stack) -> None:
    name = unique("scale")
    handle = await ready_cluster(stack, name)

    up = await scale(handle, "workers", 5)
    assert up.added == worker_names(name, 3, 4, 5) and not up.failed
    vms = vms_of_cluster(stack.sim, name)
    assert sorted(vms) == [f"{name}-master-01", *worker_names(name, 1, 2, 3, 4, 5)]
    kube = stack.nodes.cluster_apis[name]
    assert set(worker_names(name, 1, 2, 3, 4, 5)) <= set(kube.objects.nodes)

    down = await scale(handle, "workers", 2)
    assert sorted(down.removed) == worker_names(name, 3, 4, 5)  # the newest went
    assert not down.warnings
    vms = vms_of_cluster(stack.sim, name)
    assert sorted(vms) == [f"{name}-master-01", *worker_names(name, 1, 2)]
    assert set(kube.objects.nodes) == {f"{name}-master-01", *worker_names(name, 1, 2)}

    removed_at = removal_times(stack.sim)
    for node in worker_names(name, 3, 4, 5):
        calls = [c for c in kube.objects.calls if c.name == node or c.name.startswith(f"default/app-{node}-")]
        verbs = [c.verb for c in calls]
        assert verbs[0] == "cordon" and verbs[-1] == "delete", verbs
        assert verbs.count("evict") == stack.nodes.pods_per_worker, verbs
        assert max(c.at for c in calls) <= removed_at[node], f"{node}'s VM went before Kubernetes let go"

    status: ClusterStatus = await handle.query(Query.STATUS, result_type=ClusterStatus)
    assert status.pools["workers"] == 2
    assert [n.name for n in status.nodes if n.identity.pool == "workers"] == worker_names(name, 1, 2)
    assert all(n.phase is NodePhase.READY for n in status.nodes)


async def test_a_pod_held_by_a_disruption_budget_delays_removal_then_it_proceeds(stack: Stack) -> None:
    name = unique("pdb")
    await clusters.create(
        stack.client, cluster_spec(name, masters=1, workers=2, drain={"timeout_seconds": 3}), stack.task_queue
    )
    assert (await wait_until_settled(stack, name)).phase is ClusterPhase.READY
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    kube = stack.nodes.cluster_apis[name]
    held = f"default/app-{name}-workers-02-1"
    kube.objects.protected.add(held)

    outcome = await scale(handle, "workers", 1)
    assert outcome.removed == worker_names(name, 2)
    assert len(outcome.warnings) == 1
    assert (
        "drain timed out after 3s with 1 pod(s) left" in outcome.warnings[0] and held in outcome.warnings[0]
    )
    assert next(c.verb for c in kube.objects.calls if c.name == held) == "eviction-refused"
    assert sorted(vms_of_cluster(stack.sim, name)) == [f"{name}-master-01", *worker_names(name, 1)]


async def test_add_and_remove_a_pool(stack: Stack) -> None:
    name = unique("pools")
    handle = await ready_cluster(stack, name, workers=1)
    pool = NodePoolSpec(name="gpu", role="worker", count=2, cpus=8, memory_mb=16384)
    added: ScaleOutcome = await handle.execute_update(
        Update.ADD_POOL, AddPoolRequest(pool=pool), result_type=ScaleOutcome
    )
    assert added.added == [f"{name}-gpu-01", f"{name}-gpu-02"]
    vms = vms_of_cluster(stack.sim, name)
    assert vms[f"{name}-gpu-01"]["config.hardware.numCPU"] == 8
    assert vms[f"{name}-gpu-02"]["config.hardware.memoryMB"] == 16384

    removed: ScaleOutcome = await handle.execute_update(
        Update.REMOVE_POOL, RemovePoolRequest(pool="gpu"), result_type=ScaleOutcome
    )
    assert sorted(removed.removed) == [f"{name}-gpu-01", f"{name}-gpu-02"]
    status: ClusterStatus = await handle.query(Query.STATUS, result_type=ClusterStatus)
    assert "gpu" not in status.pools
    assert sorted(vms_of_cluster(stack.sim, name)) == [f"{name}-master-01", f"{name}-workers-01"]


async def test_masters_grow_1_to_3_behind_the_vip(stack: Stack) -> None:
    name = unique("grow-cp")
    spec = cluster_spec(name, masters=3, workers=0)
    spec = spec.model_copy(update={"pools": [spec.pools[0].model_copy(update={"count": 1}), spec.pools[1]]})
    await clusters.create(stack.client, spec, stack.task_queue)
    assert (await wait_until_settled(stack, name)).phase is ClusterPhase.READY
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    outcome = await scale(handle, "master", 3)
    assert outcome.added == [f"{name}-master-02", f"{name}-master-03"] and not outcome.failed
    kube = stack.nodes.cluster_apis[name]
    assert {f"{name}-master-02", f"{name}-master-03"} <= set(kube.objects.nodes)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await scale(handle, "master", 1)
    assert "removing masters is not supported yet" in str(info.value.cause)


BAD_REQUESTS = [
    ("unknown pool", Update.SCALE_POOL, ScaleRequest(pool="nope", size=3), "has no pool 'nope'"),
    (
        "even masters",
        Update.SCALE_POOL,
        ScaleRequest(pool="master", size=2),
        "a master pool has 1, 3 or 5 nodes (etcd needs an odd quorum), not 2",
    ),
    (
        "grow masters without VIP",
        Update.SCALE_POOL,
        ScaleRequest(pool="master", size=3),
        "needs control_plane.vip",
    ),
    (
        "second master pool",
        Update.ADD_POOL,
        AddPoolRequest(pool=NodePoolSpec(name="m2", role="master", count=1)),
        "exactly one master pool",
    ),
    (
        "existing pool",
        Update.ADD_POOL,
        AddPoolRequest(pool=NodePoolSpec(name="workers", role="worker", count=1)),
        "already has a pool 'workers'",
    ),
    (
        "remove master pool",
        Update.REMOVE_POOL,
        RemovePoolRequest(pool="master"),
        "master pool cannot be removed",
    ),
    ("remove unknown pool", Update.REMOVE_POOL, RemovePoolRequest(pool="gpu"), "has no pool 'gpu'"),
]


@pytest.fixture(scope="module")
async def small_cluster(stack: Stack) -> str:
    name = unique("refuse")
    spec = cluster_spec(name, masters=1, workers=1)
    await clusters.create(stack.client, spec, stack.task_queue)
    assert (await wait_until_settled(stack, name)).phase is ClusterPhase.READY
    return name


@pytest.mark.parametrize(
    ("case", "update", "request_", "message"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
async def test_invalid_requests_are_refused_with_the_reason_and_change_nothing(
    stack: Stack, small_cluster: str, case: str, update: str, request_: object, message: str
) -> None:
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(small_cluster))
    before = await handle.query(Query.STATUS, result_type=ClusterStatus)
    history_before = len([e async for e in handle.fetch_history_events()])
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(update, request_, result_type=ScaleOutcome)
    assert message in str(info.value.cause)
    after = await handle.query(Query.STATUS, result_type=ClusterStatus)
    assert after.model_dump(exclude={"operation"}) == before.model_dump(exclude={"operation"})
    # A refused update is not written to history.
    assert len([e async for e in handle.fetch_history_events()]) == history_before


async def test_a_negative_size_is_refused_by_the_request_model(stack: Stack, small_cluster: str) -> None:
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(small_cluster))
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await handle.execute_update(
            Update.SCALE_POOL, {"pool": "workers", "size": -1}, result_type=ScaleOutcome
        )
    assert "invalid ScaleRequest: size: Input should be greater than or equal to 0" in str(info.value.cause)


async def test_a_scale_during_create_waits_for_the_create_then_runs(stack: Stack) -> None:
    name = unique("queued")
    stack.nodes.boot_delays[f"{name}-master-01"] = 2.0
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=1), stack.task_queue)
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    for _ in range(100):
        try:
            if (
                await handle.query(Query.STATUS, result_type=ClusterStatus)
            ).phase is ClusterPhase.STARTING_LEADER:
                break
        except Exception:  # noqa: S110 - not started yet
            pass
        await asyncio.sleep(0.05)

    outcome = await scale(handle, "workers", 2)  # sent while the leader boots

    status: ClusterStatus = await handle.query(Query.STATUS, result_type=ClusterStatus)
    assert outcome.previous == 1 and outcome.added == [f"{name}-workers-02"]
    by_name = {n.name: n for n in status.nodes}
    first, added = by_name[f"{name}-workers-01"], by_name[f"{name}-workers-02"]
    assert status.ready_at is not None and added.powered_on_at is not None
    assert added.powered_on_at > status.ready_at  # it ran after the create finished
    assert first.phase is added.phase is NodePhase.READY


async def test_concurrent_scales_run_one_after_the_other(stack: Stack) -> None:
    name = unique("serial")
    handle = await ready_cluster(stack, name, workers=1)
    up, down = await asyncio.gather(scale(handle, "workers", 3), scale(handle, "workers", 2))
    first, second = (up, down) if up.previous == 1 else (down, up)
    assert first.previous == 1
    assert second.previous == first.requested  # the second saw the first's result
    final = len(vms_of_cluster(stack.sim, name)) - 1
    assert final == second.requested


async def test_scale_workflow_reports_why_a_scale_was_refused(stack: Stack, small_cluster: str) -> None:
    handle = await clusters.scale(stack.client, small_cluster, "gpu", 2, stack.task_queue)
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    assert f"cluster {small_cluster}: cluster {small_cluster} has no pool 'gpu'" in str(info.value.cause)
