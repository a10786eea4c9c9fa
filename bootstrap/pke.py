"""The ``pke install`` command line for each bootstrap role.

Values a node only learns at boot (its address, the join token and the CA hash)
are shell variables that the bootstrap script fills in: ``$ADVERTISE_ADDRESS``,
``$JOIN_TOKEN``, ``$CA_CERT_HASH`` and ``$API_ENDPOINT``.
"""

from __future__ import annotations

import shlex

from models.messages import NodeBootstrapSettings
from models.state import NodeIdentity, NodeKind

CONTROL_PLANE_TAINT = "node-role.kubernetes.io/control-plane:NoSchedule"
POOL_LABEL = "node.pke-vsphere.io/pool"
# Where the bootstrap script writes an external etcd's CA and client certificate.
ETCD_CA_FILE = "/etc/kubernetes/pki/etcd/external-ca.crt"
ETCD_CERT_FILE = "/etc/kubernetes/pki/apiserver-etcd-client.crt"
ETCD_KEY_FILE = "/etc/kubernetes/pki/apiserver-etcd-client.key"


def install_args(identity: NodeIdentity, settings: NodeBootstrapSettings) -> list[str]:
    """Arguments of ``pke install`` for this node, shell-quoted where needed."""
    common = [
        f"--kubernetes-version={settings.kubernetes_version}",
        f"--kubernetes-node-labels={POOL_LABEL}={identity.pool}",
        # 'external': the vSphere CPI initializes the node (the in-tree provider is gone).
        *([f"--kubernetes-cloud-provider={settings.cloud_provider}"] if settings.cloud_provider else []),
    ]
    if identity.kind is NodeKind.WORKER:
        return [
            "worker",
            *common,
            '--kubernetes-api-server="$API_ENDPOINT"',
            '--kubernetes-node-token="$JOIN_TOKEN"',
            '--kubernetes-api-server-ca-cert-hash="$CA_CERT_HASH"',
        ]
    master = [
        "master",
        *common,
        f"--kubernetes-cluster-name={identity.cluster}",
        f"--kubernetes-master-mode={settings.master_mode}",
        '--kubernetes-advertise-address="$ADVERTISE_ADDRESS"',
        '--kubernetes-api-server="$API_ENDPOINT"',
        f"--kubernetes-pod-network-cidr={settings.pod_cidr}",
        f"--kubernetes-service-cidr={settings.service_cidr}",
        # PKE taints masters NoSchedule unless told otherwise; the shared topology says none.
        f"--taints={'' if settings.schedulable_masters else CONTROL_PLANE_TAINT}",
        *(f"--kubernetes-api-server-cert-sans={name}" for name in settings.api_server_cert_sans),
    ]
    if settings.etcd_endpoints:
        master += [
            # Quoted: an IPv6 endpoint's brackets are a shell pattern.
            shlex.quote(f"--etcd-endpoints={','.join(settings.etcd_endpoints)}"),
            f"--etcd-ca-file={ETCD_CA_FILE}",
            f"--etcd-cert-file={ETCD_CERT_FILE}",
            f"--etcd-key-file={ETCD_KEY_FILE}",
            f"--etcd-prefix={settings.etcd_prefix}",
        ]
    if identity.kind is NodeKind.MASTER:
        master += [
            "--kubernetes-join-control-plane",
            '--kubernetes-node-token="$JOIN_TOKEN"',
            '--kubernetes-api-server-ca-cert-hash="$CA_CERT_HASH"',
        ]
    return master
