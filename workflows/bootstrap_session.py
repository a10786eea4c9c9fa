"""Where a node's call is checked: the bootstrap session a node's workflow keeps.

A node's token works only while its node bootstraps. The session opens when
the node's VM is powered on and closes for good at the node's report, when the
node's workflow ends (given up, cancelled because the node is removed or its
cluster deleted, or failed) and at the node's bootstrap deadline. Its first call
binds it to the caller's node key; each secret-bearing answer is served once,
and again at most ``MAX_REPEATS`` times to the same key, never twice within
``REPEAT_SPACING``.

Pure logic: the workflow calls :meth:`refusal` from its update validator (a
refusal there costs no history) and :meth:`claim` first thing in the handler
(where the binding and the counts are recorded, in order, for every call).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pke_vsphere.contracts.messages import NodeCallRequest, NodeReportKind
from pke_vsphere.contracts.protocol import MAX_REPEATS, REPEAT_SPACING, NodeCall, Refusal
from pke_vsphere.contracts.spec import Timeouts
from pke_vsphere.contracts.state import NodeIdentity, NodeKind

# What each role asks for, and why not the rest (the node API's 403s).
CALLS = {
    NodeKind.LEADER: {NodeCall.BOOTSTRAP, NodeCall.ADDONS, NodeCall.REPORT},
    NodeKind.MASTER: {NodeCall.BOOTSTRAP, NodeCall.JOIN, NodeCall.REPORT},
    NodeKind.WORKER: {NodeCall.JOIN, NodeCall.REPORT},
}
WHY_NOT = {
    NodeCall.BOOTSTRAP: "only masters receive the cluster's CAs",
    NodeCall.ADDONS: "only the leader applies the cluster's add-ons",
    NodeCall.JOIN: "the leader does not join",
}
REPORTS = {
    NodeKind.LEADER: {NodeReportKind.READY, NodeReportKind.FAILED},
    NodeKind.MASTER: {NodeReportKind.JOINED, NodeReportKind.FAILED},
    NodeKind.WORKER: {NodeReportKind.JOINED, NodeReportKind.FAILED},
}


def bootstrap_window(steps: Timeouts, kind: NodeKind) -> timedelta:
    """From a node workflow's start to the node's last chance to report: every step's
    deadline. The session's deadline, and the node token's lifetime."""
    report = steps.leader_ready if kind is NodeKind.LEADER else steps.join
    return timedelta(seconds=steps.clone + steps.configure + steps.power_on + steps.ip + report)


class CallRefused(Exception):
    def __init__(self, refusal: Refusal, message: str) -> None:
        super().__init__(message)
        self.refusal = refusal
        self.message = message


@dataclass
class BootstrapSession:
    identity: NodeIdentity
    deadline: datetime
    opened: bool = False
    address: str | None = None
    closed: str | None = None
    """Why the session ended, once it has."""
    node_key_sha256: str | None = None
    served: dict[NodeCall, int] = field(default_factory=dict)
    last_served: dict[NodeCall, datetime] = field(default_factory=dict)

    def open(self) -> None:
        """The VM is powered on: its node may call from now on."""
        self.opened = True

    @property
    def answers_calls(self) -> bool:
        """Opened, with the node's address known: calls are judged on their merits."""
        return self.opened and self.address is not None

    def close(self, why: str) -> None:
        if self.closed is None:
            self.closed = why

    def refusal(self, request: NodeCallRequest, now: datetime) -> CallRefused | None:
        """Why the call cannot be served, judged without changing anything."""
        node = self.identity
        if (
            request.instance_uuid != node.instance_uuid
            or request.cluster_uid != node.cluster_uid
            or request.kind is not node.kind
        ):
            return CallRefused(Refusal.NOT_THIS_NODE, "the token names another incarnation of this node")
        if self.closed is not None:
            return CallRefused(
                Refusal.NOT_BOOTSTRAPPING, f"this node is no longer bootstrapping ({self.closed})"
            )
        if now >= self.deadline:
            return CallRefused(Refusal.NOT_BOOTSTRAPPING, "this node is past its bootstrap deadline")
        if request.call not in CALLS[node.kind]:
            return CallRefused(Refusal.NOT_FOR_ROLE, WHY_NOT[request.call])
        if request.call is NodeCall.REPORT:
            allowed = REPORTS[node.kind]
            if request.report is None or request.report.kind not in allowed:
                return CallRefused(
                    Refusal.REPORT_NOT_FOR_ROLE,
                    f"a {node.kind.value} reports one of: {', '.join(sorted(allowed))}",
                )
        if not self.answers_calls:
            return CallRefused(Refusal.NOT_YET, "not yet: VMware Tools has not reported this node's address")
        if self.node_key_sha256 is not None and request.node_key_sha256 != self.node_key_sha256:
            return CallRefused(Refusal.OTHER_KEY, "this node's bootstrap belongs to another node key")
        served = self.served.get(request.call, 0)
        if request.call is NodeCall.REPORT and served:
            return CallRefused(Refusal.NOT_BOOTSTRAPPING, "this node has reported already")
        if served > MAX_REPEATS:
            return CallRefused(
                Refusal.REPEATS_USED, f"the {request.call.value} answer was served {served} times"
            )
        last = self.last_served.get(request.call)
        if last is not None and now - last < REPEAT_SPACING:
            return CallRefused(Refusal.TOO_SOON, f"the {request.call.value} answer was served just now")
        return None

    def claim(self, request: NodeCallRequest, now: datetime) -> int:
        """Bind the session to the caller's key (first call) and count the answer.

        Returns:
            Which answer this is: 1 for the first, more for repeats.

        Raises:
            CallRefused: another call changed the session since the validator ran.
        """
        refused = self.refusal(request, now)
        if refused is not None:
            raise refused
        self.node_key_sha256 = request.node_key_sha256
        count = self.served.get(request.call, 0) + 1
        self.served[request.call] = count
        self.last_served[request.call] = now
        if request.call is NodeCall.REPORT:
            self.close(f"reported {request.report.kind.value}" if request.report else "reported")
        return count
