"""End to end on the real Temporal dev server and the real vCenter simulator."""

from __future__ import annotations

import base64
import gzip

from bootstrap import cloudinit, guestinfo
from models.state import ClusterPhase, NodePhase
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import vms_of_cluster


async def test_three_masters_two_workers_reach_ready(stack: Stack) -> None:
    name = unique("e2e")
    spec = cluster_spec(name)
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name)
    assert status.phase is ClusterPhase.READY, status.error
    assert [n.phase for n in status.nodes] == [NodePhase.READY] * 5
    assert status.api_endpoint == "127.0.10.100:6443"

    vms = vms_of_cluster(stack.sim, name)
    expected = [
        f"{name}-master-01",
        f"{name}-master-02",
        f"{name}-master-03",
        f"{name}-workers-01",
        f"{name}-workers-02",
    ]
    assert sorted(vms) == expected
    for vm_name, props in vms.items():
        pool = "master" if "-master-" in vm_name else "workers"
        assert props["config.hardware.numCPU"] == (2 if pool == "master" else 4)
        assert props["config.hardware.memoryMB"] == (4096 if pool == "master" else 8192)
        extra = props["extra"]
        assert extra["disk.enableUUID"] == "TRUE"
        assert extra[guestinfo.MARKER_POOL] == pool
        assert extra[guestinfo.MARKER_NODE] == vm_name
        assert extra["guestinfo.userdata.encoding"] == "gzip+base64"
        userdata = gzip.decompress(base64.b64decode(extra["guestinfo.userdata"])).decode()
        config = cloudinit.parse(userdata)
        assert config["hostname"] == vm_name
        assert props["runtime.powerState"] == "poweredOn"

    # Followers and workers were powered on only after the leader reported ready.
    by_name = {n.name: n for n in status.nodes}
    leader = by_name[f"{name}-master-01"]
    assert leader.ready_at is not None
    for node in status.nodes:
        if node is not leader:
            assert node.powered_on_at is not None and node.powered_on_at > leader.ready_at, (
                node.name
            )
