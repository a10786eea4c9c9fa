"""VMware guestinfo: how cloud-init's VMware datasource receives a node's
cloud-config and metadata, plus the markers that tie a VM to its cluster."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Mapping

from pke_vsphere.contracts.state import NodeIdentity

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


# What vCenter takes in a VM's extraConfig (guestinfo): about 64 KiB per value
# and 1 MiB in all; a clone or reconfigure beyond that fails.
VALUE_LIMIT = 64 * 1024
TOTAL_LIMIT = 1024 * 1024


class TooLarge(ValueError):
    """A node's guestinfo would exceed what vCenter takes."""


def check_limits(extra: Mapping[str, str], sources: Mapping[str, int]) -> None:
    """Refuse guestinfo vCenter would refuse, naming the spec field that grew it most
    (``sources``: spec field -> bytes it adds to the cloud-config).

    Raises:
        TooLarge: a value is over VALUE_LIMIT or all of them over TOTAL_LIMIT.
    """
    sizes = {key: len(key.encode()) + len(value.encode()) for key, value in extra.items()}
    over = [key for key, size in sizes.items() if size > VALUE_LIMIT]
    total = sum(sizes.values())
    if not over and total <= TOTAL_LIMIT:
        return
    culprit = max(sources.items(), key=lambda item: item[1], default=None)
    blame = (
        f"; {culprit[0]} ({culprit[1] / 1024:.1f} KiB in the cloud-config) grows it most" if culprit else ""
    )
    if over:
        raise TooLarge(
            f"{over[0]} would be {sizes[over[0]] / 1024:.1f} KiB, over the {VALUE_LIMIT // 1024} KiB "
            f"vCenter takes per guestinfo value{blame}"
        )
    raise TooLarge(
        f"the VM's guestinfo would be {total / 1024:.1f} KiB, over the {TOTAL_LIMIT // 1024} KiB vCenter "
        f"takes in all{blame}"
    )


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


OWNER_MARKERS = (MARKER_MANAGED_BY, MARKER_INSTALLATION, MARKER_CLUSTER)
"""The keys of :func:`owner_markers`."""


def owner_markers(installation: str, cluster: str) -> dict[str, str]:
    """The markers every VM of one cluster of one installation carries."""
    return {MARKER_MANAGED_BY: MANAGED_BY, MARKER_INSTALLATION: installation, MARKER_CLUSTER: cluster}


def userdata_config(userdata: str) -> dict[str, str]:
    """The extraConfig keys that carry a cloud-config."""
    return {USERDATA: encode(userdata), f"{USERDATA}.encoding": ENCODING}


def extra_config(identity: NodeIdentity, userdata: str, installation: str) -> dict[str, str]:
    """Every extraConfig key a node's VM carries."""
    return {
        **userdata_config(userdata),
        METADATA: encode(metadata(identity)),
        f"{METADATA}.encoding": ENCODING,
        "disk.enableUUID": "TRUE",
        **owner_markers(installation, identity.cluster),
        MARKER_CLUSTER_UID: identity.cluster_uid,
        MARKER_POOL: identity.pool,
        MARKER_NODE: identity.name,
    }
