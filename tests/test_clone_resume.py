"""A worker killed while a clone is in flight in vCenter, with clones as long as
a real vCenter's (30 s here): the retry resumes that clone (named in the last
heartbeat, or found through vCenter's own event chain when no heartbeat got
through), never clones twice and gives no node up.

Each case is a real ``worker.py`` process, SIGKILLed right after the clone
started (a crash point, before its first heartbeat can reach Temporal), after
two or more heartbeats, or shortly before the clone ends; for the leader and for
a worker. The cases run side by side, each with its own cluster and worker.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import partial

import pytest

from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import clone_counts, clone_started_at, vms_of_cluster
from tests.reliability import Run, assert_ready_and_exact
from tests.workers import WorkerFactory, run_all

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLONE_SECONDS = 30.0
# The session's simulator varies each duration by up to this fraction either way
# (sim.vcenter.start's default).
JITTER = 0.2
AFTER_HEARTBEATS = 10.0  # heartbeats go out about every 8 s (80 % of the 10 s timeout)
JUST_BEFORE = CLONE_SECONDS * (1 - JITTER) - 2  # before even the quickest clone ends
FINISH_WITHIN = 150


async def clone_start(stack: Stack, vm_name: str, within: float = 60) -> datetime:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (started := clone_started_at(stack.sim, vm_name)) is None:
        assert loop.time() < deadline, f"no clone of {vm_name} started within {within}s"
        await asyncio.sleep(0.2)
    return started


async def test_a_worker_killed_mid_clone_resumes_it_without_a_second_clone(
    stack: Stack, new_worker: WorkerFactory
) -> None:
    async def case(role: str, kill: str | float) -> None:
        when = kill if isinstance(kill, str) else f"{kill:.0f}s into the clone"
        run = Run("SIGKILL", "create", f"{role} clone, {when}", unique("kr"))
        node = f"{run.cluster}-master-01" if role == "leader" else f"{run.cluster}-workers-01"
        stack.sim.set_task_seconds("CloneVM_Task", CLONE_SECONDS, prefix=node)
        worker = new_worker(f"{role}-{when.replace(' ', '-')}")
        spec = cluster_spec(run.cluster, masters=1, workers=1)
        if isinstance(kill, str):
            worker.start(crash_at=kill)
            await clusters.create(stack.client, spec, worker.task_queue)
            await worker.wait_crashed(60)
        else:
            worker.start()
            await clusters.create(stack.client, spec, worker.task_queue)
            started = await clone_start(stack, node)
            await asyncio.sleep(max(0.0, kill - (datetime.now(UTC) - started).total_seconds()))
            worker.kill()
        assert node not in vms_of_cluster(stack.sim, run.cluster), "the clone ended before the kill"
        worker.start()
        status = await wait_until_settled(stack, run.cluster, within=FINISH_WITHIN)
        assert_ready_and_exact(stack, run, status, size=2)
        assert clone_counts(stack.sim)[node] == 1, run.describe()
        # Not cloned again (and refused for the taken name, vCenter's DuplicateName):
        # resumed while in flight, or found by instance UUID once it had ended.
        assert stack.sim.clone_calls()[node] == 1, f"{run.describe()}:\n{worker.tail()}"
        if kill != JUST_BEFORE:  # the retry comes a heartbeat timeout later: still in flight
            assert "vm.clone_resumed" in worker.log.read_text(), worker.tail()

    await run_all(
        [
            partial(case, role, kill)
            for role, first in (("leader", "clone.started"), ("worker", "clone.started@2"))
            for kill in (first, AFTER_HEARTBEATS, JUST_BEFORE)
        ]
    )
