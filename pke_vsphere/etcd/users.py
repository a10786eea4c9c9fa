"""Each cluster's own etcd user: the common name of its masters' client
certificates, with one role of the same name that reads and writes the
cluster's prefix and nothing else. Preflight creates both (with the
orchestrator's root certificate) after claiming the prefix; deleting the
cluster, or its failed create, removes them with its keys."""

from __future__ import annotations


def cluster_user(cluster: str, cluster_uid: str) -> str:
    """One name per cluster incarnation (a re-created cluster of the same name is
    another user), short enough to be a certificate's common name (64 characters:
    12 + a 30-character cluster name + 1 + 12)."""
    return f"pke-vsphere:{cluster}:{cluster_uid.replace('-', '')[:12]}"
