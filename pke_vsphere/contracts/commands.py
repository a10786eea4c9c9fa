"""Commands on a running cluster: scale, add or remove a pool, reconcile, delete.

Each is an update on the cluster's workflow (validated before anything is
written) and, for scale and delete, also a workflow type of its own that the
Web UI, the ``temporal`` CLI and Schedules can start.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from pke_vsphere.contracts.protocol import Update
from pke_vsphere.contracts.spec import MAX_POOL_SIZE, NodePoolSpec


class ScaleRequest(BaseModel):
    """Update ``scale_pool``: set a pool's size."""

    pool: str = Field(min_length=1)
    size: int = Field(ge=0, le=MAX_POOL_SIZE)


class AddPoolRequest(BaseModel):
    """Update ``add_pool``: a new worker pool, launched at its ``count``."""

    pool: NodePoolSpec


class RemovePoolRequest(BaseModel):
    """Update ``remove_pool``: drain and remove every node of a worker pool, then the pool."""

    pool: str = Field(min_length=1)


class ScaleOutcome(BaseModel):
    cluster: str
    pool: str
    previous: int
    requested: int
    added: list[str] = Field(default_factory=list)
    removed: list[str] = Field(default_factory=list)
    failed: dict[str, str] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return not self.failed


class ReconcileRequest(BaseModel):
    """Update ``reconcile``: compare vCenter with the desired state now."""

    reason: str = "requested"


class DeleteRequest(BaseModel):
    """Update ``delete``."""

    reason: str = "requested"


class DeleteOutcome(BaseModel):
    cluster: str
    destroyed: list[str] = Field(default_factory=list)
    schedules_removed: list[str] = Field(default_factory=list)
    etcd_keys_deleted: int | None = None
    """With an external etcd: how many keys of the cluster's prefix were deleted."""
    etcd_problem: str | None = None
    """With an external etcd whose prefix could not be cleared: why (the keys are left)."""


class ScaleClusterInput(BaseModel):
    """Input of ``ScaleClusterWorkflow`` (what a schedule starts)."""

    cluster: str = Field(min_length=1)
    pool: str = Field(min_length=1)
    size: int = Field(ge=0, le=MAX_POOL_SIZE)


class DeleteClusterInput(BaseModel):
    """Input of ``DeleteClusterWorkflow``."""

    cluster: str = Field(min_length=1)


class ClusterUpdateCall(BaseModel):
    """Activity input: run one update on a cluster's workflow, idempotently
    (the update id makes a retried activity attach to the same update)."""

    cluster: str
    update: Update
    update_id: str
    argument: dict[str, object]
