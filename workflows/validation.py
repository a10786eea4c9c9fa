"""Where a command on a running cluster is validated, before anything is written.

Pure functions of the cluster's desired spec and state, called by the update
validators of ``ClusterWorkflow``: a refused update leaves no trace in history.
Each raises ``ApplicationError`` with a message that names the problem.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from temporalio.exceptions import ApplicationError

from pke_vsphere.contracts.commands import AddPoolRequest, RemovePoolRequest, ScaleRequest
from pke_vsphere.contracts.protocol import ErrorType
from pke_vsphere.contracts.spec import (
    MAX_CLUSTER_NODES,
    ClusterSpec,
    NodePoolSpec,
    NodeRole,
    validation_problems,
)

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], raw: object) -> M:
    """The request as its model, or a refusal naming each field and rule."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise refuse(f"invalid {model.__name__}: " + "; ".join(validation_problems(exc))) from None


def refuse(message: str, kind: ErrorType = ErrorType.INVALID_COMMAND) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


def _pool(spec: ClusterSpec, name: str) -> NodePoolSpec:
    try:
        return spec.pool(name)
    except KeyError:
        known = ", ".join(p.name for p in spec.pools)
        raise refuse(
            f"cluster {spec.name} has no pool {name!r} (pools: {known})", ErrorType.UNKNOWN_POOL
        ) from None


def not_deleting(deleting: bool, spec: ClusterSpec) -> None:
    if deleting:
        raise refuse(f"cluster {spec.name} is being deleted", ErrorType.DELETING)


def scale(spec: ClusterSpec, request: ScaleRequest, deleting: bool) -> None:
    not_deleting(deleting, spec)
    pool = _pool(spec, request.pool)
    total = sum(p.count for p in spec.pools) - pool.count + request.size
    if total > MAX_CLUSTER_NODES:
        raise refuse(
            f"pool {pool.name}: {request.size} nodes would make {total} in the cluster, "
            f"more than {MAX_CLUSTER_NODES}"
        )
    if pool.role is not NodeRole.MASTER:
        return
    topology = spec.control_plane.topology
    problem = topology.master_count_problem(request.size)
    if problem is not None:
        raise refuse(f"pool {pool.name}: {problem}")
    if request.size < pool.count and topology.runs_etcd:
        # API-server-only masters (external etcd) are drained and removed like workers.
        raise refuse(
            f"pool {pool.name}: removing masters is not supported yet in the {topology} topology (their "
            "etcd members would have to be removed first); the control plane can only grow"
        )
    if request.size > 1 and spec.control_plane.vip is None:
        raise refuse(
            f"pool {pool.name}: more than one master needs control_plane.vip, and this cluster was "
            "created without one"
        )


def add_pool(spec: ClusterSpec, request: AddPoolRequest, deleting: bool) -> None:
    not_deleting(deleting, spec)
    if request.pool.role is NodeRole.MASTER:
        raise refuse("a cluster has exactly one master pool; add worker pools only")
    if any(p.name == request.pool.name for p in spec.pools):
        raise refuse(f"cluster {spec.name} already has a pool {request.pool.name!r}", ErrorType.POOL_EXISTS)
    candidate = spec.model_copy(update={"pools": [*spec.pools, request.pool]})
    try:  # the spec's own rules hold for the result too
        ClusterSpec.model_validate(candidate.model_dump())
    except ValidationError as exc:
        raise refuse("; ".join(validation_problems(exc))) from None


def remove_pool(spec: ClusterSpec, request: RemovePoolRequest, deleting: bool) -> None:
    not_deleting(deleting, spec)
    pool = _pool(spec, request.pool)
    if pool.role is NodeRole.MASTER:
        raise refuse("the master pool cannot be removed; delete the cluster instead")
