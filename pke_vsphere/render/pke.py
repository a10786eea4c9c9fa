"""The ``pke install`` command line for each bootstrap role.

Values a node only learns at boot (its address, the join token and the CA hash)
are shell variables that the bootstrap script fills in: ``$ADVERTISE_ADDRESS``,
``$JOIN_TOKEN``, ``$CA_CERT_HASH`` and ``$API_ENDPOINT``, each in double quotes.
A master's API server listens on ``control_plane.port``: PKE takes the port of
``--kubernetes-advertise-address=HOST:PORT`` (``$API_PORT``, from node.env).
Every other value is shell-quoted as a whole argument, so no spec value can
break out of its flag.
"""

from __future__ import annotations

import shlex

from pke_vsphere.contracts.messages import NodeBootstrapSettings
from pke_vsphere.contracts.state import NodeIdentity, NodeKind

CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane:NoSchedule"
POOL_LABEL = "node.pke-vsphere.io/pool"
# Where the bootstrap script writes an external etcd's CA and client certificate.
ETCD_CA_FILE = "/etc/kubernetes/pki/etcd/external-ca.crt"
ETCD_CERT_FILE = "/etc/kubernetes/pki/apiserver-etcd-client.crt"
ETCD_KEY_FILE = "/etc/kubernetes/pki/apiserver-etcd-client.key"


def _flag(name: str, value: object) -> str:
    """``--name=value`` as one shell word, whatever the value holds."""
    return shlex.quote(f"--{name}={value}")


def _from_boot(name: str, *variables: str) -> str:
    """``--name="$VARIABLE"``: a value the script learns at boot (``$A:$B`` for two)."""
    return f'--{name}="' + ":".join(f"${v}" for v in variables) + '"'


def install_args(identity: NodeIdentity, settings: NodeBootstrapSettings) -> list[str]:
    """Arguments of ``pke install`` for this node, each one shell word."""
    common = [
        _flag("kubernetes-version", settings.kubernetes_version),
        _flag("kubernetes-node-labels", f"{POOL_LABEL}={identity.pool}"),
        # 'external': the vSphere CPI initializes the node (the in-tree provider is gone).
        *([_flag("kubernetes-cloud-provider", settings.cloud_provider)] if settings.cloud_provider else []),
    ]
    joins = [
        _from_boot("kubernetes-node-token", "JOIN_TOKEN"),
        _from_boot("kubernetes-api-server-ca-cert-hash", "CA_CERT_HASH"),
    ]
    if identity.kind is NodeKind.WORKER:
        return ["worker", *common, _from_boot("kubernetes-api-server", "API_ENDPOINT"), *joins]
    master = [
        "master",
        *common,
        _flag("kubernetes-cluster-name", identity.cluster),
        _flag("kubernetes-master-mode", settings.master_mode),
        _from_boot("kubernetes-advertise-address", "ADVERTISE_ADDRESS", "API_PORT"),
        _from_boot("kubernetes-api-server", "API_ENDPOINT"),
        _flag("kubernetes-pod-network-cidr", settings.pod_cidr),
        _flag("kubernetes-service-cidr", settings.service_cidr),
        # PKE taints masters NoSchedule unless told otherwise; the shared topology says none.
        _flag("taints", "" if settings.schedulable_masters else CONTROL_PLANE_TAINT),
        *(_flag("kubernetes-api-server-cert-sans", name) for name in settings.api_server_cert_sans),
    ]
    if settings.etcd_endpoints:
        master += [
            _flag("etcd-endpoints", ",".join(settings.etcd_endpoints)),
            _flag("etcd-ca-file", ETCD_CA_FILE),
            _flag("etcd-cert-file", ETCD_CERT_FILE),
            _flag("etcd-key-file", ETCD_KEY_FILE),
            _flag("etcd-prefix", settings.etcd_prefix),
        ]
    if identity.kind is NodeKind.MASTER:
        master += ["--kubernetes-join-control-plane", *joins]
    return master
