"""Which cluster owns a prefix of a shared etcd. Preflight claims a prefix by
creating its owner key (``PREFIX/pke-vsphere.owner`` = ``CLUSTER/UID``) in one
transaction, so two clusters can never both take it; a delete clears the
prefix only in a transaction that finds its own owner key there. kube-apiserver
reads only its resources' paths under the prefix and ignores this key."""

from __future__ import annotations

OWNER_KEY = "pke-vsphere.owner"


def owner_key(prefix: str) -> str:
    return f"{prefix}/{OWNER_KEY}"


def owner_value(cluster: str, cluster_uid: str) -> str:
    return f"{cluster}/{cluster_uid}"


def ancestors(prefix: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]``: the prefixes whose data would contain this one's."""
    parts = prefix.strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]
