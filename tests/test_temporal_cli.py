"""Every ``temporal`` command of the README, run as written (with this test
server's address and task queue), in order: create, query, scale, reconcile,
schedule, trigger, delete."""

from __future__ import annotations

import asyncio
import os
import re
import shlex

from pke_vsphere.contracts.state import ClusterPhase
from starter import clusters, schedules, spec_file
from tests.clusters import wait_until_settled
from tests.conftest import CodecServer, Stack
from tests.harness import ROOT, temporal_cli, vms_of_cluster


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith(("temporal workflow", "temporal schedule")):
                commands.append(shlex.split(line))
    return commands


async def run(args: list[str], stack: Stack, codec: CodecServer) -> str:
    args = [
        stack.task_queue if previous == "--task-queue" else a
        for previous, a in zip(["", *args], args, strict=False)
    ]
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host,
        # As the README says: point the CLI at the codec server to read encrypted payloads.
        "TEMPORAL_CODEC_ENDPOINT": codec.url,
        "TEMPORAL_CODEC_AUTH": f"Bearer {codec.token}",
    }
    process = await asyncio.create_subprocess_exec(
        temporal_cli(),
        *args[1:],
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, f"{shlex.join(args)}\n{out.decode()}"
    return out.decode()


async def pool_size(stack: Stack, cluster: str, pool: str, size: int) -> None:
    for _ in range(300):
        status = await clusters.status(stack.client, cluster)
        settled = status.pools.get(pool) == size and status.operation is None
        if settled and sum(f"-{pool}-" in vm for vm in vms_of_cluster(stack.sim, cluster)) == size:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{cluster}/{pool} never reached {size}")


async def test_the_readme_temporal_commands_drive_a_cluster_from_create_to_delete(
    stack: Stack, codec_server: CodecServer
) -> None:
    commands = iter(readme_commands())
    cluster = spec_file.load(ROOT / "examples" / "cluster-input.json").name

    start = next(commands)
    assert start[:3] == ["temporal", "workflow", "start"]
    assert start[start.index("--input-file") + 1] == "examples/cluster-input.json"
    await run(start, stack, codec_server)
    status = await wait_until_settled(stack, cluster)
    assert status.phase is ClusterPhase.READY, status.error
    assert len(status.nodes) == 5

    out = await run(next(commands), stack, codec_server)  # query status
    assert re.search(r'"phase":\s*"Ready"', out), out

    await run(next(commands), stack, codec_server)  # ScaleClusterWorkflow to 3
    await pool_size(stack, cluster, "workers", 3)

    out = await run(next(commands), stack, codec_server)  # reconcile update
    assert "checked by hand" in out

    await run(next(commands), stack, codec_server)  # schedule create
    (schedule,) = await schedules.list_schedules(stack.client, cluster)
    assert schedule.size == 4 and schedule.timezone == "Europe/Budapest"
    await run(next(commands), stack, codec_server)  # schedule trigger
    await pool_size(stack, cluster, "workers", 4)

    await run(next(commands), stack, codec_server)  # DeleteClusterWorkflow
    for _ in range(300):
        if not vms_of_cluster(stack.sim, cluster) and not await schedules.list_schedules(
            stack.client, cluster
        ):
            break
        await asyncio.sleep(0.2)
    assert vms_of_cluster(stack.sim, cluster) == {}
    assert await schedules.list_schedules(stack.client, cluster) == []
    assert next(commands, None) is None
