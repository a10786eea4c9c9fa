"""Scheduled scaling through the CLI and real Temporal Schedules (the dev server;
the time-skipping test server has no schedules)."""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import ScheduleOverlapPolicy

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.state import ClusterPhase
from starter import cli, clusters, schedules
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import vms_of_cluster


async def listed(stack: Stack, cluster: str, within: float = 10) -> list[schedules.ScaleSchedule]:
    """The cluster's schedules once Temporal's list shows one: the list is eventually
    consistent, and under load a schedule made a moment ago is not in it yet."""
    for _ in range(int(within / 0.2)):
        if found := await schedules.list_schedules(stack.client, cluster):
            return found
        await asyncio.sleep(0.2)
    return await schedules.list_schedules(stack.client, cluster)


async def test_a_schedule_made_by_the_cli_scales_the_pool_when_triggered(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("sched")
    monkeypatch.setenv("PKE_VSPHERE_TEMPORAL_TASK_QUEUE", stack.task_queue)
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=1), stack.task_queue)
    assert (await wait_until_settled(stack, name)).phase is ClusterPhase.READY

    args = ["schedule", "add", name, "--pool", "workers", "--size", "3", "--cron", "0 8 * * MON-FRI"]
    assert await cli.run([*args, "--timezone", "Europe/Budapest"], client=stack.client) == 0
    (schedule,) = await listed(stack, name)
    assert (schedule.cluster, schedule.pool, schedule.size) == (name, "workers", 3)
    assert schedule.cron == "0 8 * * MON-FRI" and schedule.timezone == "Europe/Budapest"
    assert schedule.next_runs and schedule.next_runs[0].hour in (6, 7)  # 08:00 Budapest in UTC
    desc = await stack.client.get_schedule_handle(schedule.id).describe()
    assert desc.schedule.policy.overlap is ScheduleOverlapPolicy.SKIP
    assert await cli.run([*args, "--timezone", "Europe/Budapest"], client=stack.client) == 1  # exists

    assert await cli.run(["schedule", "trigger", schedule.id], client=stack.client) == 0
    for _ in range(200):
        if sum("-workers-" in vm for vm in vms_of_cluster(stack.sim, name)) == 3:
            break
        await asyncio.sleep(0.2)
    status = await clusters.status(stack.client, name)
    for _ in range(100):
        status = await clusters.status(stack.client, name)
        if status.pools["workers"] == 3 and status.operation is None:
            break
        await asyncio.sleep(0.2)
    assert status.pools["workers"] == 3
    assert sorted(n.name for n in status.nodes if n.identity.pool == "workers") == [
        f"{name}-workers-01",
        f"{name}-workers-02",
        f"{name}-workers-03",
    ]

    assert await cli.run(["schedule", "pause", schedule.id], client=stack.client) == 0
    assert (await schedules.list_schedules(stack.client, name))[0].paused
    assert await cli.run(["schedule", "unpause", schedule.id], client=stack.client) == 0
    assert not (await schedules.list_schedules(stack.client, name))[0].paused
    capsys.readouterr()
    assert await cli.run(["schedule", "list", name], client=stack.client) == 0
    assert schedule.id in capsys.readouterr().out
    assert await cli.run(["schedule", "delete", schedule.id], client=stack.client) == 0
    assert await schedules.list_schedules(stack.client, name) == []


async def test_schedule_add_refuses_an_unknown_pool_and_creates_nothing(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    name = unique("sched-bad")
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=1), stack.task_queue)
    await wait_until_settled(stack, name)
    args = ["schedule", "add", name, "--pool", "gpu", "--size", "3", "--cron", "0 8 * * *"]
    assert await cli.run(args, client=stack.client) == 1
    assert "has no pool 'gpu'" in capsys.readouterr().out
    assert (
        await cli.run([*args[:4], "workers", "--size", "-2", "--cron", "0 8 * * *"], client=stack.client) == 2
    )
    assert "size: Input should be greater than or equal to 0" in capsys.readouterr().out
    assert await schedules.list_schedules(stack.client, name) == []


async def test_cli_scale_and_delete_show_progress_and_outcome(
    stack: Stack, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("cli-ops")
    monkeypatch.setenv("PKE_VSPHERE_TEMPORAL_TASK_QUEUE", stack.task_queue)
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=1), stack.task_queue)
    await wait_until_settled(stack, name)
    capsys.readouterr()

    assert (
        await cli.run(["scale", name, "--pool", "workers", "--size", "2", "--wait"], client=stack.client) == 0
    )
    out = capsys.readouterr().out
    assert f"{name}-workers-02" in out  # the new node shows up in the progress
    assert '"added": [\n' in out and f'"{name}-workers-02"' in out

    assert await cli.run(["scale", name, "--pool", "nope", "--size", "2"], client=stack.client) == 1
    assert "has no pool 'nope'" in capsys.readouterr().out

    assert await cli.run(["delete", name, "--wait"], client=stack.client) == 0
    out = capsys.readouterr().out
    assert f"delete {name}: done" in out
    assert vms_of_cluster(stack.sim, name) == {}
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    assert (await handle.describe()).status is not None
