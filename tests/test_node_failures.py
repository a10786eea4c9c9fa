"""Nodes that never report or report failure: clear errors, never a hang."""

from __future__ import annotations

import time

from pke_vsphere.contracts.state import ClusterPhase, NodePhase
from sim import vcenter
from sim.nodes import Behaviour
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import vms_of_cluster


async def test_a_leader_that_never_reports_ready_fails_the_create_within_its_deadline(
    stack: Stack,
) -> None:
    name = unique("silent-leader")
    stack.nodes.behaviours[f"{name}-master-01"] = Behaviour.SILENT
    spec = cluster_spec(name, masters=1, workers=1, timeouts={"leader_ready": 5})
    started = time.monotonic()
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name, within=60)
    elapsed = time.monotonic() - started

    assert status.phase is ClusterPhase.FAILED
    assert status.error is not None
    assert f"leader {name}-master-01 failed" in status.error
    assert "did not report ready within 5s" in status.error
    assert elapsed < 30, elapsed
    # Nothing else was launched after the leader failed, and the leader given up
    # on left no VM behind.
    assert vms_of_cluster(stack.sim, name) == {}
    assert [n.phase for n in status.nodes if n.identity.kind.value == "worker"] == [NodePhase.PENDING]


async def test_a_silent_worker_leaves_the_cluster_ready_with_one_failed_node(stack: Stack) -> None:
    name = unique("silent-worker")
    stack.nodes.behaviours[f"{name}-workers-02"] = Behaviour.SILENT
    spec = cluster_spec(name, masters=1, workers=2, timeouts={"join": 5})
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name, within=60)

    assert status.phase is ClusterPhase.READY
    phases = {n.name: n.phase for n in status.nodes}
    assert phases == {
        f"{name}-master-01": NodePhase.READY,
        f"{name}-workers-01": NodePhase.READY,
        f"{name}-workers-02": NodePhase.FAILED,
    }
    failed = status.failed_nodes[0]
    assert failed.last_error is not None and "did not report joined within 5s" in failed.last_error
    assert failed.ip is not None  # it got as far as an address
    assert failed.vm_ref is None  # and its VM is gone
    assert sorted(vms_of_cluster(stack.sim, name)) == [f"{name}-master-01", f"{name}-workers-01"]


async def test_a_node_reporting_failure_is_marked_failed_with_its_message(stack: Stack) -> None:
    name = unique("failing-worker")
    stack.nodes.behaviours[f"{name}-workers-01"] = Behaviour.FAIL
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=1), stack.task_queue)
    status = await wait_until_settled(stack, name, within=60)
    assert status.phase is ClusterPhase.READY
    (failed,) = status.failed_nodes
    assert failed.last_error is not None and "pke install exited 1" in failed.last_error
    assert sorted(vms_of_cluster(stack.sim, name)) == [f"{name}-master-01"]


async def test_a_vm_that_never_gets_an_ip_fails_with_a_tools_hint(stack: Stack) -> None:
    name = unique("no-ip")
    stack.nodes.behaviours[f"{name}-workers-01"] = Behaviour.NO_IP
    spec = cluster_spec(name, masters=1, workers=1, timeouts={"ip": 5})
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name, within=60)
    (failed,) = status.failed_nodes
    assert failed.last_error is not None
    assert "reported no IP address" in failed.last_error and "open-vm-tools" in failed.last_error
    assert sorted(vms_of_cluster(stack.sim, name)) == [f"{name}-master-01"]


async def test_a_node_reporting_an_address_other_than_its_cluster_nics_is_given_up(stack: Stack) -> None:
    name = unique("other-address")
    odd = f"{name}-workers-02"
    stack.nodes.behaviours[odd] = Behaviour.OTHER_ADDRESS
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=2), stack.task_queue)
    status = await wait_until_settled(stack, name, within=60)

    assert status.phase is ClusterPhase.READY
    node = next(n for n in status.nodes if n.name == odd)
    assert node.phase is NodePhase.FAILED
    assert node.last_error is not None and "but VMware Tools reported" in node.last_error, node.last_error
    assert f"on the cluster network's NIC ({vcenter.NETWORK})" in node.last_error
    assert odd not in vms_of_cluster(stack.sim, name)
