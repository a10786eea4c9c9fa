"""The README's ``temporal workflow start`` command, run as written (with this
test server's address and task queue), creates a cluster that reaches Ready."""

from __future__ import annotations

import asyncio
import os
import re
import shlex

from models.state import ClusterPhase
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack
from tests.harness import ROOT, temporal_cli


def readme_command(prefix: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, re.S)
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            if line.strip().startswith(prefix):
                return shlex.split(line)
    raise AssertionError(f"README has no `{prefix}` command")


async def run(args: list[str], stack: Stack) -> str:
    env = {**os.environ, "TEMPORAL_ADDRESS": stack.client.service_client.config.target_host}
    process = await asyncio.create_subprocess_exec(
        temporal_cli(),
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, out.decode()
    return out.decode()


async def test_readme_temporal_workflow_start_creates_a_ready_cluster(stack: Stack) -> None:
    args = readme_command("temporal workflow start")
    assert args[args.index("--input-file") + 1] == "examples/cluster-input.json"
    args[args.index("--task-queue") + 1] = stack.task_queue
    await run(args[1:], stack)

    spec = clusters.load_spec(ROOT / "examples" / "cluster-input.json")
    status = await wait_until_settled(stack, spec.name)
    assert status.phase is ClusterPhase.READY, status.error
    assert len(status.nodes) == 5

    query = readme_command("temporal workflow query")
    out = await run(query[1:], stack)
    assert '"phase": "Ready"' in out or '"phase":"Ready"' in out
