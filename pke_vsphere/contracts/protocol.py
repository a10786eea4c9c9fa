"""Names of the protocol between booting nodes, the node API and a node's workflow.

A booting node calls the node API with two credentials: its token (a JWT from its
guestinfo, naming cluster, node, role and incarnation) and its node key (random
bytes the node drew at boot and never wrote outside its own memory and /run).
The node API checks the token's signature and expiry itself, then asks the node's
own workflow, with the update :data:`NODE_CALL_UPDATE`, whether this call may be
served. The workflow is the one authority on whether the node is bootstrapping.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

NODE_CALL_UPDATE = "node_call"
"""Update on a node's workflow: may this call of the node be served?"""

NODE_KEY_HEADER = "X-PKE-Node-Key"
"""The node key: the first call binds the node's bootstrap to it; every later call
must carry the same one. Only its SHA-256 reaches the workflow."""

NODE_KEY_PATTERN = r"^[A-Za-z0-9_-]{43,128}$"
"""At least 32 random bytes, base64url without padding."""

MAX_REPEATS = 2
"""How many times a secret-bearing answer is served again (the node's network
retries) after the first, to the same node key."""

REPEAT_SPACING = timedelta(seconds=2)
"""A repeat sooner than this after the last answer of the same call is refused
(409, retry later): concurrent duplicates get one answer."""


class NodeCall(StrEnum):
    """What a node asks for; each is served once per incarnation (plus repeats)."""

    BOOTSTRAP = "bootstrap"
    """A master's CAs, keys and keepalived configuration."""
    ADDONS = "addons"
    """The leader's add-on objects (cloud provider, MetalLB, CSI)."""
    JOIN = "join"
    """A follower's or worker's own kubeadm bootstrap token."""
    REPORT = "report"
    """ready, joined or failed: ends the node's bootstrap, and every credential of it."""


class Refusal(StrEnum):
    """Why a node's workflow refuses a call: the error type of the update's failure.
    The node API turns :attr:`NOT_YET` and :attr:`TOO_SOON` into 409 with
    Retry-After, the role refusals into 403 and 422, and every other into 401.
    A token whose node is done gets 401 whatever it asks for: the checks of the
    token come before those of the role."""

    NOT_YET = "NotYet"
    """The node's VM has no address yet: nothing can be served before it."""
    TOO_SOON = "RepeatTooSoon"
    """A repeat arrived within REPEAT_SPACING of the last answer."""
    NOT_THIS_NODE = "NotThisNode"
    """The token names another incarnation, cluster incarnation or role."""
    NOT_BOOTSTRAPPING = "NotBootstrapping"
    """The node reported, was given up, cancelled, or is past its bootstrap deadline."""
    OTHER_KEY = "OtherNodeKey"
    """Another node key made the first call of this bootstrap."""
    REPEATS_USED = "RepeatsUsedUp"
    """This answer was served 1 + MAX_REPEATS times already."""
    NOT_FOR_ROLE = "NotForThisRole"
    """A live node asks for what its role never gets (a worker for the CAs): 403."""
    REPORT_NOT_FOR_ROLE = "ReportNotForThisRole"
    """A live node reports what its role never reports (a worker "ready"): 422."""

    @property
    def retry_later(self) -> bool:
        return self in (Refusal.NOT_YET, Refusal.TOO_SOON)
