"""The bootstrap session's decisions, without servers: who may be answered, when,
how often (workflows/bootstrap_session.py; the attacker tests run it for real)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pke_vsphere.contracts.messages import NodeCallRequest, NodeReport, NodeReportKind
from pke_vsphere.contracts.protocol import MAX_REPEATS, REPEAT_SPACING, NodeCall, Refusal
from pke_vsphere.contracts.state import NodeKind
from tests.harness import node_identity
from workflows.bootstrap_session import BootstrapSession, CallRefused

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEY, OTHER = "a" * 64, "b" * 64


def session(kind: NodeKind = NodeKind.WORKER, *, booting: bool = True) -> BootstrapSession:
    s = BootstrapSession(
        identity=node_identity(kind, 1 if kind is NodeKind.LEADER else 2), deadline=T0 + timedelta(hours=1)
    )
    if booting:
        s.open()
        s.address = "127.0.0.9"
    return s


def call(
    s: BootstrapSession,
    what: NodeCall,
    key: str = KEY,
    report: NodeReportKind | None = None,
    claims: dict[str, object] | None = None,
) -> NodeCallRequest:
    node = s.identity
    values = {
        "call": what,
        "cluster_uid": node.cluster_uid,
        "instance_uuid": node.instance_uuid,
        "kind": node.kind,
        "node_key_sha256": key,
        "report": NodeReport(kind=report) if report else None,
    }
    return NodeCallRequest.model_validate(values | (claims or {}))


def refusal(s: BootstrapSession, request: NodeCallRequest, at: datetime = T0) -> Refusal | None:
    refused = s.refusal(request, at)
    return refused.refusal if refused else None


def test_the_first_call_binds_the_node_key_and_each_answer_is_counted() -> None:
    s = session()
    assert s.claim(call(s, NodeCall.JOIN), T0) == 1
    assert refusal(s, call(s, NodeCall.JOIN, OTHER), T0 + timedelta(minutes=1)) is Refusal.OTHER_KEY
    assert refusal(s, call(s, NodeCall.JOIN), T0 + REPEAT_SPACING / 2) is Refusal.TOO_SOON
    at = T0
    for served in range(2, MAX_REPEATS + 2):
        at += REPEAT_SPACING
        assert s.claim(call(s, NodeCall.JOIN), at) == served
    assert refusal(s, call(s, NodeCall.JOIN), at + REPEAT_SPACING) is Refusal.REPEATS_USED


def test_the_report_ends_the_session_for_every_call() -> None:
    s = session(NodeKind.MASTER)
    s.claim(call(s, NodeCall.BOOTSTRAP), T0)
    s.claim(call(s, NodeCall.REPORT, report=NodeReportKind.JOINED), T0 + timedelta(seconds=5))
    assert s.closed == "reported joined"
    for what in NodeCall:
        later = T0 + timedelta(minutes=1)
        assert refusal(s, call(s, what, report=NodeReportKind.FAILED), later) is Refusal.NOT_BOOTSTRAPPING


def test_a_done_token_is_refused_before_its_role_is_looked_at() -> None:
    """So that a token read from guestinfo gets 401 for everything, never a 403."""
    s = session(NodeKind.WORKER)
    assert refusal(s, call(s, NodeCall.BOOTSTRAP)) is Refusal.NOT_FOR_ROLE
    s.close("given up")
    assert refusal(s, call(s, NodeCall.BOOTSTRAP)) is Refusal.NOT_BOOTSTRAPPING
    assert refusal(s, call(s, NodeCall.REPORT, report=NodeReportKind.READY)) is Refusal.NOT_BOOTSTRAPPING


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"instance_uuid": "0" * 8}, Refusal.NOT_THIS_NODE),
        ({"cluster_uid": "an-earlier-incarnation"}, Refusal.NOT_THIS_NODE),
        ({"kind": NodeKind.MASTER}, Refusal.NOT_THIS_NODE),
    ],
)
def test_a_token_of_another_incarnation_is_refused(claims: dict[str, object], expected: Refusal) -> None:
    s = session()
    assert refusal(s, call(s, NodeCall.JOIN, claims=claims)) is expected


def test_nothing_is_served_before_the_address_is_known_or_after_the_deadline() -> None:
    s = session(booting=False)
    assert refusal(s, call(s, NodeCall.JOIN)) is Refusal.NOT_YET
    s.open()
    assert refusal(s, call(s, NodeCall.JOIN)) is Refusal.NOT_YET
    s.address = "127.0.0.9"
    assert refusal(s, call(s, NodeCall.JOIN)) is None
    assert refusal(s, call(s, NodeCall.JOIN), s.deadline) is Refusal.NOT_BOOTSTRAPPING


@pytest.mark.parametrize(
    ("kind", "report", "expected"),
    [
        (NodeKind.LEADER, NodeReportKind.READY, None),
        (NodeKind.LEADER, NodeReportKind.JOINED, Refusal.REPORT_NOT_FOR_ROLE),
        (NodeKind.WORKER, NodeReportKind.READY, Refusal.REPORT_NOT_FOR_ROLE),
        (NodeKind.WORKER, NodeReportKind.FAILED, None),
    ],
)
def test_each_role_reports_what_it_may(
    kind: NodeKind, report: NodeReportKind, expected: Refusal | None
) -> None:
    s = session(kind)
    assert refusal(s, call(s, NodeCall.REPORT, report=report)) is expected


def test_a_claim_rechecks_what_changed_since_the_validator() -> None:
    """Two concurrent first calls with different keys both pass the validator; the
    second claim finds the session bound to the first."""
    s = session()
    first, second = call(s, NodeCall.JOIN, KEY), call(s, NodeCall.JOIN, OTHER)
    assert s.refusal(first, T0) is None and s.refusal(second, T0) is None
    s.claim(first, T0)
    with pytest.raises(CallRefused) as refused:
        s.claim(second, T0)
    assert refused.value.refusal is Refusal.OTHER_KEY
