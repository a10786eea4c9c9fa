"""A misbehaving vCenter: dropped connections, 503s and slow replies from a
fault-injecting proxy (sim/faultproxy.py), sessions that expire, and a clone
task that fails. Clusters still come out exactly right, or a node is given up
with a clear reason and nothing left behind."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import worker as worker_module
from pke_vsphere.contracts.state import ClusterPhase, NodePhase
from pke_vsphere.vsphere import watcher
from pke_vsphere.vsphere.session import VCenterSession
from sim import vcenter
from sim.faultproxy import FaultProxy, FaultRates
from sim.nodes import SimulatedNodes
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, node_prefix, unique, vcenter_settings, vsphere_activities
from tests.harness import STATE_DIR, vms_of_cluster
from tests.reliability import Run

pytestmark = pytest.mark.asyncio(loop_scope="session")

# A create makes about 5 requests per node now: rates high enough that each kind
# of fault happens in one 3 + 2 create.
NETWORK_FAULTS = FaultRates(drop_before=0.04, drop_after=0.04, error=0.04, slow=0.05, slow_seconds=0.5)
# Sessions idle this long expire; a node's boot (no vCenter calls meanwhile) is longer.
SESSION_IDLE = "1s"
SEED = int(os.environ.get("PKE_VSPHERE_FAULT_SEED", "7"))


@dataclass
class FaultyStack:
    """Its own simulator (short session timeout) and nodes, reached by the worker
    only through the fault proxy; the shared Temporal server and node API."""

    stack: Stack
    proxy: FaultProxy
    session: VCenterSession


@pytest.fixture(scope="module")
async def faulty(stack: Stack, key_file: Path) -> AsyncIterator[FaultyStack]:
    sim = vcenter.start(STATE_DIR, session_idle_timeout=SESSION_IDLE)
    nodes = SimulatedNodes(
        sim.connect, boot_seconds=0.3, join_poll_seconds=0.3, scan_seconds=0.2, ip_prefix=node_prefix()
    )
    agent = asyncio.create_task(nodes.run())
    try:
        async with FaultProxy(sim.url, FaultRates(), seed=SEED) as proxy:
            settings = vcenter_settings(sim).model_copy(update={"vcenter_url": proxy.url})
            session = VCenterSession(settings)
            task_queue = f"faulty-{uuid.uuid4()}"
            vsphere = vsphere_activities(
                session, key_file, stack.node_api_url, client=stack.client, task_queue=task_queue
            )
            with ThreadPoolExecutor(32) as executor:
                async with worker_module.build_worker(stack.client, task_queue, vsphere, executor, 32):
                    yield FaultyStack(
                        Stack(stack.client, task_queue, vsphere, sim, nodes, stack.node_api_url, stack.etcd),
                        proxy,
                        session,
                    )
    finally:
        agent.cancel()
        await asyncio.gather(agent, return_exceptions=True)
        sim.stop()


async def test_a_cluster_reaches_ready_through_dropped_connections_503s_and_slow_replies(
    faulty: FaultyStack,
) -> None:
    stack = faulty.stack
    run = Run("vcenter-proxy", "create", "network faults", unique("flaky"))
    faulty.proxy.rates = NETWORK_FAULTS
    before = faulty.proxy.stats.total()
    try:
        await clusters.create(stack.client, cluster_spec(run.cluster, masters=3, workers=2), stack.task_queue)
        status = await wait_until_settled(stack, run.cluster, within=300)
    finally:
        faulty.proxy.rates = FaultRates()
    injected = faulty.proxy.stats
    run.finished = status.phase is ClusterPhase.READY
    run.injected = injected.total() - before
    run.check(stack.sim, status).record()

    assert status.phase is ClusterPhase.READY, status.error
    assert all(n.phase is NodePhase.READY for n in status.nodes), status.nodes
    assert run.ok, run.describe()
    assert len(vms_of_cluster(stack.sim, run.cluster)) == 5
    for kind in ("drop_before", "drop_after", "error", "slow"):
        assert injected.total(kind) > 0, f"no {kind} was injected: {injected.injected}"
    assert injected.total() - before >= 10


async def test_expired_sessions_are_renewed_and_the_create_carries_on(
    faulty: FaultyStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = faulty.stack
    run = Run("session-expiry", "create", f"idle {SESSION_IDLE}", unique("expiry"))
    logins = faulty.session.logins
    # The session's watcher asks vCenter every round; rounds longer than the idle
    # timeout let the session expire while nodes boot (a vCenter restart, say).
    monkeypatch.setattr(watcher, "POLL_SECONDS", 3)
    faulty.stack.nodes.boot_seconds = 2.5  # the worker only waits while nodes boot
    try:
        await clusters.create(stack.client, cluster_spec(run.cluster, masters=1, workers=2), stack.task_queue)
        status = await wait_until_settled(stack, run.cluster, within=120)
    finally:
        faulty.stack.nodes.boot_seconds = 0.3
    run.finished = status.phase is ClusterPhase.READY
    run.injected = faulty.session.logins - logins  # each new login followed an expiry
    run.check(stack.sim, status).record()

    assert status.phase is ClusterPhase.READY, status.error
    assert run.ok, run.describe()
    assert faulty.session.logins > logins, "the session never expired: the test proves nothing"


async def test_a_clone_task_failing_for_a_full_datastore_gives_the_node_up_at_once_and_leaves_no_vm(
    stack: Stack,
) -> None:
    name = unique("full")
    doomed = f"{name}-workers-02"
    run = Run("clone-task-failure", "create", "NoDiskSpace (a worker's clone)", name)
    stack.sim.fail_clones_of(doomed, "NoDiskSpace")
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=2), stack.task_queue)
    status = await wait_until_settled(stack, name, within=90)
    run.finished = status.phase is ClusterPhase.READY and len(status.failed_nodes) == 1
    run.injected = stack.sim.failed_clones()[doomed]
    run.check(stack.sim, status).record()
    assert run.ok, run.describe()

    assert status.phase is ClusterPhase.READY, status.error
    (failed,) = status.failed_nodes
    assert failed.name == doomed
    assert failed.last_error is not None
    assert failed.last_error.startswith(
        f"provision VM {doomed}: the datastore is full: NoDiskSpace (datastore LocalDS_0, file {doomed})"
    ), failed.last_error
    # A full datastore is not retried: one clone task, and no VM for the node given up.
    assert stack.sim.failed_clones()[doomed] == 1
    assert sorted(vms_of_cluster(stack.sim, name)) == [f"{name}-master-01", f"{name}-workers-01"]


async def test_a_clone_task_failing_for_a_lost_host_is_retried_until_its_deadline_and_leaves_no_vm(
    stack: Stack,
) -> None:
    name = unique("lost-host")
    leader = f"{name}-master-01"
    run = Run("clone-task-failure", "create", "HostCommunication (the leader's clone)", name)
    stack.sim.fail_clones_of(leader, "HostCommunication")
    spec = cluster_spec(name, masters=1, workers=1, timeouts={"clone": 12})
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name, within=90)
    run.finished = status.phase is ClusterPhase.FAILED  # the expected end: failed with the reason
    run.injected = stack.sim.failed_clones()[leader]
    run.check(stack.sim, status).record()
    assert run.ok, run.describe()

    assert status.phase is ClusterPhase.FAILED
    assert status.error is not None
    # The last attempt either failed with the fault, or (on a loaded machine) was still
    # waiting for its clone task when the step's deadline came and cancelled it.
    reasons = ("HostCommunication", f"the clone of {leader} did not finish within the clone step")
    assert any(
        status.error.startswith(f"leader {leader} failed: provision VM {leader}: {r}") for r in reasons
    ), status.error
    # Retried with backoff (2 s, 4 s, 8 s) until the clone step's 12 s deadline.
    assert 2 <= stack.sim.failed_clones()[leader] <= 5, stack.sim.failed_clones()[leader]
    assert vms_of_cluster(stack.sim, name) == {}
