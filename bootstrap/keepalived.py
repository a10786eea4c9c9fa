"""keepalived configuration for the control-plane VIP: one VRRP instance per
cluster, the leader at the highest priority, a health check of the local API
server that drops the priority of a master whose API server is down."""

from __future__ import annotations

import hashlib

LEADER_PRIORITY = 150
FOLLOWER_PRIORITY = 100
HEALTH_CHECK_WEIGHT = -60  # takes a leader below a healthy follower


def router_id(cluster_uid: str) -> int:
    """A VRRP router id (1..255) derived from the cluster's uid."""
    return int(hashlib.sha256(cluster_uid.encode()).hexdigest(), 16) % 255 + 1


def priority(index: int) -> int:
    """Node 1 (the leader) wins; followers step down by index so ties never happen."""
    return LEADER_PRIORITY if index == 1 else FOLLOWER_PRIORITY - index


def render(
    *,
    cluster: str,
    vip: str,
    interface: str,
    router: int,
    node_priority: int,
    password: str,
    api_port: int = 6443,
) -> str:
    if not 1 <= router <= 255:
        raise ValueError(f"VRRP router id {router} outside 1..255")
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
    interface {interface}
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
