"""Node workflows started by several activities at once
(workflows/cluster_steps.py, ``_start_node_workflows_together``): when one start
gives up, the others are cancelled and waited for, no node workflow is left
running unwatched, and the join tokens minted for them leave the cluster. Real
Temporal, simulator and worker; only the start activity is wrapped, to give up
for one batch."""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

import worker as worker_module
import workflows.cluster_steps
import workflows.policies
from activities.node_workflows import NodeWorkflowActivities
from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import StartNodesInput
from pke_vsphere.contracts.state import ClusterPhase
from pke_vsphere.vsphere.session import VCenterSession
from sim import vcenter
from sim.nodes import SimulatedNodes
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique, vcenter_settings, vsphere_activities
from tests.etcd_server import EtcdServer
from tests.harness import STORAGE_ACCOUNTS, vms_of_cluster

GIVES_UP = "the test's start gives up"


class StartsThatGiveUp(NodeWorkflowActivities):
    """The worker's start activity, except that the batch holding ``failing`` gives
    up; every other batch first waits (heartbeating) long enough to be cancelled."""

    def __init__(self, client: Client, failing: str) -> None:
        super().__init__(client)
        self.failing = failing
        self.cancelled = 0
        self.finished = 0

    @activity.defn
    async def start_node_workflows(self, input: StartNodesInput) -> None:
        if any(node.identity.name == self.failing for node in input.nodes):
            await asyncio.sleep(1)
            raise ApplicationError(GIVES_UP, non_retryable=True)
        try:
            for _ in range(60):
                await asyncio.sleep(0.5)
                activity.heartbeat()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        await super().start_node_workflows(input)
        self.finished += 1


async def test_one_start_giving_up_cancels_the_others_and_leaves_no_node_workflow_running(
    client: Client,
    vcsim: vcenter.Simulator,
    key_file: Path,
    node_api_url: str,
    sim_nodes: SimulatedNodes,
    etcd: EtcdServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A batch per node (the name is read where the cluster workflow's steps use it).
    monkeypatch.setattr(workflows.policies, "NODE_STARTS_PER_ACTIVITY", 1)
    monkeypatch.setattr(workflows.cluster_steps, "NODE_STARTS_PER_ACTIVITY", 1)
    name = unique("starts")
    spec = cluster_spec(name, workers=3)
    starts = StartsThatGiveUp(client, f"{name}-workers-02")
    task_queue = f"tests-{uuid.uuid4()}"
    vsphere = vsphere_activities(
        VCenterSession(vcenter_settings(vcsim)), key_file, node_api_url, client=client, task_queue=task_queue
    )
    with ThreadPoolExecutor(32) as executor:
        worker = worker_module.build_worker(
            client,
            task_queue,
            vsphere,
            executor,
            32,
            storage_credentials=STORAGE_ACCOUNTS,
            etcd_credentials=etcd.credentials,
            node_workflows=starts,
        )
        async with worker:
            stack = Stack(client, task_queue, vsphere, vcsim, sim_nodes, node_api_url, etcd)
            await clusters.create(client, spec, task_queue)
            status = await wait_until_settled(stack, name)

            assert status.phase is ClusterPhase.FAILED
            assert GIVES_UP in (status.error or ""), status.error
            # 4 batches of the 5 (2 followers, 3 workers) ran at once; the 3 besides the
            # failing one were cancelled in flight, and the fifth never began.
            assert starts.cancelled == 3 and starts.finished == 0, (starts.cancelled, starts.finished)
            for node in [f"{name}-master-02", f"{name}-master-03"] + [
                f"{name}-workers-0{i}" for i in (1, 2, 3)
            ]:
                handle = client.get_workflow_handle(ids.node_workflow_id(name, node))
                try:
                    described = await handle.describe()
                except RPCError:
                    continue  # never started
                assert described.status is not WorkflowExecutionStatus.RUNNING, node
    assert f"{name}-workers-02" not in vms_of_cluster(vcsim, name)
    # The join tokens minted ahead for the five left the cluster with them.
    kube = sim_nodes.cluster_apis[name]
    assert len([c for c in kube.objects.calls if c.verb == "create" and c.resource == "secrets"]) == 5
    assert not [s for s in kube.objects.secrets if s.startswith("bootstrap-token-")]
