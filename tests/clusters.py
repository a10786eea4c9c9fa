"""Helpers for tests that create clusters."""

from __future__ import annotations

import asyncio

from models.state import ClusterPhase, ClusterStatus
from starter import clusters
from tests.conftest import Stack

SETTLED = {ClusterPhase.READY, ClusterPhase.FAILED}


async def wait_until_settled(stack: Stack, name: str, within: float = 90) -> ClusterStatus:
    """Poll the status query until the cluster is Ready or Failed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last: ClusterStatus | None = None
    while loop.time() < deadline:
        try:
            last = await clusters.status(stack.client, name)
        except Exception:
            last = None
        if last is not None and last.phase in SETTLED:
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"cluster {name} did not settle within {within}s: {last!r}")
