"""schemathesis against the node API's own OpenAPI description, over real HTTP
against the real workflows: without a token, with forged, expired, foreign or
garbage tokens, and with valid tokens of real nodes. No run gets a 5xx or a
response the description does not promise; without a valid token every answer
is a refusal and no cluster or node workflow changes."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Ok
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.protocol import NODE_KEY_HEADER
from pke_vsphere.contracts.state import ClusterPhase, ClusterStatus, NodeIdentity, NodeKind, NodePhase
from pke_vsphere.pki.node_tokens import NodeTokenSigner, load_signing_key
from sim.nodes import Behaviour
from starter import clusters, node_detail
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique

pytestmark = pytest.mark.asyncio(loop_scope="session")

MAX_EXAMPLES = 50
"""Per operation and generation mode; with derandomize the same requests every run."""

NODE_KEY = "fuzz-node-key-" + "f" * 30
"""The node key of every request with a token."""

# What a request of the node API could change: signals (reports) and updates (joins).
MESSAGE_EVENTS = {
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ADMITTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_REJECTED,
    EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_COMPLETED,
}

# The description's promises, checked on every response. positive_data_acceptance
# is left out: which report kinds a node may send depends on its token's role
# (a worker's "ready" is a 422), which no schema of the body can say.
CONFORMANCE = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
]


@dataclass
class FuzzRun:
    """What schemathesis sent and got."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    """(operation, status) -> requests"""
    refusals: Counter[tuple[int, str]] = field(default_factory=Counter)
    """(status, detail, or each problem's type for a list) -> count"""
    no_negative_cases: set[str] = field(default_factory=set)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def codes(self, operation: str | None = None) -> set[int]:
        return {code for (label, code) in self.statuses if operation in (None, label)}


def fuzz(url: str, authorizations: Sequence[str | None], checks: list[Callable[..., Any]]) -> FuzzRun:
    """Run schemathesis (positive and negative data) on every operation of the
    description served at ``url``, each request with one of ``authorizations`` as
    its whole Authorization header (None: no header at all) and the node key
    ``NODE_KEY``. Synchronous: call it from a thread, the server runs in the
    test's event loop."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    run = FuzzRun()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the description is valid OpenAPI
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                fuzz_operation(run, url, operation.as_strategy(generation_mode=mode), authorizations, checks)
            except Unsatisfiable:
                # Nothing of it can be invalid (no parameters, no body, no security).
                assert mode is GenerationMode.NEGATIVE, operation.label
                run.no_negative_cases.add(operation.label)
    return run


def fuzz_operation(
    run: FuzzRun,
    url: str,
    cases: st.SearchStrategy[Case[Any]],
    authorizations: Sequence[str | None],
    checks: list[Callable[..., Any]],
) -> None:
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, authorization=st.sampled_from(authorizations))
    def one(case: Case[Any], authorization: str | None) -> None:
        headers = None
        if authorization is None:  # no token at all
            if case.headers:
                case.headers.pop("Authorization", None)
        elif not (case.meta and case.meta.is_negative_at(ParameterLocation.HEADER)):
            # The header under test replaces a generated one, unless the case is about
            # a malformed Authorization header: that one is sent as generated.
            headers = {"Authorization": authorization, NODE_KEY_HEADER: NODE_KEY}
        # No session: a new connection per request. The harness's socket is made
        # without IPPROTO_TCP, so asyncio leaves TCP_NODELAY off and every response on
        # a reused connection waits ~40 ms for a delayed ACK.
        response = case.call(base_url=url, headers=headers)
        run.statuses[(case.operation.label, response.status_code)] += 1
        case.validate_response(
            response, checks=checks, headers=headers, transport_kwargs={"base_url": url, "headers": headers}
        )
        if response.status_code >= 400:  # a documented refusal (checked above): a Problem
            detail = response.json()["detail"]
            for problem in detail if isinstance(detail, list) else [{"type": detail}]:
                run.refusals[(response.status_code, problem["type"])] += 1

    one()


# --- the clusters the tokens name -----------------------------------------------------


@dataclass
class Clusters:
    waiting: ClusterStatus
    """Its leader stays silent: the leader's node workflow runs and would take a report."""
    ready: ClusterStatus
    """Ready: its workers would get join information."""

    @property
    def names(self) -> list[str]:
        return [self.waiting.name, self.ready.name]


async def leader_waits_for_its_report(stack: Stack, name: str) -> ClusterStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while loop.time() < deadline:
        try:
            status, _ = await node_detail.refine(stack.client, await clusters.status(stack.client, name))
            leader = next((n for n in status.nodes if n.identity.kind is NodeKind.LEADER), None)
            if leader is not None and leader.phase is NodePhase.BOOTSTRAPPING:
                return status
        except Exception:  # noqa: S110 - not started yet
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the leader of {name} did not reach Bootstrapping")


@pytest.fixture(scope="module")
async def fuzzed(stack: Stack) -> Clusters:
    waiting, ready = unique("fuzzw"), unique("fuzzr")
    stack.nodes.behaviours[f"{waiting}-master-01"] = Behaviour.SILENT
    await clusters.create(
        stack.client,
        cluster_spec(waiting, masters=1, workers=1, timeouts={"leader_ready": 300}),
        stack.task_queue,
    )
    await clusters.create(stack.client, cluster_spec(ready, masters=1, workers=1), stack.task_queue)
    settled = await wait_until_settled(stack, ready)
    assert settled.phase is ClusterPhase.READY, settled
    return Clusters(await leader_waits_for_its_report(stack, waiting), settled)


def identity(status: ClusterStatus, kind: NodeKind) -> NodeIdentity:
    return next(n.identity for n in status.nodes if n.identity.kind is kind)


async def snapshot(client: Client, names: list[str]) -> dict[str, Any]:
    """Each cluster's status and every signal and update in its workflow's and its
    node workflows' histories."""
    state: dict[str, Any] = {}
    for name in names:
        status = await clusters.status(client, name)
        state[name] = status.model_dump(mode="json")
        workflow_ids = [ids.cluster_workflow_id(name)]
        workflow_ids += [ids.node_workflow_id(name, n.name) for n in status.nodes]
        for workflow_id in workflow_ids:
            try:
                history = await client.get_workflow_handle(workflow_id).fetch_history()
            except RPCError as exc:  # a worker of the waiting cluster is not started yet
                assert exc.status is RPCStatusCode.NOT_FOUND, exc
                state[workflow_id] = None
                continue
            state[workflow_id] = [
                (e.event_id, EventType.Name(e.event_type))
                for e in history.events
                if e.event_type in MESSAGE_EVENTS
            ]
    return state


def bearer(token: str) -> str:
    return f"Bearer {token}"


def unauthorised_headers(key_file: Path, targets: list[NodeIdentity]) -> list[str | None]:
    """Authorization headers that name real nodes but must not act for them."""
    right = NodeTokenSigner(load_signing_key(key_file))
    other_key = Ed25519PrivateKey.generate()
    public_raw = (
        load_signing_key(key_file)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    ttl = timedelta(minutes=5)
    headers: list[str | None] = [
        "Bearer",
        "Bearer ",
        "bearer not-a-jwt",
        "Bearer a.b.c",
        "Basic dXNlcjpwYXNz",
        "Bearer " + "A" * 4096,
    ]
    for node in targets:
        valid = right.sign(node, ttl)
        claims = jwt.decode(valid, options={"verify_signature": False})
        header, payload, signature = valid.split(".")
        headers += [
            bearer(NodeTokenSigner(other_key).sign(node, ttl)),  # forged
            bearer(right.sign(node, timedelta(seconds=-60))),  # expired
            bearer(right.sign(node.model_copy(update={"cluster_uid": "an-earlier-incarnation"}), ttl)),
            bearer(right.sign(node.model_copy(update={"instance_uuid": "0" * 8}), ttl)),
            bearer(right.sign(node.model_copy(update={"kind": NodeKind.MASTER}), ttl)),
            bearer(jwt.encode(claims, "", algorithm="none")),  # unsigned
            bearer(jwt.encode(claims, public_raw, algorithm="HS256")),  # the public key as an HMAC secret
            bearer(f"{header}.{payload}.{signature[:-4]}AAAA"),  # a changed signature
            bearer(f"{header}.{payload}"),
        ]
    return headers


BODY_NOT_JSON = {(400, "There was an error parsing the body"), (422, "json_invalid")}
"""Refused before the token is looked at: a body that is not UTF-8, or not JSON."""


def assert_all_refused(run: FuzzRun) -> set[str]:
    """Every /v1 request got 401, except report bodies that are no report at all (400
    or 422, before the node's workflow is asked: nothing of them reaches it); returns
    the 401s' reasons."""
    assert run.no_negative_cases == {"GET /healthz"}
    assert run.codes("GET /healthz") == {200}
    for operation in ("GET /v1/nodes/self/bootstrap", "GET /v1/nodes/self/addons", "GET /v1/nodes/self/join"):
        assert run.codes(operation) == {401}, run.statuses
    assert run.codes("POST /v1/nodes/self/report") <= {400, 401, 422}, run.statuses
    # Our own refusals are single details; pydantic's a list of problems, each by type.
    ours = {detail for status, detail in run.refusals if status != 401 and " " in detail}
    assert ours <= {detail for _, detail in BODY_NOT_JSON}, run.refusals
    return {reason for status, reason in run.refusals if status == 401}


async def test_without_a_token_every_call_is_refused_and_nothing_changes(
    stack: Stack, node_api_url: str, fuzzed: Clusters
) -> None:
    before = await snapshot(stack.client, fuzzed.names)
    started = time.monotonic()
    run = await asyncio.to_thread(fuzz, node_api_url, [None], CONFORMANCE)
    print(f"no token: {run.requests} requests in {time.monotonic() - started:.1f} s: {run.statuses}")
    assert assert_all_refused(run) == {"missing bearer token"}
    assert await snapshot(stack.client, fuzzed.names) == before


async def test_forged_expired_or_foreign_tokens_are_refused_and_change_nothing(
    stack: Stack, node_api_url: str, key_file: Path, fuzzed: Clusters
) -> None:
    targets = [
        identity(fuzzed.waiting, NodeKind.LEADER),
        identity(fuzzed.ready, NodeKind.WORKER),
        identity(fuzzed.ready, NodeKind.LEADER),
    ]
    before = await snapshot(stack.client, fuzzed.names)
    started = time.monotonic()
    run = await asyncio.to_thread(fuzz, node_api_url, unauthorised_headers(key_file, targets), CONFORMANCE)
    print(f"bad tokens: {run.requests} requests in {time.monotonic() - started:.1f} s: {run.statuses}")
    # Each way in was tried and refused for its own reason: the signature, the expiry,
    # the node key's form, a node that is done, another incarnation of a booting one.
    reasons = assert_all_refused(run)
    expected = {
        "missing bearer token",
        "token invalid",
        "token expired",
        "this node is not bootstrapping",
        "the token names another incarnation of this node",
    }
    assert expected <= reasons <= expected | {f"missing or malformed {NODE_KEY_HEADER} header"}, reasons
    assert await snapshot(stack.client, fuzzed.names) == before


async def test_valid_tokens_get_no_server_error_and_touch_only_their_own_cluster(
    stack: Stack, node_api_url: str, key_file: Path, fuzzed: Clusters
) -> None:
    """The tokens of the booting leader (the waiting cluster's) and of the ready
    cluster's nodes, all valid signatures: the booting leader's calls are served
    as the protocol says, the ready cluster's are all refused and it does not change."""
    signer = NodeTokenSigner(load_signing_key(key_file))
    booting = identity(fuzzed.waiting, NodeKind.LEADER)
    tokens: list[str | None] = [
        bearer(signer.sign(node, timedelta(minutes=5)))
        for node in (
            booting,
            identity(fuzzed.ready, NodeKind.LEADER),
            identity(fuzzed.ready, NodeKind.WORKER),
        )
    ]
    ready_cluster = await snapshot(stack.client, [fuzzed.ready.name])
    started = time.monotonic()
    # ignored_auth: after each 2xx, the same request without the token and with a
    # wrong one is sent as well, and must be refused.
    checks = [*CONFORMANCE, schemathesis.checks.ignored_auth]
    run = await asyncio.to_thread(fuzz, node_api_url, tokens, checks)
    print(f"valid tokens: {run.requests} requests in {time.monotonic() - started:.1f} s: {run.statuses}")
    assert not {code for code in run.codes() if code >= 500}
    assert run.no_negative_cases == {"GET /healthz"}
    # The booting leader got its CAs and add-ons (once, and its repeats), then 409
    # (too soon) and 401 (used up); never join information; one report at most.
    for operation in ("GET /v1/nodes/self/bootstrap", "GET /v1/nodes/self/addons"):
        assert 200 in run.codes(operation) <= {200, 401, 409}, run.statuses
    assert run.statuses[("GET /v1/nodes/self/bootstrap", 200)] <= 3
    assert run.codes("GET /v1/nodes/self/join") <= {401, 403}, run.statuses
    assert run.statuses[("POST /v1/nodes/self/report", 202)] <= 1
    assert await snapshot(stack.client, [fuzzed.ready.name]) == ready_cluster
    after = await clusters.status(stack.client, fuzzed.ready.name)
    assert after.phase is ClusterPhase.READY
    assert not after.failed_nodes
