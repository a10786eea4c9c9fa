"""The Temporal server stops mid-create and comes back from its database file:
the create finishes, with exactly the right VMs, each cloned once.

This test runs its own dev server (the session's has no database file), with
its own worker and node API connected to it; vCenter and the simulated nodes
are the session's.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.client import Client

import worker as worker_module
from pke_vsphere.codec import keys
from pke_vsphere.contracts.state import ClusterPhase, NodePhase
from pke_vsphere.runtime.binaries import temporal_binary
from pke_vsphere.runtime.temporal import data_converter
from pke_vsphere.vsphere.session import VCenterSession
from sim import temporal_config
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique, vcenter_settings, vsphere_activities
from tests.harness import free_port, serve_node_api, vms_of_cluster
from tests.reliability import Run

pytestmark = pytest.mark.asyncio(loop_scope="session")


class DevServer:
    """``temporal server start-dev`` with a SQLite file, stopped and started at will."""

    def __init__(self, db: Path, log: Path) -> None:
        self.db, self.log = db, log
        self.port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    temporal_binary(),
                    "server",
                    "start-dev",
                    "--ip",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--http-port",
                    str(self.http_port),
                    "--metrics-port",
                    str(self.metrics_port),
                    "--headless",
                    "--db-filename",
                    str(self.db),
                    "--log-level",
                    "error",
                    *temporal_config.dev_server_args(),
                ],
                stdout=out,
                stderr=out,
            )

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    async def wait_healthy(self, within: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                client = await Client.connect(self.address)
                await client.service_client.check_health()
                return
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.3)


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(tmp_path / "temporal.db", tmp_path / "temporal.log")
    server.start()
    yield server
    server.stop()


async def test_the_create_finishes_after_the_temporal_server_restarts_from_its_database(
    stack: Stack, dev_server: DevServer, key_file: Path, payload_keys: Path
) -> None:
    await dev_server.wait_healthy()
    client = await Client.connect(dev_server.address, data_converter=data_converter(keys.load(payload_keys)))
    task_queue = f"restart-{uuid.uuid4()}"
    run = Run("temporal-restart", "create", "server stopped after the leader's VM exists", unique("restart"))
    leader = f"{run.cluster}-master-01"
    stack.nodes.boot_delays[leader] = 3.0  # keep the create in flight while the server is down

    async with serve_node_api(client, key_file) as node_api_url:
        session = VCenterSession(vcenter_settings(stack.sim))
        vsphere = vsphere_activities(session, key_file, node_api_url, client=client, task_queue=task_queue)
        with ThreadPoolExecutor(32) as executor:
            async with worker_module.build_worker(client, task_queue, vsphere, executor, 32):
                here = Stack(client, task_queue, vsphere, stack.sim, stack.nodes, node_api_url, stack.etcd)
                await clusters.create(client, cluster_spec(run.cluster, masters=3, workers=2), task_queue)
                await until(lambda: leader in vms_of_cluster(stack.sim, run.cluster), within=60)

                dev_server.stop()
                await asyncio.sleep(2)
                dev_server.start()
                await dev_server.wait_healthy()

                status = await wait_until_settled(here, run.cluster, within=180)
                run.finished = status.phase is ClusterPhase.READY
                run.check(stack.sim, status).record()

    assert status.phase is ClusterPhase.READY, status.error
    assert all(n.phase is NodePhase.READY for n in status.nodes)
    assert len(status.nodes) == 5
    assert run.ok, run.describe()


async def until(condition: Callable[[], bool], within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await asyncio.to_thread(condition):
        if loop.time() > deadline:
            raise AssertionError(f"not true within {within}s")
        await asyncio.sleep(0.1)
