"""What the leader applies after install: the vSphere cloud provider's account and
configuration, MetalLB's configuration and the vSphere CSI driver's Secret and
StorageClass, each manifest valid Kubernetes YAML that round-trips through
lightkube's models."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from lightkube import codecs
from pydantic import SecretStr

from pke_vsphere.config.credentials import StorageCredential, StorageCredentials
from pke_vsphere.contracts.messages import BootstrapMaterial, VCenterTarget
from pke_vsphere.contracts.spec import LoadBalancerSpec, StorageSpec
from pke_vsphere.pki.cluster import generate_cluster_pki
from pke_vsphere.render.addons import bundle, metallb, vsphere_cpi, vsphere_csi

ACCOUNTS = StorageCredentials(
    {"csi-prod": StorageCredential(username="k8s-csi@vsphere.local", password=SecretStr('p"w\\d-1'))}
)
TARGET = VCenterTarget(
    vcenter_host="vcenter.example.com",
    vcenter_port=443,
    datacenter="DC0",
    thumbprint="AB:CD",
    datastore_url="ds:///vmfs/volumes/5f1e/",
)


def material(**changes: Any) -> BootstrapMaterial:
    base: dict[str, Any] = {
        "pki": generate_cluster_pki("prod"),
        "api_endpoint": "10.0.0.100:6443",
        "vip": "10.0.0.100",
        "vrrp_router_id": 7,
        "vrrp_interface": None,
        "vrrp_priority": 150,
        "kind": "leader",
        "cluster_uid": "uid-1",
        "load_balancer": LoadBalancerSpec(addresses=["10.0.0.200-10.0.0.220", "10.0.1.0/28"]),
        "storage": StorageSpec(credential="csi-prod", datastore="LocalDS_0"),
        "storage_target": TARGET,
        "cloud_provider_credential": "csi-prod",
        "kubernetes_version": "1.30.4",
    }
    return BootstrapMaterial.model_validate(base | changes)


def objects_of(addon: bundle.Addon) -> list[dict[str, Any]]:
    return list(yaml.safe_load_all(addon.manifest))


def test_every_manifest_is_kubernetes_yaml_that_round_trips_through_lightkube() -> None:
    metallb.register_models()
    addons = bundle.build("prod", material(), ACCOUNTS).addons
    assert [a.name for a in addons] == ["vsphere-cpi", "metallb", "vsphere-csi"]
    for addon in addons:
        docs = objects_of(addon)
        assert docs
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc) and doc["metadata"]["name"]
        models = codecs.load_all_yaml(addon.manifest, create_resources_for_crds=True)
        assert [m.to_dict() for m in models] == docs


def test_metallb_gets_the_spec_addresses_for_the_release_it_targets() -> None:
    (_, addon, _) = bundle.build("prod", material(), ACCOUNTS).addons
    pool, l2 = objects_of(addon)
    assert (pool["apiVersion"], pool["kind"], l2["kind"]) == (
        metallb.API_VERSION,
        "IPAddressPool",
        "L2Advertisement",
    )
    assert pool["spec"]["addresses"] == ["10.0.0.200-10.0.0.220", "10.0.1.0/28"]
    assert l2["spec"]["ipAddressPools"] == [pool["metadata"]["name"]]
    assert pool["metadata"]["namespace"] == l2["metadata"]["namespace"] == metallb.NAMESPACE
    assert addon.version == metallb.VERSION and metallb.VERSION in addon.install_url
    assert addon.wait_for_release  # the webhook must answer before the pool is applied


def test_the_csi_driver_gets_its_own_account_and_a_default_storage_class() -> None:
    (_, _, addon) = bundle.build("prod", material(), ACCOUNTS).addons
    namespace, secret, storage_class = objects_of(addon)
    assert (
        namespace["kind"] == "Namespace" and secret["metadata"]["namespace"] == namespace["metadata"]["name"]
    )
    conf = secret["stringData"]["csi-vsphere.conf"]
    assert 'cluster-id = "uid-1"' in conf
    assert '[VirtualCenter "vcenter.example.com"]' in conf
    assert 'user = "k8s-csi@vsphere.local"' in conf
    assert 'password = "p\\"w\\\\d-1"' in conf  # quotes and backslashes escaped for gcfg
    assert 'datacenters = "DC0"' in conf and 'thumbprint = "AB:CD"' in conf
    assert storage_class["provisioner"] == vsphere_csi.PROVISIONER
    assert storage_class["parameters"] == {"datastoreurl": "ds:///vmfs/volumes/5f1e/"}
    assert storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert not addon.wait_for_release  # the driver needs its Secret to start


def test_a_storage_policy_and_a_non_default_class() -> None:
    spec = StorageSpec(credential="csi-prod", storage_policy="gold", class_name="gold", default_class=False)
    changes = {"storage": spec, "load_balancer": None, "cloud_provider_credential": None}
    (addon,) = bundle.build("prod", material(**changes), ACCOUNTS).addons
    storage_class = objects_of(addon)[-1]
    assert storage_class["parameters"] == {"storagepolicyname": "gold"}
    assert storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "false"


def test_no_services_asked_for_means_no_addons() -> None:
    none = material(load_balancer=None, storage=None, cloud_provider_credential=None)
    assert bundle.build("prod", none, ACCOUNTS).addons == []


def test_an_account_the_orchestrator_no_longer_holds_is_an_error_not_an_empty_secret() -> None:
    with pytest.raises(bundle.MissingCredential, match="no vSphere account 'csi-prod'"):
        bundle.build("prod", material(), StorageCredentials())


def test_the_cloud_provider_gets_its_account_and_configuration_before_its_release() -> None:
    (addon,) = bundle.build(
        "prod", material(load_balancer=None, storage=None), ACCOUNTS
    ).addons  # the CPI alone: its account comes from cloud_provider (here the same name)
    assert (addon.name, addon.version, addon.namespace) == ("vsphere-cpi", "v1.30", "kube-system")
    assert addon.install_url.endswith("/releases/v1.30/vsphere-cloud-controller-manager.yaml")
    # The release's own example Secret and ConfigMap never replace these, which go first.
    assert addon.install_selector == "vsphere-cpi-infra notin (secret,config)"
    assert addon.objects_first and not addon.wait_for_release
    secret, config_map = objects_of(addon)
    assert secret["metadata"] == {"name": "vsphere-cloud-secret", "namespace": "kube-system"}
    assert secret["stringData"] == {
        "vcenter.example.com.username": "k8s-csi@vsphere.local",
        "vcenter.example.com.password": 'p"w\\d-1',
    }
    conf = yaml.safe_load(config_map["data"]["vsphere.conf"])
    assert conf == {
        "global": {
            "port": 443,
            "insecureFlag": False,
            "secretName": "vsphere-cloud-secret",
            "secretNamespace": "kube-system",
            "thumbprint": "AB:CD",
        },
        "vcenter": {"vcenter.example.com": {"server": "vcenter.example.com", "datacenters": ["DC0"]}},
    }
    assert 'p"w' not in config_map["data"]["vsphere.conf"]  # the password is only in the Secret


@pytest.mark.parametrize(("version", "line"), [("1.26.0", "v1.26"), ("1.33.2", "v1.33"), ("1.39.0", "v1.37")])
def test_the_cloud_provider_follows_the_clusters_kubernetes_minor(version: str, line: str) -> None:
    assert vsphere_cpi.release_line(version) == line


def test_a_private_vcenter_ca_reaches_the_cloud_provider_and_the_csi_driver() -> None:
    """Without it they could not verify a vCenter the orchestrator verifies with its own CA."""
    ca = generate_cluster_pki("ca").kubernetes_ca.cert_pem  # any CA certificate will do
    target = TARGET.model_copy(update={"thumbprint": None, "ca_pem": ca})
    cpi, _, csi = bundle.build("prod", material(storage_target=target), ACCOUNTS).addons
    _, config_map = objects_of(cpi)
    assert config_map["data"][vsphere_cpi.CA_KEY] == ca
    conf = yaml.safe_load(config_map["data"]["vsphere.conf"])
    assert conf["global"]["caFile"] == "/etc/cloud/vcenter-ca.pem" and "thumbprint" not in conf["global"]
    _, secret, _ = objects_of(csi)
    assert secret["stringData"][vsphere_csi.CA_KEY] == ca
    assert 'ca-file = "/etc/cloud/vcenter-ca.pem"' in secret["stringData"]["csi-vsphere.conf"]
    # Without a CA of its own, neither names a CA file.
    cpi, _, csi = bundle.build("prod", material(), ACCOUNTS).addons
    assert "caFile" not in objects_of(cpi)[1]["data"]["vsphere.conf"]
    assert "ca-file" not in objects_of(csi)[1]["stringData"]["csi-vsphere.conf"]
