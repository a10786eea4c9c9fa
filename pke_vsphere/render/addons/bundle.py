"""The bundle the leader applies after `pke install`: each add-on with the
release it targets, where that release's manifests are, and the objects made
from the cluster's spec."""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel, Field

from pke_vsphere.config.credentials import StorageCredential, StorageCredentials
from pke_vsphere.contracts.messages import BootstrapMaterial, VCenterTarget
from pke_vsphere.render.addons import metallb, vsphere_cpi, vsphere_csi


class Addon(BaseModel):
    name: str
    version: str = Field(description="The release these objects are written for.")
    install_url: str = Field(description="The release's own manifests.")
    install_selector: str | None = Field(
        default=None,
        description="Apply only the release's objects this label selector matches (kubectl -l).",
    )
    namespace: str = Field(description="Where the release runs.")
    objects_first: bool = Field(
        default=False,
        description="Apply the objects before the release (its pods read them at start).",
    )
    wait_for_release: bool = Field(
        description="Wait for the release's deployments before applying the objects (MetalLB's "
        "webhook must answer first; the CSI driver instead needs its Secret to start)."
    )
    manifest: str = Field(description="YAML documents made for this cluster.")


class AddonBundle(BaseModel):
    addons: list[Addon] = Field(default_factory=list)


class MissingCredential(LookupError):
    """The cluster names a vSphere account the orchestrator does not hold (any more)."""


def _yaml(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False)


def build(cluster: str, material: BootstrapMaterial, credentials: StorageCredentials) -> AddonBundle:
    addons = []
    target = material.storage_target
    if material.cloud_provider_credential is not None:
        if target is None:  # the nodes wait for the CPI: never leave it out silently
            raise MissingCredential("the cluster's vCenter connection for its cloud provider is not known")
        addons.append(_cloud_provider(material.cloud_provider_credential, material, target, credentials))
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
    storage = material.storage
    if storage is not None and target is not None:
        account = _account(credentials, storage.credential)
        conf = vsphere_csi.csi_conf(
            cluster_id=material.cluster_uid,
            target=target,
            username=account.username,
            password=account.password.get_secret_value(),
        )
        objects = [
            vsphere_csi.namespace(),
            vsphere_csi.secret(conf, target.ca_pem),
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


def _account(credentials: StorageCredentials, name: str) -> StorageCredential:
    account = credentials.get(name)
    if account is None:
        raise MissingCredential(f"the orchestrator holds no vSphere account {name!r}")
    return account


def _cloud_provider(
    name: str, material: BootstrapMaterial, target: VCenterTarget, credentials: StorageCredentials
) -> Addon:
    account = _account(credentials, name)
    line = vsphere_cpi.release_line(material.kubernetes_version or "1.32.0")
    objects = [
        vsphere_cpi.secret(target.vcenter_host, account.username, account.password.get_secret_value()),
        vsphere_cpi.config_map(vsphere_cpi.cloud_config(target), target.ca_pem),
    ]
    return Addon(
        name="vsphere-cpi",
        version=line,
        install_url=vsphere_cpi.install_manifest(line),
        install_selector=vsphere_cpi.INSTALL_SELECTOR,
        namespace=vsphere_cpi.NAMESPACE,
        objects_first=True,
        wait_for_release=False,
        manifest=_yaml(objects),
    )
