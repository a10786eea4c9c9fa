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
    """``CLUSTER-POOL-NN``: the index (1 to 999) of at least two digits, so the
    first 99 nodes of a pool keep the names of 0.2.0 (``-01``) and the rest
    count on (``-100``)."""
    return f"{cluster}-{pool}-{index:02d}"


def instance_uuid(cluster_uid: str, node: str, generation: int = 0) -> str:
    """Deterministic per cluster incarnation, node and generation: a re-created
    cluster of the same name, or a replaced VM, gets a new UUID, so it never
    collides with leftovers and an old VM's token stops working."""
    key = f"{cluster_uid}/{node}" if generation == 0 else f"{cluster_uid}/{node}#{generation}"
    return str(uuid.uuid5(_NODE_NAMESPACE, key))


# Schedule ids: "pke-scale.<cluster>.<pool>.<suffix>". Cluster and pool names are
# RFC 1123 labels without dots, so the dots make the owner unambiguous.
SCHEDULE_PREFIX = "pke-scale."


def schedule_id(cluster: str, pool: str, suffix: str) -> str:
    return f"{SCHEDULE_PREFIX}{cluster}.{pool}.{suffix}"


def schedule_belongs_to(schedule: str, cluster: str) -> bool:
    return schedule.startswith(f"{SCHEDULE_PREFIX}{cluster}.")


def scale_workflow_id(cluster: str, request_id: str) -> str:
    return f"pke-scale-{cluster}-{request_id}"


def delete_workflow_id(cluster: str) -> str:
    return f"pke-delete-{cluster}"


# Memo key of the VRRP router id a cluster uses (None without a VIP), read by
# activities/vrrp.py without asking the cluster's workflow.
VRRP_MEMO = "vrrp"
