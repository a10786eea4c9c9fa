"""The vSphere CSI driver's configuration (``csi-vsphere.conf`` in a Secret) and
the cluster's StorageClass. The Secret carries the storage account's password:
it is rendered by the node API for the leader alone, never stored in workflow
history or guestinfo."""

from __future__ import annotations

from typing import Any

from pke_vsphere.contracts.messages import VCenterTarget
from pke_vsphere.contracts.spec import StorageSpec

VERSION = "v3.3.1"
PROVISIONER = "csi.vsphere.vmware.com"
NAMESPACE = "vmware-system-csi"
SECRET = "vsphere-config-secret"  # noqa: S105 - the Secret object's name
# The driver mounts the Secret at /etc/cloud; a CA bundle in it lands here.
CA_KEY = "vcenter-ca.pem"
CA_PATH = f"/etc/cloud/{CA_KEY}"
INSTALL_MANIFEST = f"https://raw.githubusercontent.com/kubernetes-sigs/vsphere-csi-driver/{VERSION}/manifests/vanilla/vsphere-csi-driver.yaml"


def _quote(value: str) -> str:
    """A gcfg string value: quoted, with backslashes and quotes escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def csi_conf(*, cluster_id: str, target: VCenterTarget, username: str, password: str) -> str:
    """``csi-vsphere.conf``; a private CA (``target.ca_pem``) is read from the Secret beside it."""
    lines = [
        "[Global]",
        f"cluster-id = {_quote(cluster_id)}",
        *([f"ca-file = {_quote(CA_PATH)}"] if target.ca_pem else []),
        "",
        f"[VirtualCenter {_quote(target.vcenter_host)}]",
        f"insecure-flag = {_quote('true' if target.insecure else 'false')}",
        f"user = {_quote(username)}",
        f"password = {_quote(password)}",
        f"port = {_quote(str(target.vcenter_port))}",
        f"datacenters = {_quote(target.datacenter)}",
    ]
    if target.thumbprint:
        lines.append(f"thumbprint = {_quote(target.thumbprint)}")
    return "\n".join(lines) + "\n"


def namespace() -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


def secret(conf: str, ca_pem: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET, "namespace": NAMESPACE},
        "type": "Opaque",
        "stringData": {"csi-vsphere.conf": conf} | ({CA_KEY: ca_pem} if ca_pem else {}),
    }


def storage_class(spec: StorageSpec, datastore_url: str | None) -> dict[str, Any]:
    parameters = (
        {"storagepolicyname": spec.storage_policy} if spec.storage_policy else {"datastoreurl": datastore_url}
    )
    annotations = {"storageclass.kubernetes.io/is-default-class": "true" if spec.default_class else "false"}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": spec.class_name, "annotations": annotations},
        "provisioner": PROVISIONER,
        "parameters": parameters,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
        "allowVolumeExpansion": True,
    }
