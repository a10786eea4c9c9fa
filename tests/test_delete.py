"""Delete: nothing of the cluster is left in vCenter, its tokens stop working,
its schedules are gone, its workflow completed; also in the middle of a create."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import httpx
from temporalio.client import WorkflowExecutionStatus

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.commands import DeleteOutcome
from pke_vsphere.contracts.protocol import NODE_KEY_HEADER
from pke_vsphere.contracts.state import ClusterPhase
from pke_vsphere.pki.node_tokens import NodeTokenSigner, load_signing_key
from sim.nodes import Behaviour
from starter import clusters, schedules
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import destroy_planted, plant_marked_vm, vms_of_cluster


async def wait_for(condition, within: float = 30) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def cluster_workflow_status(stack: Stack, name: str) -> WorkflowExecutionStatus | None:
    return (await stack.client.get_workflow_handle(ids.cluster_workflow_id(name)).describe()).status


async def test_delete_leaves_no_vm_no_token_no_schedule(stack: Stack, key_file: Path) -> None:
    name = unique("del")
    await clusters.create(stack.client, cluster_spec(name, masters=3, workers=2), stack.task_queue)
    status = await wait_until_settled(stack, name)
    assert status.phase is ClusterPhase.READY
    schedule_id = await schedules.add(
        stack.client, cluster=name, pool="workers", size=4, cron="0 8 * * MON-FRI", timezone="UTC",
        task_queue=stack.task_queue,
    )  # fmt: skip
    worker = next(n.identity for n in status.nodes if n.identity.kind.value == "worker")
    token = NodeTokenSigner(load_signing_key(key_file)).sign(worker, timedelta(minutes=10))
    async with httpx.AsyncClient(base_url=stack.node_api_url) as api:
        headers = {"Authorization": f"Bearer {token}", NODE_KEY_HEADER: "k" * 43}
        outcome: DeleteOutcome = await (await clusters.delete(stack.client, name, stack.task_queue)).result()

        assert sorted(outcome.destroyed) == sorted(n.name for n in status.nodes)
        assert outcome.schedules_removed == [schedule_id]
        assert vms_of_cluster(stack.sim, name) == {}
        assert await cluster_workflow_status(stack, name) is WorkflowExecutionStatus.COMPLETED
        assert await schedules.list_schedules(stack.client, name) == []
        for path in ("/v1/nodes/self/join", "/v1/nodes/self/bootstrap"):
            assert (await api.get(path, headers=headers)).status_code == 401


async def test_delete_during_create_leaves_nothing(stack: Stack) -> None:
    name = unique("del-early")
    # Workers take long to boot, so the delete lands while the create is launching them.
    stack.nodes.boot_delays[f"{name}-workers-*"] = 30
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=3), stack.task_queue)

    async def workers_cloned() -> bool:
        return sum("-workers-" in vm for vm in vms_of_cluster(stack.sim, name)) == 3

    await wait_for(workers_cloned, within=60)
    outcome = await (await clusters.delete(stack.client, name, stack.task_queue)).result()

    assert len(outcome.destroyed) == 4
    assert vms_of_cluster(stack.sim, name) == {}
    assert await cluster_workflow_status(stack, name) is WorkflowExecutionStatus.COMPLETED
    for node in range(1, 4):
        handle = stack.client.get_workflow_handle(ids.node_workflow_id(name, f"{name}-workers-{node:02d}"))
        assert (await handle.describe()).status is WorkflowExecutionStatus.CANCELED
    # The workers' join tokens, minted ahead of them, left with their cancelled
    # workflows: none waits in the cluster for its expiry.
    kube = stack.nodes.cluster_apis[name]
    created = [c.name for c in kube.objects.calls if c.verb == "create" and c.resource == "secrets"]
    assert len(created) == 3
    assert not [s for s in kube.objects.secrets if s.startswith("bootstrap-token-")]


async def test_delete_while_the_leader_is_being_cloned_leaves_nothing(stack: Stack) -> None:
    name = unique("del-first")
    stack.nodes.behaviours[f"{name}-*"] = Behaviour.SILENT
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=1), stack.task_queue)

    async def leader_started() -> bool:
        status = await clusters.status(stack.client, name)
        return status.phase is ClusterPhase.STARTING_LEADER

    await wait_for(leader_started)
    outcome = await (await clusters.delete(stack.client, name, stack.task_queue)).result()
    await asyncio.sleep(1)  # anything still cloning would show up now
    assert vms_of_cluster(stack.sim, name) == {}
    assert outcome.cluster == name


async def test_delete_of_a_failed_create_sweeps_what_is_left(stack: Stack) -> None:
    name = unique("del-failed")
    stack.nodes.behaviours[f"{name}-master-01"] = Behaviour.FAIL
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=1), stack.task_queue)
    assert (await wait_until_settled(stack, name)).phase is ClusterPhase.FAILED
    assert vms_of_cluster(stack.sim, name) == {}  # the failed leader's VM went with it
    plant_marked_vm(stack.sim, name, f"{name}-leftover")  # e.g. from a crashed earlier run
    # Another pke-vsphere on the same vCenter with a cluster of the same name.
    theirs = plant_marked_vm(stack.sim, name, f"{name}-theirs", installation="another-site")

    outcome = await (await clusters.delete(stack.client, name, stack.task_queue)).result()
    assert outcome.destroyed == [f"{name}-leftover"]
    assert list(vms_of_cluster(stack.sim, name)) == [f"{name}-theirs"]
    destroy_planted(stack.sim, theirs)


async def test_delete_destroys_the_recorded_vms_while_its_sweep_looks_for_the_rest(stack: Stack) -> None:
    """The nodes' VMs are not kept waiting for the sweep of every VM's markers (a
    second at a thousand VMs): their batch is scheduled before the sweep's result is
    in, and what only the sweep finds goes after it; another installation's is kept."""
    name = unique("del-sweeping")
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=2), stack.task_queue)
    status = await wait_until_settled(stack, name)
    assert status.phase is ClusterPhase.READY
    plant_marked_vm(stack.sim, name, f"{name}-leftover")
    theirs = plant_marked_vm(stack.sim, name, f"{name}-theirs", installation="another-site")

    handle = await clusters.delete(stack.client, name, stack.task_queue)
    outcome = await handle.result()
    assert outcome.destroyed == sorted([*(n.name for n in status.nodes), f"{name}-leftover"])
    assert list(vms_of_cluster(stack.sim, name)) == [f"{name}-theirs"]
    destroy_planted(stack.sim, theirs)

    history = await stack.client.get_workflow_handle(ids.cluster_workflow_id(name)).fetch_history()
    kinds: dict[int, str] = {}
    steps: list[tuple[str, str]] = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            kind = event.activity_task_scheduled_event_attributes.activity_type.name
            if kind in ("find_cluster_vms", "destroy_vms"):
                kinds[event.event_id] = kind
                steps.append(("scheduled", kind))
        elif event.HasField("activity_task_completed_event_attributes"):
            scheduled = event.activity_task_completed_event_attributes.scheduled_event_id
            if scheduled in kinds:
                steps.append(("completed", kinds[scheduled]))
    assert steps.index(("scheduled", "destroy_vms")) < steps.index(("completed", "find_cluster_vms"))
    # One batch for the recorded VMs, one for the leftover the sweep found.
    assert steps.count(("scheduled", "destroy_vms")) == 2


async def test_scale_after_delete_is_refused(stack: Stack) -> None:
    name = unique("del-then-scale")
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=1), stack.task_queue)
    await wait_until_settled(stack, name)
    await (await clusters.delete(stack.client, name, stack.task_queue)).result()
    handle = await clusters.scale(stack.client, name, "workers", 3, stack.task_queue)
    try:
        await handle.result()
    except Exception as exc:
        assert "is not running" in str(exc.__cause__)
    else:
        raise AssertionError("a scale of a deleted cluster succeeded")
