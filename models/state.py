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


class ClusterPhase(StrEnum):
    PENDING = "Pending"
    CREATING_PKI = "CreatingPKI"
    STARTING_LEADER = "StartingLeader"
    STARTING_NODES = "StartingNodes"
    READY = "Ready"
    FAILED = "Failed"


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
    """Signal from a node's workflow to its cluster's workflow: a phase change."""

    name: str
    phase: NodePhase
    vm_ref: str | None = None
    ip: str | None = None
    error: str | None = None
    at: datetime


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

    @property
    def failed_nodes(self) -> list[NodeState]:
        return [n for n in self.nodes if n.phase is NodePhase.FAILED]
