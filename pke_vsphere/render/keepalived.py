"""keepalived configuration for the control-plane VIP: one VRRP instance per
cluster, the leader at the highest priority, a health check of the local API
server that drops the priority of a master whose API server is down.

Without an interface in the spec the configuration names ``@VRRP_INTERFACE@``,
which the node's bootstrap script replaces with the interface that holds its
address before keepalived reads the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

LEADER_PRIORITY = 150
FOLLOWER_PRIORITY = 100
HEALTH_CHECK_WEIGHT = -60  # takes a leader below a healthy follower


INTERFACE_PLACEHOLDER = "@VRRP_INTERFACE@"
# keepalived's PASS authentication uses at most 8 characters.
MAX_PASSWORD = 8


def router_id(cluster_uid: str) -> int:
    """A VRRP router id (1..255) derived from the cluster's uid."""
    return int(hashlib.sha256(cluster_uid.encode()).hexdigest(), 16) % 255 + 1


class RouterIdTaken(ValueError):
    """The requested VRRP router id is in use by another cluster on the same network."""


def choose_router_id(cluster_uid: str, requested: int | None, taken: Mapping[int, str]) -> int:
    """The requested id if it is free, else the derived one or the next free after it.

    ``taken`` maps router ids already used on the cluster's network to the
    cluster using each.
    """
    if requested is not None:
        if requested in taken:
            raise RouterIdTaken(
                f"control_plane.vrrp_router_id {requested} is already used by cluster "
                f"{taken[requested]!r} on the same network; choose another id (1-255)"
            )
        return requested
    start = router_id(cluster_uid)
    for offset in range(255):
        candidate = (start - 1 + offset) % 255 + 1
        if candidate not in taken:
            return candidate
    raise RouterIdTaken("all 255 VRRP router ids are in use on this network; use another network")


def priority(index: int) -> int:
    """Node 1 (the leader) wins; followers step down by index so ties never happen."""
    return LEADER_PRIORITY if index == 1 else FOLLOWER_PRIORITY - index


def render(
    *,
    cluster: str,
    vip: str,
    interface: str | None,
    router: int,
    node_priority: int,
    password: str,
    api_port: int,
) -> str:
    if not 1 <= router <= 255:
        raise ValueError(f"VRRP router id {router} outside 1..255")
    if not 1 <= len(password) <= MAX_PASSWORD or not password.isalnum():
        raise ValueError(f"the VRRP password must be 1-{MAX_PASSWORD} letters and digits")
    return f"""# Managed by pke-vsphere for cluster {cluster}.
global_defs {{
    router_id pke_{cluster.replace("-", "_")}
    script_user root
    enable_script_security
}}

vrrp_script check_apiserver {{
    script "/usr/bin/curl --silent --max-time 2 --insecure https://127.0.0.1:{api_port}/healthz"
    interval 3
    timeout 3
    fall 2
    rise 2
    weight {HEALTH_CHECK_WEIGHT}
}}

vrrp_instance pke_{cluster.replace("-", "_")} {{
    state {"MASTER" if node_priority == LEADER_PRIORITY else "BACKUP"}
    interface {interface or INTERFACE_PLACEHOLDER}
    virtual_router_id {router}
    priority {node_priority}
    advert_int 1
    authentication {{
        auth_type PASS
        auth_pass {password}
    }}
    virtual_ipaddress {{
        {vip}
    }}
    track_script {{
        check_apiserver
    }}
}}
"""
