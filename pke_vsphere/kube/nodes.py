"""Removing a node from Kubernetes: cordon, evict its pods (PodDisruptionBudgets
respected: a refused eviction is retried until the drain deadline), delete."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from lightkube import ALL_NS, AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Node, Pod

from pke_vsphere.contracts.messages import DrainResult

RETRY_SECONDS = 2.0


async def cordon(client: AsyncClient, name: str) -> bool:
    """Mark the node unschedulable; False if Kubernetes does not know the node."""
    try:
        await client.patch(Node, name, {"spec": {"unschedulable": True}})
    except ApiError as exc:
        if exc.status.code == 404:
            return False
        raise
    return True


def _evictable(pod: Pod) -> bool:
    """kubectl drain's rules: mirror pods and DaemonSet pods stay."""
    meta = pod.metadata
    if meta is None:
        return False
    if meta.annotations and "kubernetes.io/config.mirror" in meta.annotations:
        return False
    return not any(ref.kind == "DaemonSet" for ref in meta.ownerReferences or [])


async def _pods_on(client: AsyncClient, node: str) -> list[Pod]:
    return [
        pod
        async for pod in client.list(Pod, namespace=ALL_NS, fields={"spec.nodeName": node})
        if _evictable(pod)
    ]


def _pod_name(pod: Pod) -> str:
    assert pod.metadata is not None
    return f"{pod.metadata.namespace}/{pod.metadata.name}"


async def drain(
    client: AsyncClient, node: str, give_up_after: float, on_progress: Callable[[], None] = lambda: None
) -> DrainResult:
    """Cordon, then evict every evictable pod until none is left or ``give_up_after`` seconds pass."""
    cordoned = await cordon(client, node)
    if not cordoned:
        return DrainResult(cordoned=False)
    evicted: list[str] = []
    deadline = time.monotonic() + give_up_after
    while True:
        pods = await _pods_on(client, node)
        if not pods:
            return DrainResult(cordoned=True, evicted=evicted)
        for pod in pods:
            assert pod.metadata is not None and pod.metadata.name is not None
            eviction = Pod.Eviction(
                metadata=ObjectMeta(name=pod.metadata.name, namespace=pod.metadata.namespace)
            )
            try:
                await client.create(eviction, name=pod.metadata.name, namespace=pod.metadata.namespace)
                evicted.append(_pod_name(pod))
            except ApiError as exc:
                # 429: a PodDisruptionBudget forbids it now; 404: already gone.
                if exc.status.code not in (404, 429):
                    raise
        on_progress()
        if time.monotonic() >= deadline:
            remaining = [_pod_name(p) for p in await _pods_on(client, node)]
            return DrainResult(cordoned=True, evicted=evicted, remaining=remaining, timed_out=bool(remaining))
        await asyncio.sleep(RETRY_SECONDS)


async def delete(client: AsyncClient, name: str) -> bool:
    """Delete the Node object; False if it was already gone."""
    try:
        await client.delete(Node, name)
    except ApiError as exc:
        if exc.status.code == 404:
            return False
        raise
    return True


async def wait_ready(
    client: AsyncClient, name: str, give_up_after: float, on_progress: Callable[[], None] = lambda: None
) -> bool:
    """Wait until the node's Ready condition is True; False if ``give_up_after`` passes."""
    deadline = time.monotonic() + give_up_after
    while time.monotonic() < deadline:
        try:
            node = await client.get(Node, name)
            conditions = node.status.conditions if node.status else None
            if any(c.type == "Ready" and c.status == "True" for c in conditions or []):
                return True
        except ApiError as exc:
            if exc.status.code != 404:
                raise
        on_progress()
        await asyncio.sleep(RETRY_SECONDS)
    return False
