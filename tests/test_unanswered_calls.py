"""Which node calls the node API treats as the same call (a retry joins the first
one's update), and when it forgets one (pke_vsphere/nodeapi/unanswered.py). The
retry itself, against Temporal, is in test_node_credentials.py."""

from __future__ import annotations

import hashlib

from pke_vsphere.contracts.messages import NodeCallRequest, NodeReport, NodeReportKind
from pke_vsphere.contracts.protocol import NodeCall
from pke_vsphere.contracts.state import NodeKind
from pke_vsphere.nodeapi.unanswered import SameCall, UnansweredCalls

WORKFLOW = "pke-node/demo/demo-workers-01"


def request(call: NodeCall = NodeCall.JOIN, key: str = "a", **changes: object) -> NodeCallRequest:
    fields: dict[str, object] = {
        "call": call,
        "cluster_uid": "uid-1",
        "instance_uuid": "vm-uuid-1",
        "kind": NodeKind.WORKER,
        "node_key_sha256": hashlib.sha256(key.encode()).hexdigest(),
        **changes,
    }
    return NodeCallRequest.model_validate(fields)


def test_a_retry_of_an_unanswered_call_gets_its_update_id_and_an_answered_one_does_not() -> None:
    calls = UnansweredCalls()
    same = SameCall.of(WORKFLOW, request())
    first, joined = calls.update_id(same)
    assert not joined
    assert calls.update_id(SameCall.of(WORKFLOW, request())) == (first, True)
    calls.answered(same)
    after, joined = calls.update_id(same)
    assert not joined and after != first


def test_another_key_token_call_report_or_node_is_another_call() -> None:
    calls = UnansweredCalls()
    base, _ = calls.update_id(SameCall.of(WORKFLOW, request()))
    others = [
        SameCall.of(WORKFLOW, request(key="b")),
        SameCall.of(WORKFLOW, request(instance_uuid="vm-uuid-2")),
        SameCall.of(WORKFLOW, request(call=NodeCall.BOOTSTRAP)),
        SameCall.of("pke-node/demo/demo-workers-02", request()),
        SameCall.of(WORKFLOW, request(NodeCall.REPORT, report=NodeReport(kind=NodeReportKind.JOINED))),
        SameCall.of(WORKFLOW, request(NodeCall.REPORT, report=NodeReport(kind=NodeReportKind.FAILED))),
    ]
    ids = [calls.update_id(other) for other in others]
    assert all(not joined for _, joined in ids)
    assert len({base, *(update_id for update_id, _ in ids)}) == len(others) + 1


def test_unanswered_calls_are_forgotten_after_their_time_and_past_the_limit() -> None:
    expired = UnansweredCalls(ttl_seconds=-1.0)  # every id older than now
    same = SameCall.of(WORKFLOW, request())
    first, _ = expired.update_id(same)
    assert expired.update_id(same)[0] != first

    bounded = UnansweredCalls(limit=2)
    keys = [SameCall.of(WORKFLOW, request(key=k)) for k in "abc"]
    oldest, _ = bounded.update_id(keys[0])
    for key in keys[1:]:
        bounded.update_id(key)
    assert len(bounded) == 2
    assert bounded.update_id(keys[0])[0] != oldest
