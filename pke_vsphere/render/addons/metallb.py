"""MetalLB in layer-2 mode: the release the leader installs and the configuration
objects (``IPAddressPool``, ``L2Advertisement``) made from the spec's addresses."""

from __future__ import annotations

from typing import Any

from pke_vsphere.contracts.spec import LoadBalancerSpec

VERSION = "v0.14.9"
API_VERSION = "metallb.io/v1beta1"  # what MetalLB 0.13 and later read
NAMESPACE = "metallb-system"
INSTALL_MANIFEST = (
    f"https://raw.githubusercontent.com/metallb/metallb/{VERSION}/config/manifests/metallb-native.yaml"
)
POOL = "pke-default"
# MetalLB's custom resources, for Kubernetes clients that need their models.
KINDS = {"IPAddressPool": "ipaddresspools", "L2Advertisement": "l2advertisements"}


def register_models() -> None:
    """Make MetalLB's kinds known to lightkube (its codecs and clients)."""
    from lightkube.generic_resource import create_namespaced_resource

    group, version = API_VERSION.split("/")
    for kind, plural in KINDS.items():
        create_namespaced_resource(group, version, kind, plural)


def config_objects(cluster: str, spec: LoadBalancerSpec) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/managed-by": "pke-vsphere", "pke-vsphere.io/cluster": cluster}
    return [
        {
            "apiVersion": API_VERSION,
            "kind": "IPAddressPool",
            "metadata": {"name": POOL, "namespace": NAMESPACE, "labels": labels},
            "spec": {"addresses": list(spec.addresses), "autoAssign": True},
        },
        {
            "apiVersion": API_VERSION,
            "kind": "L2Advertisement",
            "metadata": {"name": POOL, "namespace": NAMESPACE, "labels": labels},
            "spec": {"ipAddressPools": [POOL]},
        },
    ]
