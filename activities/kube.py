"""Activities on a cluster's Kubernetes API: mint join tokens, drain and delete nodes."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx2
import structlog
from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from pke_vsphere.contracts.messages import (
    CreateTokenInput,
    CreateTokensInput,
    DeleteKubeNodeInput,
    DeleteTokenInput,
    DeleteTokensInput,
    DrainInput,
    DrainResult,
    JoinTokens,
    KubeAccess,
    WaitNodeReadyInput,
)
from pke_vsphere.contracts.pki import BootstrapToken
from pke_vsphere.contracts.protocol import ErrorType
from pke_vsphere.kube import bootstrap_tokens, nodes
from pke_vsphere.kube.client import connect
from pke_vsphere.pki import bootstrap_tokens as tokens
from pke_vsphere.runtime import crashpoints

log = structlog.get_logger(__name__)


@asynccontextmanager
async def api(access: KubeAccess, action: str) -> AsyncIterator[AsyncClient]:
    """A client, with the API's failures turned into retryable or final errors."""
    try:
        async with connect(access) as client:
            yield client
    except ApiError as exc:
        final = exc.status.code in (400, 401, 403, 422)
        raise ApplicationError(
            f"{action}: the API server at {access.endpoint} answered {exc.status.code}: {exc.status.message}",
            type=ErrorType.KUBE_API_ERROR,
            non_retryable=final,
        ) from exc
    except (httpx2.HTTPError, OSError, ssl.SSLError) as exc:
        raise ApplicationError(
            f"{action}: cannot reach the API server at {access.endpoint}: {exc!r}",
            type=ErrorType.KUBE_API_UNREACHABLE,
        ) from exc


@activity.defn
async def create_bootstrap_token(input: CreateTokenInput) -> BootstrapToken:
    """Mint a kubeadm token and install it in the cluster, so it is valid there. A
    retry mints another; the one an earlier attempt installed expires unused."""
    token = tokens.mint(timedelta(seconds=input.ttl_seconds))
    async with api(input.access, "install a bootstrap token") as client:
        await bootstrap_tokens.install(client, token, input.node)
    crashpoints.reach("join_token.installed")
    log.info(
        "bootstrap_token.installed",
        cluster=input.cluster,
        node=input.node,
        token_id=token.token_id,
        expires_at=token.expires_at.isoformat(),
    )
    return token


# Token installs or deletions in flight at once when minting or deleting many.
CONCURRENT_TOKEN_CALLS = 16


@activity.defn
async def create_bootstrap_tokens(input: CreateTokensInput) -> JoinTokens:
    """One kubeadm token for each joining node, installed before the nodes ask, so a
    node's join call is served without a call to the API server. A retry mints
    another set; the tokens an earlier attempt installed expire unused."""
    ttl = timedelta(seconds=input.ttl_seconds)
    limit = asyncio.Semaphore(CONCURRENT_TOKEN_CALLS)
    async with api(input.access, "install bootstrap tokens") as client:

        async def one(node: str) -> tuple[str, BootstrapToken]:
            token = tokens.mint(ttl)
            async with limit:
                await bootstrap_tokens.install(client, token, node)
            return node, token

        made = dict(await asyncio.gather(*map(one, input.nodes)))
    crashpoints.reach("join_token.installed")
    log.info("bootstrap_tokens.installed", cluster=input.cluster, count=len(made))
    return JoinTokens(tokens=made)


@activity.defn
async def delete_bootstrap_token(input: DeleteTokenInput) -> bool:
    """Delete a node's bootstrap token from the cluster (its node joined or is gone)."""
    async with api(input.access, f"delete bootstrap token {input.token_id}") as client:
        deleted = await bootstrap_tokens.delete(client, input.token_id)
    log.info("bootstrap_token.deleted", cluster=input.cluster, token_id=input.token_id, existed=deleted)
    return deleted


@activity.defn
async def delete_bootstrap_tokens(input: DeleteTokensInput) -> int:
    """Delete the bootstrap tokens of nodes that joined, together (a round of a
    create's outcomes); how many still existed. A retry deletes what is left."""
    limit = asyncio.Semaphore(CONCURRENT_TOKEN_CALLS)
    async with api(input.access, f"delete {len(input.token_ids)} bootstrap tokens") as client:

        async def one(token_id: str) -> bool:
            async with limit:
                return await bootstrap_tokens.delete(client, token_id)

        deleted = await asyncio.gather(*map(one, input.token_ids))
    log.info("bootstrap_tokens.deleted", cluster=input.cluster, count=len(deleted), existed=sum(deleted))
    return sum(deleted)


@activity.defn
async def drain_node(input: DrainInput) -> DrainResult:
    """Cordon the node and evict its pods; after the timeout, report what is left."""
    async with api(input.access, f"drain {input.node}") as client:
        result = await nodes.drain(client, input.node, input.timeout_seconds, activity.heartbeat)
    crashpoints.reach("drain.finished")
    log.info(
        "node.drained",
        cluster=input.cluster,
        node=input.node,
        evicted=len(result.evicted),
        remaining=result.remaining,
        timed_out=result.timed_out,
    )
    return result


@activity.defn
async def delete_kube_node(input: DeleteKubeNodeInput) -> bool:
    async with api(input.access, f"delete node {input.node}") as client:
        deleted = await nodes.delete(client, input.node)
    crashpoints.reach("kube_node.deleted")
    log.info("node.deleted_from_kubernetes", cluster=input.cluster, node=input.node, existed=deleted)
    return deleted


@activity.defn
async def wait_for_kube_node_ready(input: WaitNodeReadyInput) -> None:
    """Wait for a restarted node's kubelet to report Ready again."""
    async with api(input.access, f"wait for {input.node} to be Ready") as client:
        ready = await nodes.wait_ready(client, input.node, input.timeout_seconds, activity.heartbeat)
    if not ready:
        raise ApplicationError(
            f"{input.node} did not become Ready in Kubernetes within {input.timeout_seconds}s after power-on",
            type=ErrorType.NODE_NOT_READY,
            non_retryable=True,
        )
