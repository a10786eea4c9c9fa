"""Workflow ids derived from names, so two requests for one cluster or node
can never run twice at once."""

from __future__ import annotations

import uuid

CLUSTER_PREFIX = "pke-cluster-"
# Namespace for node instance UUIDs: uuid5(namespace, f"{cluster_uid}/{node}").
_NODE_NAMESPACE = uuid.UUID("8d3c3b7e-2d0c-4b57-9a8e-5c0f4a1d6e21")


def cluster_workflow_id(cluster: str) -> str:
    return f"{CLUSTER_PREFIX}{cluster}"


def node_workflow_id(cluster: str, node: str) -> str:
    return f"{CLUSTER_PREFIX}{cluster}/node/{node}"


def node_name(cluster: str, pool: str, index: int) -> str:
    return f"{cluster}-{pool}-{index:02d}"


def instance_uuid(cluster_uid: str, node: str) -> str:
    """Deterministic per cluster incarnation and node: a re-created cluster of the
    same name gets new UUIDs, so its VMs never collide with leftovers."""
    return str(uuid.uuid5(_NODE_NAMESPACE, f"{cluster_uid}/{node}"))
