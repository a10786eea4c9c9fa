"""A worker killed with SIGKILL mid-create: a new worker process finishes the
cluster, with exactly the right VMs and the leader cloned once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyVim import connect
from pyVmomi import vim

from models.state import ClusterPhase, NodePhase
from sim.vcenter import Simulator
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import ROOT, vms_of_cluster


def clone_events(sim: Simulator, vm_name: str) -> int:
    """How many clones vCenter saw for this name, from its own event log."""
    si = sim.connect()
    try:
        spec = vim.event.EventFilterSpec(eventTypeId=["VmBeingClonedEvent"], maxCount=1000)
        events = si.content.eventManager.QueryEvents(spec)
        return sum(1 for e in events if getattr(e, "destName", None) == vm_name)
    finally:
        connect.Disconnect(si)


class WorkerProcess:
    """The real ``worker.py`` in its own process, configured by a settings file."""

    def __init__(self, settings: Path, log: Path) -> None:
        self.settings, self.log = settings, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "worker.py"), "--settings", str(self.settings)],
                stdout=out,
                stderr=out,
                cwd=ROOT,
            )

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def worker_process(
    stack: Stack, key_file: Path, payload_keys: Path, tmp_path: Path
) -> Iterator[tuple[WorkerProcess, str]]:
    task_queue = f"crash-{uuid.uuid4()}"
    target = stack.client.service_client.config.target_host
    settings = tmp_path / "worker.env"
    settings.write_text(
        f"PKE_VSPHERE_TEMPORAL_ADDRESS={target}\n"
        f"PKE_VSPHERE_TEMPORAL_TASK_QUEUE={task_queue}\n"
        f"PKE_VSPHERE_VCENTER_URL={stack.sim.url}\n"
        f"PKE_VSPHERE_VCENTER_USERNAME={stack.sim.username}\n"
        f"PKE_VSPHERE_VCENTER_PASSWORD={stack.sim.password}\n"
        f"PKE_VSPHERE_NODE_API_URL={stack.node_api_url}\n"
        f"PKE_VSPHERE_NODE_TOKEN_KEY_FILE={key_file}\n"
        f"PKE_VSPHERE_PAYLOAD_KEYS_FILE={payload_keys}\n"
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    yield worker, task_queue
    worker.stop()


async def test_worker_killed_after_the_leader_vm_exists_resumes_without_duplicates(
    stack: Stack, worker_process: tuple[WorkerProcess, str]
) -> None:
    worker, task_queue = worker_process
    name = unique("crash")
    leader = f"{name}-master-01"
    stack.nodes.boot_delays[leader] = 4.0  # keep the leader booting while we kill the worker
    worker.start()
    await clusters.create(stack.client, cluster_spec(name), task_queue)

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
