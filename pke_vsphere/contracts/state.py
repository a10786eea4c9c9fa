"""What a cluster and its nodes are doing: phases and the status query's answer."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class NodeKind(StrEnum):
    """A node's part in the bootstrap."""

    LEADER = "leader"
    """The first master: initialises the control plane, then reports ready."""
    MASTER = "master"
    """A follower master: joins the control plane once the leader is ready."""
    WORKER = "worker"
    """Joins as a worker once the leader is ready."""


class NodePhase(StrEnum):
    PENDING = "Pending"
    CLONING = "Cloning"
    CONFIGURING = "Configuring"
    POWERING_ON = "PoweringOn"
    WAITING_FOR_IP = "WaitingForIP"
    BOOTSTRAPPING = "Bootstrapping"
    READY = "Ready"
    FAILED = "Failed"
    DRAINING = "Draining"
    REMOVING = "Removing"


class ClusterPhase(StrEnum):
    PENDING = "Pending"
    PREFLIGHT = "Preflight"
    CREATING_PKI = "CreatingPKI"
    STARTING_LEADER = "StartingLeader"
    STARTING_NODES = "StartingNodes"
    READY = "Ready"
    FAILED = "Failed"
    DELETING = "Deleting"
    DELETED = "Deleted"


class NodeIdentity(BaseModel):
    """Who a node is. Recorded in workflow history before its VM is cloned, so a
    retried clone finds the VM by its instance UUID instead of making another."""

    cluster: str
    cluster_uid: str
    pool: str
    name: str
    kind: NodeKind
    index: int
    instance_uuid: str
    generation: int = 0
    """Bumped each time the node's VM is replaced, so the new VM gets a new
    instance UUID and the old VM's token stops working."""


class NodeState(BaseModel):
    """One row of the status query."""

    identity: NodeIdentity
    phase: NodePhase = NodePhase.PENDING
    vm_ref: str | None = None
    ip: str | None = None
    last_error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    powered_on_at: datetime | None = None
    ready_at: datetime | None = None

    @property
    def name(self) -> str:
        return self.identity.name


class NodeProgress(BaseModel):
    """Where a node is: the answer of a node workflow's ``progress`` query (and the
    phase signal 0.2's node workflows sent their cluster's)."""

    name: str
    phase: NodePhase
    vm_ref: str | None = None
    ip: str | None = None
    error: str | None = None
    at: datetime


class Drift(BaseModel):
    """A difference between vCenter and the cluster's desired state."""

    kind: str
    """'missing' (VM gone), 'powered-off', or 'orphan' (marked with the cluster, not owned)."""
    name: str
    detail: str


class ReconcileReport(BaseModel):
    at: datetime
    reason: str
    drift: list[Drift] = Field(default_factory=list)
    actions: list[str] = Field(default_factory=list)


class ClusterServices(BaseModel):
    """What the cluster provides in place of a cloud's: its API endpoint and VIP."""

    topology: str | None = None
    """Where etcd and the API servers run: dedicated, shared or external_etcd."""
    etcd_endpoints: list[str] = Field(default_factory=list)
    """The external etcd's endpoints (empty when the masters run etcd)."""
    etcd_prefix: str | None = None
    api_endpoint: str | None = None
    vip: str | None = None
    dns_name: str | None = None
    vrrp_router_id: int | None = None
    network: str | None = None
    """The port group the nodes (and the VRRP instance) are on."""
    load_balancer_addresses: list[str] = Field(default_factory=list)
    """MetalLB's address ranges for Services of type LoadBalancer."""
    storage_class: str | None = None
    storage_class_default: bool = False
    cloud_provider: str | None = None
    """PKE's --kubernetes-cloud-provider of the nodes: 'external' (the vSphere CPI add-on),
    'vsphere' (the in-tree provider, clusters created before the add-on) or None."""


class ClusterStatus(BaseModel):
    """Answer of the ``status`` query."""

    name: str
    cluster_uid: str | None
    phase: ClusterPhase
    api_endpoint: str | None = None
    error: str | None = None
    created_at: datetime | None = None
    ready_at: datetime | None = None
    nodes: list[NodeState] = Field(default_factory=list)
    pools: dict[str, int] = Field(default_factory=dict)
    """Desired size of each pool."""
    operation: str | None = None
    """The command running now, e.g. 'scale workers 2 -> 5'."""
    last_reconcile: ReconcileReport | None = None
    services: ClusterServices | None = None

    @property
    def failed_nodes(self) -> list[NodeState]:
        return [n for n in self.nodes if n.phase is NodePhase.FAILED]
