"""The node API over real HTTP against the real workflows: bad or foreign
requests get 4xx and change nothing; a node can only act for itself. Failures of
Temporal that no real cluster produces on demand come from a stand-in client."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import cast

import httpx
import pytest
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowQueryFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.service import RPCError, RPCStatusCode

from pke_vsphere.contracts.messages import JoinInfo, NodeCallGrant, NodeCallRequest
from pke_vsphere.contracts.protocol import NODE_KEY_HEADER, Query, Update
from pke_vsphere.contracts.state import ClusterPhase, ClusterStatus, NodeIdentity, NodeKind
from pke_vsphere.nodeapi.app import create_app
from pke_vsphere.pki.node_tokens import NodeTokenSigner, NodeTokenVerifier, load_signing_key
from sim.nodes import Behaviour
from starter import clusters, node_detail
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import serve_app

# The node key of every call these tests make as a node (the first call binds a node to it).
NODE_KEY = "k" * 43


async def wait_for_node_identities(stack: Stack, name: str) -> ClusterStatus:
    """The cluster's status once its leader is booting (VMware Tools reported its address)."""
    for _ in range(100):
        try:
            status, _ = await node_detail.refine(stack.client, await clusters.status(stack.client, name))
            leader = next(n for n in status.nodes if n.identity.kind is NodeKind.LEADER)
            if status.phase is ClusterPhase.STARTING_LEADER and leader.ip is not None:
                return status
        except Exception:  # noqa: S110 - not started yet
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("cluster did not start")


@pytest.fixture(scope="module")
async def waiting_cluster(stack: Stack) -> ClusterStatus:
    """A cluster whose leader stays silent, so its nodes wait for the leader."""
    name = unique("napi")
    stack.nodes.behaviours[f"{name}-master-01"] = Behaviour.SILENT
    spec = cluster_spec(name, masters=1, workers=2, timeouts={"leader_ready": 300})
    await clusters.create(stack.client, spec, stack.task_queue)
    return await wait_for_node_identities(stack, name)


def token_for(
    key_file: Path, node: NodeIdentity, ttl: timedelta = timedelta(minutes=5), node_key: str = NODE_KEY
) -> dict[str, str]:
    token = NodeTokenSigner(load_signing_key(key_file)).sign(node, ttl)
    return {"Authorization": f"Bearer {token}", NODE_KEY_HEADER: node_key}


def node(status: ClusterStatus, kind: NodeKind, index: int = 1) -> NodeIdentity:
    return next(n.identity for n in status.nodes if n.identity.kind is kind and n.identity.index == index)


async def test_health_needs_no_token(node_api_url: str) -> None:
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        assert (await api.get("/healthz")).json() == {"status": "ok"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nodes/self/bootstrap"),
        ("GET", "/v1/nodes/self/join"),
        ("POST", "/v1/nodes/self/report"),
    ],
)
@pytest.mark.parametrize("header", [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", "Bearer a.b.c"])
async def test_requests_without_a_valid_token_get_401(
    node_api_url: str, method: str, path: str, header: str | None
) -> None:
    headers = {"Authorization": header} if header else {}
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        response = await api.request(method, path, headers=headers, json={"kind": "ready"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_a_token_for_an_unknown_cluster_or_node_is_refused(
    node_api_url: str, key_file: Path, waiting_cluster: ClusterStatus
) -> None:
    worker = node(waiting_cluster, NodeKind.WORKER)
    strangers = [
        worker.model_copy(update={"cluster": "no-such-cluster"}),
        worker.model_copy(update={"cluster_uid": "an-earlier-incarnation"}),
        worker.model_copy(update={"name": f"{worker.cluster}-workers-09"}),
        worker.model_copy(update={"instance_uuid": "00000000-0000-0000-0000-000000000000"}),
        worker.model_copy(update={"kind": NodeKind.MASTER}),  # a worker claiming to be a master
    ]
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        for stranger in strangers:
            # Each to a route its claimed role may call: a role's refusal (403) comes first.
            path = "/v1/nodes/self/join" if stranger.kind is NodeKind.WORKER else "/v1/nodes/self/bootstrap"
            response = await api.get(path, headers=token_for(key_file, stranger))
            assert response.status_code == 401, stranger


async def test_an_expired_token_is_refused(
    node_api_url: str, key_file: Path, waiting_cluster: ClusterStatus
) -> None:
    worker = node(waiting_cluster, NodeKind.WORKER)
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        response = await api.get(
            "/v1/nodes/self/join", headers=token_for(key_file, worker, timedelta(seconds=-60))
        )
    assert response.status_code == 401
    assert response.json()["detail"] == "token expired"


async def test_only_masters_get_the_cluster_cas(
    node_api_url: str, key_file: Path, waiting_cluster: ClusterStatus
) -> None:
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        worker = await api.get(
            "/v1/nodes/self/bootstrap",
            headers=token_for(key_file, node(waiting_cluster, NodeKind.WORKER)),
        )
        leader = await api.get(
            "/v1/nodes/self/bootstrap",
            headers=token_for(key_file, node(waiting_cluster, NodeKind.LEADER)),
        )
    # The worker's VM does not exist yet (its workflow starts once the leader is
    # ready): its token is of no node that bootstraps. tests/test_node_credentials.py
    # shows a booting worker's 403.
    assert worker.status_code == 401
    assert leader.status_code == 200
    body = leader.json()
    assert "BEGIN CERTIFICATE" in body["pki"]["kubernetes_ca"]["cert_pem"]
    assert "PRIVATE KEY" in body["pki"]["kubernetes_ca"]["key_pem"]
    assert leader.headers["cache-control"] == "no-store"
    # The address the leader is to run Kubernetes on: the one VMware Tools reported.
    leader_ip = next(n.ip for n in waiting_cluster.nodes if n.identity.kind is NodeKind.LEADER)
    assert body["node_address"] == leader_ip


async def test_a_node_without_a_running_workflow_gets_401_and_the_leader_never_joins(
    node_api_url: str, key_file: Path, waiting_cluster: ClusterStatus
) -> None:
    """The workers of a cluster whose leader is not ready have no workflow yet: their
    VMs do not exist, so nothing may bootstrap with their tokens."""
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        response = await api.get(
            "/v1/nodes/self/join",
            headers=token_for(key_file, node(waiting_cluster, NodeKind.WORKER)),
        )
        leader = await api.get(
            "/v1/nodes/self/join",
            headers=token_for(key_file, node(waiting_cluster, NodeKind.LEADER)),
        )
    assert response.status_code == 401
    assert response.json()["detail"] == "this node is not bootstrapping"
    assert leader.status_code == 403


async def test_a_call_without_a_node_key_gets_401(
    node_api_url: str, key_file: Path, waiting_cluster: ClusterStatus
) -> None:
    leader = node(waiting_cluster, NodeKind.LEADER)
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        for key in (None, "", "short", "k" * 42, "k" * 129, "k+/=" * 11):
            headers = token_for(key_file, leader)
            if key is None:
                del headers[NODE_KEY_HEADER]
            else:
                headers[NODE_KEY_HEADER] = key
            response = await api.get("/v1/nodes/self/bootstrap", headers=headers)
            assert response.status_code == 401, key
            assert NODE_KEY_HEADER in response.json()["detail"]


async def test_malformed_or_foreign_reports_are_refused_and_change_nothing(
    stack: Stack, node_api_url: str, key_file: Path, waiting_cluster: ClusterStatus
) -> None:
    worker = token_for(key_file, node(waiting_cluster, NodeKind.WORKER))
    leader = token_for(key_file, node(waiting_cluster, NodeKind.LEADER))
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        bad = [
            await api.post("/v1/nodes/self/report", headers=worker, content=b"{not json"),
            await api.post("/v1/nodes/self/report", headers=worker, json={"kind": "exploded"}),
            await api.post("/v1/nodes/self/report", headers=worker, json={"kind": "ready"}),
            await api.post("/v1/nodes/self/report", headers=leader, json={"kind": "joined"}),
            await api.post(
                "/v1/nodes/self/report",
                headers=worker,
                json={"kind": "failed", "message": "x" * 5000},
            ),
            await api.post("/v1/nodes/self/report", headers=worker, json=[1, 2]),
        ]
    # Bodies that are no report are refused first; a report the role does not make is
    # refused by the node's workflow (the leader's runs; the worker's has not started,
    # so its token is refused before its role is looked at).
    assert [r.status_code for r in bad] == [422, 422, 401, 422, 422, 422]
    after = await clusters.status(stack.client, waiting_cluster.name)
    assert after.phase is ClusterPhase.STARTING_LEADER
    assert not after.failed_nodes


class FlakyOrchestrator:
    """A stand-in Temporal client: the node's workflow grants every call, then the
    call the route makes fails the way Temporal can fail it (``failures`` by query
    or update name). For failures no real cluster produces on demand: a timeout, an
    unavailable frontend, or a cluster that changed between the grant and the query."""

    def __init__(self, node: NodeIdentity, failures: dict[str, Exception]) -> None:
        self.node = node
        self.failures = failures

    def get_workflow_handle(self, workflow_id: str) -> FlakyOrchestrator:
        return self

    async def _call(self, name: str, request: object, *_: object, **__: object) -> object:
        if name in self.failures:
            raise self.failures[name]
        assert name == Update.NODE_CALL and isinstance(request, NodeCallRequest), name
        join = JoinInfo(token="abcdef.0123456789abcdef", expires_at="2030-01-01T00:00:00Z",
                        ca_cert_hash="sha256:00", api_endpoint="127.0.0.1:6443")  # fmt: skip
        return NodeCallGrant(call=request.call, served=1, node_address="127.0.0.9", join=join)

    query = execute_update = _call


_UNAVAILABLE = RPCError("frontend unavailable", RPCStatusCode.UNAVAILABLE, b"")
_CLOSED = RPCError("workflow execution already completed", RPCStatusCode.NOT_FOUND, b"")


@pytest.mark.parametrize(
    ("kind", "method", "path", "failures", "expected"),
    [
        # The cluster began deleting between the grant and the query.
        (
            NodeKind.LEADER,
            "GET",
            "/v1/nodes/self/bootstrap",
            {Query.BOOTSTRAP_MATERIAL: WorkflowQueryFailedError("n is not a master of this cluster")},
            409,
        ),
        (
            NodeKind.LEADER,
            "GET",
            "/v1/nodes/self/bootstrap",
            {Query.BOOTSTRAP_MATERIAL: RPCTimeoutOrCancelledError()},
            503,
        ),
        (NodeKind.LEADER, "GET", "/v1/nodes/self/bootstrap", {Update.NODE_CALL: _UNAVAILABLE}, 503),
        (NodeKind.LEADER, "GET", "/v1/nodes/self/bootstrap", {Update.NODE_CALL: _CLOSED}, 401),
        (
            NodeKind.WORKER,
            "GET",
            "/v1/nodes/self/join",
            {Update.NODE_CALL: WorkflowUpdateRPCTimeoutOrCancelledError()},
            503,
        ),
        (
            NodeKind.WORKER,
            "POST",
            "/v1/nodes/self/report",
            {Update.NODE_CALL: RPCTimeoutOrCancelledError()},
            503,
        ),
    ],
    ids=[
        "cluster-changed",
        "query-timeout",
        "temporal-unavailable",
        "workflow-closed",
        "join-timeout",
        "report-timeout",
    ],
)
async def test_orchestrator_failures_are_a_4xx_or_503_with_retry_after_never_a_500(
    key_file: Path, kind: NodeKind, method: str, path: str, failures: dict[str, Exception], expected: int
) -> None:
    node = NodeIdentity(
        cluster="c", cluster_uid="u", pool="p", name="c-p-01", kind=kind, index=1, instance_uuid="i"
    )
    app = create_app(
        cast(Client, FlakyOrchestrator(node, failures)),
        NodeTokenVerifier(load_signing_key(key_file).public_key()),
    )
    # A material query that keeps failing is tried for 7.5 s before the 503.
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as api:
        response = await api.request(method, path, headers=token_for(key_file, node), json={"kind": "failed"})
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    else:
        assert response.headers["retry-after"] == "5"
    assert response.json()["detail"]
