"""Session-wide real servers: Temporal's dev server, the vCenter simulator, the
node API, the simulated nodes and a worker. Tests use unique cluster names so
they never see each other's VMs."""

from __future__ import annotations

import asyncio
import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

import worker as worker_module
from activities.task_slots import SharedSlots
from activities.vms import VSphereActivities
from pke_vsphere.codec import keys
from pke_vsphere.config import VCenterSettings
from pke_vsphere.contracts.spec import ClusterSpec
from pke_vsphere.pki.node_tokens import NodeTokenSigner, create_signing_key, load_signing_key
from pke_vsphere.runtime import logs
from pke_vsphere.runtime.temporal import data_converter
from pke_vsphere.runtime.threads import ActivityExecutor
from pke_vsphere.vsphere.session import VCenterSession
from sim import nodes as sim_nodes_module
from sim import temporal_config, vcenter
from sim.nodes import SimulatedNodes
from tests.etcd_server import EtcdServer
from tests.harness import STATE_DIR, STORAGE_ACCOUNTS, WORKER_INDEX, free_port, serve_node_api, temporal_cli

logs.configure(level=os.environ.get("PKE_VSPHERE_LOG_LEVEL", "WARNING"))

# Fixtures defined next to what they make: new_worker (worker.py processes).
pytest_plugins = ["tests.workers"]

# The installation the test workers are (in-process and worker.py processes alike).
INSTALLATION_ID = "tests"

# Fixtures that start a real server (Temporal, the simulator, etcd, the node API) or
# a worker. A test that uses none of them, directly or not, and starts no process of
# the product (marked ``processes``), is in the fast tier: ``make test-unit`` runs
# ``pytest -m unit``.
SERVER_FIXTURES = {
    "temporal_env",
    "vcsim",
    "etcd",
    "node_api_url",
    "sim_nodes",
    "stack",
    "codec_server",
    "new_worker",
    "dev_server",
    "tls_sim",
    "expiring_sim",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        starts_processes = item.get_closest_marker("processes") is not None
        if not starts_processes and not SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def payload_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The key file every process of the test stack encrypts payloads with."""
    path = tmp_path_factory.mktemp("payload-keys") / "keys"
    keys.create(path, "test-key-1")
    return path


@pytest.fixture(scope="session")
async def temporal_env(payload_keys: Path) -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_cli(),
        data_converter=data_converter(keys.load(payload_keys)),
        ip="127.0.0.1",
        port=free_port(),
        ui=False,
        # The dynamic configuration the README recommends (deploy/temporal/dynamicconfig.yaml).
        dev_server_extra_args=temporal_config.dev_server_args(),
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
def vcsim() -> Iterator[vcenter.Simulator]:
    sim = vcenter.start(STATE_DIR)
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "node-token.pem"
    create_signing_key(path)
    return path


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A real etcd that clusters of the external_etcd topology share."""
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def node_api_url(client: Client, key_file: Path, etcd: EtcdServer) -> AsyncIterator[str]:
    async with serve_node_api(client, key_file, etcd_credentials=etcd.credentials) as url:
        yield url


@pytest.fixture(scope="session")
async def sim_nodes(vcsim: vcenter.Simulator) -> AsyncIterator[SimulatedNodes]:
    agent = SimulatedNodes(
        vcsim.connect, boot_seconds=0.3, join_poll_seconds=0.3, scan_seconds=0.2, ip_prefix=node_prefix()
    )
    task = asyncio.create_task(agent.run())
    yield agent
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def vcenter_settings(sim: vcenter.Simulator) -> VCenterSettings:
    return VCenterSettings(
        vcenter_url=sim.url,
        vcenter_username=sim.username,
        vcenter_password=SecretStr(sim.password),
        vcenter_insecure=True,  # the simulator serves plain HTTP on loopback
        installation_id=INSTALLATION_ID,
    )


def vsphere_activities(
    session: VCenterSession,
    key_file: Path,
    node_api_url: str,
    node_api_ca_pem: str | None = None,
    *,
    client: Client,
    task_queue: str,
) -> VSphereActivities:
    """The worker's vCenter activities as the tests run them: 1 h node tokens, 8 tasks
    at once, shared with every worker on the task queue (call it on the event loop)."""
    shared = SharedSlots(client, asyncio.get_running_loop(), INSTALLATION_ID, task_queue, 8)
    return VSphereActivities(
        session,
        NodeTokenSigner(load_signing_key(key_file)),
        node_api_url,
        timedelta(hours=1),
        max_concurrent_tasks=8,
        shared_slots=shared,
        node_api_ca_pem=node_api_ca_pem,
    )


@dataclass
class Stack:
    client: Client
    task_queue: str
    vsphere: VSphereActivities
    sim: vcenter.Simulator
    nodes: SimulatedNodes
    node_api_url: str
    etcd: EtcdServer


@pytest.fixture(scope="session")
async def stack(
    client: Client,
    vcsim: vcenter.Simulator,
    key_file: Path,
    node_api_url: str,
    sim_nodes: SimulatedNodes,
    etcd: EtcdServer,
) -> AsyncIterator[Stack]:
    task_queue = f"tests-{uuid.uuid4()}"
    vsphere = vsphere_activities(
        VCenterSession(vcenter_settings(vcsim)), key_file, node_api_url, client=client, task_queue=task_queue
    )
    with ActivityExecutor(64, thread_name_prefix="activity") as executor:
        w = worker_module.build_worker(
            client,
            task_queue,
            vsphere,
            executor,
            64,
            storage_credentials=STORAGE_ACCOUNTS,
            etcd_credentials=etcd.credentials,
        )
        async with w:
            yield Stack(client, task_queue, vsphere, vcsim, sim_nodes, node_api_url, etcd)


_vips = itertools.count(2)
_node_prefixes = itertools.count(64 + 20 * WORKER_INDEX)


def unique_vip() -> str:
    """Every test cluster gets its own VIP: its stand-in API server binds it.
    Worker K's are under 127.0.(11 + 20K).0, 5000 of them."""
    n = next(_vips)
    return f"127.0.{11 + 20 * WORKER_INDEX + n // 250}.{n % 250 + 1}"


def node_prefix() -> str:
    """A 127.N prefix for one agent of simulated nodes: worker K takes 127.(64 + 20K)
    and up, below the range an agent draws from when it is given none (the demo)."""
    n = next(_node_prefixes)
    assert n < 64 + 20 * (WORKER_INDEX + 1) and n < sim_nodes_module.DEFAULT_PREFIXES.start, n
    return f"127.{n}"


def cluster_spec(name: str, *, masters: int = 3, workers: int = 2, **overrides: Any) -> ClusterSpec:
    """A spec on the simulator's inventory, short deadlines for tests."""
    data: dict[str, Any] = {
        "name": name,
        "vsphere": {
            "datacenter": vcenter.DATACENTER,
            "template": vcenter.TEMPLATE,
            "folder": vcenter.FOLDER,
            "compute_cluster": vcenter.COMPUTE_CLUSTER,
            "datastore_cluster": vcenter.DATASTORE_CLUSTER,
            "network": vcenter.NETWORK,
        },
        "control_plane": {"vip": unique_vip()} if masters > 1 else {},
        "pools": [
            {"name": "master", "role": "master", "count": masters, "cpus": 2, "memory_mb": 4096},
            {"name": "workers", "role": "worker", "count": workers, "cpus": 4, "memory_mb": 8192},
        ],
        "timeouts": {"clone": 120, "ip": 60, "leader_ready": 60, "join": 60, "heartbeat": 10},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return ClusterSpec.model_validate(data)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@dataclass
class CodecServer:
    url: str
    token: str


@pytest.fixture(scope="session")
async def codec_server(payload_keys: Path) -> AsyncIterator[CodecServer]:
    """The codec server over loopback HTTP, as the Web UI and the CLI reach it."""
    from pke_vsphere.codec.encryption import EncryptionCodec
    from pke_vsphere.codec.server import create_app
    from tests.harness import serve_app

    token = "test-codec-token"
    app = create_app(EncryptionCodec(keys.load(payload_keys)), token, ["http://127.0.0.1:8233"])
    async with serve_app(app) as url:
        yield CodecServer(url, token)
