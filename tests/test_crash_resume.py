"""A worker killed with SIGKILL mid-create: a new worker process finishes the
cluster, with exactly the right VMs and the leader cloned once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from pke_vsphere.contracts.state import ClusterPhase, NodePhase
from starter import cli, clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import clone_events, vms_of_cluster
from tests.workers import WorkerProcess


@pytest.fixture
def worker(stack: Stack, key_file: Path, payload_keys: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(stack, key_file, payload_keys, tmp_path)
    yield process
    process.stop()


async def test_worker_killed_after_the_leader_vm_exists_resumes_without_duplicates(
    stack: Stack, worker: WorkerProcess
) -> None:
    name = unique("crash")
    leader = f"{name}-master-01"
    stack.nodes.boot_delays[leader] = 4.0  # keep the leader booting while we kill the worker
    worker.start()
    await clusters.create(stack.client, cluster_spec(name), worker.task_queue)

    for _ in range(300):
        if leader in vms_of_cluster(stack.sim, name):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"leader VM never appeared; worker log:\n{worker.log.read_text()}")
    worker.kill()
    assert sorted(vms_of_cluster(stack.sim, name)) == [leader], "workers launched before the leader was ready"

    await asyncio.sleep(1)
    worker.start()
    status = await wait_until_settled(stack, name, within=120)

    assert status.phase is ClusterPhase.READY, status.error
    assert all(n.phase is NodePhase.READY for n in status.nodes)
    vms = vms_of_cluster(stack.sim, name)
    assert sorted(vms) == sorted(n.name for n in status.nodes)  # 5 VMs, no "#dup"
    assert len(vms) == 5
    assert clone_events(stack.sim, leader) == 1
    for n in status.nodes:
        assert vms[n.name]["config.instanceUuid"] == n.identity.instance_uuid


async def test_the_cli_watch_says_status_is_unavailable_while_no_worker_answers_and_exits_0_at_ready(
    stack: Stack, worker: WorkerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pke-vsphere status --watch` outlives a cluster whose worker is gone for a while
    (no query is answered): it says so, keeps asking, and ends once the cluster is Ready."""
    name = unique("watch")
    stack.nodes.boot_delays[f"{name}-master-01"] = 4.0
    worker.start()
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=1), worker.task_queue)
    watching = asyncio.create_task(cli.run(["status", name, "--watch"], client=stack.client))
    for _ in range(300):
        if vms_of_cluster(stack.sim, name):
            break
        await asyncio.sleep(0.05)
    worker.kill()
    await asyncio.sleep(12)  # past one status query's timeout and a retry
    assert not watching.done(), capsys.readouterr().out
    worker.start()

    assert await asyncio.wait_for(watching, timeout=120) == 0
    out = capsys.readouterr().out
    assert f"status of {name} unavailable (" in out
    assert f"cluster {name}: Ready" in out
