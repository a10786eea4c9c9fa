"""The bundle the leader applies after `pke install`: each add-on with the
release it targets, where that release's manifests are, and the objects made
from the cluster's spec."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, Field

from addons import metallb, vsphere_csi
from models.messages import BootstrapMaterial
from settings.credentials import StorageCredentials


class Addon(BaseModel):
    name: str
    version: str = Field(description="The release these objects are written for.")
    install_url: str = Field(description="The release's own manifests, applied first.")
    namespace: str = Field(description="Where the release runs.")
    wait_for_release: bool = Field(
        description="Wait for the release's deployments before applying the objects (MetalLB's "
        "webhook must answer first; the CSI driver instead needs its Secret to start)."
    )
    manifest: str = Field(description="YAML documents to apply after the release is installed.")


class AddonBundle(BaseModel):
    addons: list[Addon] = Field(default_factory=list)


class MissingCredential(LookupError):
    """The cluster names a storage account the orchestrator does not hold (any more)."""


def _yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


def build(cluster: str, material: BootstrapMaterial, credentials: StorageCredentials) -> AddonBundle:
    addons = []
    if material.load_balancer is not None:
        addons.append(
            Addon(
                name="metallb",
                version=metallb.VERSION,
                install_url=metallb.INSTALL_MANIFEST,
                namespace=metallb.NAMESPACE,
                wait_for_release=True,
                manifest=_yaml(metallb.config_objects(cluster, material.load_balancer)),
            )
        )
    storage, target = material.storage, material.storage_target
    if storage is not None and target is not None:
        account = credentials.get(storage.credential)
        if account is None:
            raise MissingCredential(f"the orchestrator holds no storage account {storage.credential!r}")
        conf = vsphere_csi.csi_conf(
            cluster_id=material.cluster_uid,
            vcenter_host=target.vcenter_host,
            port=target.vcenter_port,
            datacenter=target.datacenter,
            username=account.username,
            password=account.password.get_secret_value(),
            thumbprint=target.thumbprint,
            insecure=target.insecure,
        )
        objects = [
            vsphere_csi.namespace(),
            vsphere_csi.secret(conf),
            vsphere_csi.storage_class(storage, target.datastore_url),
        ]
        addons.append(
            Addon(
                name="vsphere-csi",
                version=vsphere_csi.VERSION,
                install_url=vsphere_csi.INSTALL_MANIFEST,
                namespace=vsphere_csi.NAMESPACE,
                wait_for_release=False,
                manifest=_yaml(objects),
            )
        )
    return AddonBundle(addons=addons)
