"""The vSphere cloud provider (CPI, cloud-controller-manager): it initializes
every node the kubelet registers with ``--cloud-provider=external`` (provider
id ``vsphere://UUID``, addresses; until then the node carries the
``node.cloudprovider.kubernetes.io/uninitialized`` taint), and the CSI driver
finds its nodes through it.

Its configuration (``vsphere.conf`` in a ConfigMap) and its vCenter account (a
Secret keyed ``HOST.username``/``HOST.password``) are made by the node API for
the leader alone. The release's own example Secret and ConfigMap are left out
of the install by label, so they never replace these, and these are applied
before the release so that its pods start with them.
"""

from __future__ import annotations

from typing import Any

import yaml

from pke_vsphere.contracts.messages import VCenterTarget

NAMESPACE = "kube-system"
SECRET = "vsphere-cloud-secret"  # noqa: S105 - the Secret object's name
CONFIG_MAP = "vsphere-cloud-config"
DAEMON_SET = "vsphere-cloud-controller-manager"
# The release mounts the ConfigMap at /etc/cloud; a CA bundle in it lands here.
CA_KEY = "vcenter-ca.pem"
CA_PATH = f"/etc/cloud/{CA_KEY}"
# The release manifests carry an example Secret and ConfigMap labelled like this.
INSTALL_SELECTOR = "vsphere-cpi-infra notin (secret,config)"
# Release lines published in the project's releases/ directory, one per Kubernetes minor.
FIRST_MINOR, LAST_MINOR = 26, 37


def release_line(kubernetes_version: str) -> str:
    """The CPI release line for a cluster: its own Kubernetes minor, within the published ones."""
    minor = int(kubernetes_version.split(".")[1])
    return f"v1.{min(max(minor, FIRST_MINOR), LAST_MINOR)}"


def install_manifest(line: str) -> str:
    return (
        "https://raw.githubusercontent.com/kubernetes/cloud-provider-vsphere/"
        f"master/releases/{line}/vsphere-cloud-controller-manager.yaml"
    )


def cloud_config(target: VCenterTarget) -> str:
    """``vsphere.conf`` in the CPI's YAML format; the account comes from the Secret, a
    private CA (``target.ca_pem``) from the ConfigMap beside it."""
    vcenter: dict[str, Any] = {"server": target.vcenter_host, "datacenters": [target.datacenter]}
    global_: dict[str, Any] = {
        "port": target.vcenter_port,
        "insecureFlag": target.insecure,
        "secretName": SECRET,
        "secretNamespace": NAMESPACE,
    }
    if target.thumbprint:
        global_["thumbprint"] = target.thumbprint
    if target.ca_pem:
        global_["caFile"] = CA_PATH
    return yaml.safe_dump({"global": global_, "vcenter": {target.vcenter_host: vcenter}}, sort_keys=False)


def secret(vcenter_host: str, username: str, password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        "type": "Opaque",
        "stringData": {f"{vcenter_host}.username": username, f"{vcenter_host}.password": password},
    }


def config_map(conf: str, ca_pem: str | None) -> dict[str, Any]:
    data = {"vsphere.conf": conf} | ({CA_KEY: ca_pem} if ca_pem else {})
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE},
        "data": data,
    }
