"""The protocol's names, in one place: every workflow type, query, update and
signal, every error type a workflow or activity raises, and the node calls.

Workflows, activities, the node API, the starter and the tests import these;
no such name is spelled as a literal anywhere else (tests/test_protocol.py).
A rename here renames it everywhere, or fails type checking.

**Node calls.** A booting node calls the node API with two credentials: its token
(a JWT from its guestinfo, naming cluster, node, role and incarnation) and its node
key (random bytes the node drew at boot and never wrote outside its own memory and
/run). The node API checks the token's signature and expiry itself, then asks the
node's own workflow, with the update :attr:`Update.NODE_CALL`, whether this call may
be served. The workflow is the one authority on whether the node is bootstrapping.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum

VCENTER_QUEUE_SUFFIX = "-vcenter"


def vcenter_task_queue(task_queue: str) -> str:
    """The task queue of the vCenter activities of the workflows on ``task_queue``
    (``pke-vsphere`` → ``pke-vsphere-vcenter``): workers started with
    ``--role vcenter`` poll only it, so a thousand threads waiting on vCenter do
    not share a process, and its GIL, with the workflows."""
    return f"{task_queue}{VCENTER_QUEUE_SUFFIX}"


class WorkflowType(StrEnum):
    """What the Web UI, the ``temporal`` CLI and schedules start."""

    CLUSTER = "ClusterWorkflow"
    """One per cluster (id ``pke-cluster-NAME``), for its whole life."""
    NODE = "NodeWorkflowV2"
    """A child of the cluster's: one VM from clone to joined."""
    NODE_V1 = "NodeWorkflow"
    """The node workflow of 0.2, for the node workflows a 0.2 worker started."""
    SCALE = "ScaleClusterWorkflow"
    """Runs :attr:`Update.SCALE_POOL` on a cluster (schedules start it)."""
    DELETE = "DeleteClusterWorkflow"
    """Runs :attr:`Update.DELETE`, then sweeps vCenter for the cluster's VMs."""
    VCENTER_SLOTS = "VCenterTaskSlotsWorkflow"
    """The vCenter task cap shared by every worker (leased per worker; the
    per-task ``VCenterSlotsWorkflow`` of 0.3 is retired)."""


class Query(StrEnum):
    STATUS = "status"
    """Cluster workflow: its :class:`~pke_vsphere.contracts.state.ClusterStatus`."""
    BOOTSTRAP_MATERIAL = "bootstrap_material"
    """Cluster workflow: a master's CAs and keys (the node API, after the node's own
    workflow granted the call)."""
    NODE_PHASE = "phase"
    """Node workflow of 0.2: where the node is."""
    NODE_PROGRESS = "progress"
    """Node workflow: where the node is, with its VM and address once known."""
    SLOTS = "slots"
    """vCenter slots workflow: which worker holds how many task slots."""


class Patch(StrEnum):
    """``workflow.patched`` ids: each marks a change to what a workflow does, so
    that histories recorded before it replay as they ran."""

    NODE_WORKFLOW_V2 = "node-workflow-v2"
    """The cluster starts :attr:`WorkflowType.NODE` children (0.3) instead of
    :attr:`WorkflowType.NODE_V1`, with the placement as its preflight resolved it."""
    NODE_WORKFLOWS_BY_ACTIVITY = "node-workflows-by-activity"
    """The nodes launched together (a create's followers and workers, a scale-up)
    are started and awaited by activities, not as children of the cluster."""
    NODE_STARTS_TOGETHER = "node-starts-together"
    """Those nodes' workflows are started by several activities at once, not one
    activity after another."""
    CANCELLED_NODE_TOKENS = "cancelled-node-tokens"
    """A cancelled node workflow deletes its join token too (before, only one that
    failed did; a cancelled one's token waited for its expiry)."""
    DESTROY_IN_BATCHES = "destroy-in-batches"
    """A delete destroys its VMs fifty to a ``destroy_vms`` activity, not one to a
    ``destroy_vm``."""
    DESTROY_WHILE_SWEEPING = "destroy-while-sweeping"
    """A delete destroys the VMs its nodes recorded while its sweep looks for every
    VM with the cluster's markers (then destroys what only the sweep found),
    instead of destroying nothing until the sweep ends."""
    JOIN_TOKENS_BACK_IN_ROUNDS = "join-tokens-back-in-rounds"
    """The nodes launched together are asked (``hand_back_join_tokens``) to end
    their workflows with their join tokens' ids once they joined, and the cluster
    deletes the tokens of the nodes each round of outcomes brings, in one
    activity; before, each node workflow deleted its own (a local activity that
    held the workflow task of the node's report open for an API call)."""


class Update(StrEnum):
    SCALE_POOL = "scale_pool"
    ADD_POOL = "add_pool"
    REMOVE_POOL = "remove_pool"
    RECONCILE = "reconcile"
    DELETE = "delete"
    NODE_CALL = "node_call"
    """Node workflow: may this call of the node be served?"""
    LEASE_SLOTS = "lease_slots"
    """vCenter slots workflow: a worker renews, gives back or asks for task slots."""


class Signal(StrEnum):
    NODE_PROGRESS = "node_progress"
    """Node workflow → cluster workflow: the node's phase changed."""


class ErrorType(StrEnum):
    """The ``type`` of every ``ApplicationError`` raised on purpose (besides
    :class:`Refusal`, the node call's); what the CLI and the node API match on."""

    # Starting and validating
    INVALID_SPEC = "InvalidSpec"
    INVALID_WORKFLOW_ID = "InvalidWorkflowId"
    INVALID_COMMAND = "InvalidCommand"
    UNKNOWN_POOL = "UnknownPool"
    POOL_EXISTS = "PoolExists"
    NOT_READY_YET = "ClusterNotReadyYet"
    """The cluster's workflow cannot answer yet (starting, or no PKI yet): retry."""
    DELETING = "ClusterDeleting"
    NO_SUCH_CLUSTER = "NoSuchCluster"
    NOT_A_MASTER = "NotAMaster"
    # Creating
    PREFLIGHT_FAILED = "PreflightFailed"
    LEADER_FAILED = "LeaderFailed"
    NODES_NOT_LAUNCHED = "NodesNotLaunched"
    """A create could not start (or watch) its other nodes' workflows."""
    # A node
    ADDRESS_CONFLICT = "AddressConflict"
    ADDRESS_MISMATCH = "AddressMismatch"
    NODE_REPORT_TIMEOUT = "NodeReportTimeout"
    NODE_BOOTSTRAP_FAILED = "NodeBootstrapFailed"
    IP_TIMEOUT = "IpTimeout"
    # Commands
    COMMAND_FAILED = "CommandFailed"
    COMMAND_REFUSED = "CommandRefused"
    SCALE_INCOMPLETE = "ScaleIncomplete"
    # The cluster's API and etcd
    KUBE_API_ERROR = "KubeApiError"
    KUBE_API_UNREACHABLE = "KubeApiUnreachable"
    NODE_NOT_READY = "NodeNotReady"
    ETCD_CREDENTIAL = "EtcdCredential"
    ETCD_UNAVAILABLE = "EtcdUnavailable"


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

NODE_REQUEST_SECONDS = 30
"""How long a node waits for one answer of the node API (its bootstrap script's
``curl --max-time``): the node API's own waits fit within it."""


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
