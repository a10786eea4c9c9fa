"""VMware guestinfo: how cloud-init's VMware datasource receives a node's
cloud-config and metadata, plus the markers that tie a VM to its cluster."""

from __future__ import annotations

import base64
import gzip
import json

from models.state import NodeIdentity

ENCODING = "gzip+base64"
USERDATA = "guestinfo.userdata"
METADATA = "guestinfo.metadata"

# Markers: how a cluster's VMs are found in vCenter without relying on names.
MARKER_MANAGED_BY = "pke-vsphere.managed-by"
MARKER_CLUSTER = "pke-vsphere.cluster"
MARKER_CLUSTER_UID = "pke-vsphere.cluster-uid"
MARKER_POOL = "pke-vsphere.pool"
MARKER_NODE = "pke-vsphere.node"
MARKER_INSTALLATION = "pke-vsphere.installation"
"""Which installation of pke-vsphere owns the VM (PKE_VSPHERE_INSTALLATION_ID):
two of them on one vCenter never touch each other's VMs, even for clusters of
the same name."""
MANAGED_BY = "pke-vsphere"


def encode(text: str) -> str:
    # mtime=0 keeps the encoding reproducible for the same input.
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def decode(value: str, encoding: str) -> str:
    if encoding in ("gzip+base64", "gz+b64"):
        return gzip.decompress(base64.b64decode(value)).decode()
    if encoding in ("base64", "b64"):
        return base64.b64decode(value).decode()
    if encoding == "":
        return value
    raise ValueError(f"unknown guestinfo encoding {encoding!r}")


def metadata(identity: NodeIdentity) -> str:
    return json.dumps({"instance-id": identity.instance_uuid, "local-hostname": identity.name})


def owner_markers(installation: str, cluster: str) -> dict[str, str]:
    """The markers every VM of one cluster of one installation carries."""
    return {MARKER_MANAGED_BY: MANAGED_BY, MARKER_INSTALLATION: installation, MARKER_CLUSTER: cluster}


def extra_config(identity: NodeIdentity, userdata: str, installation: str) -> dict[str, str]:
    """Every extraConfig key a node's VM carries."""
    return {
        USERDATA: encode(userdata),
        f"{USERDATA}.encoding": ENCODING,
        METADATA: encode(metadata(identity)),
        f"{METADATA}.encoding": ENCODING,
        "disk.enableUUID": "TRUE",
        **owner_markers(installation, identity.cluster),
        MARKER_CLUSTER_UID: identity.cluster_uid,
        MARKER_POOL: identity.pool,
        MARKER_NODE: identity.name,
    }
