"""MetalLB and vSphere storage from the spec alone, on the simulated data center:
the leader applies what the node API hands it to its (stand-in) API server; the
storage account's password reaches only the leader, never history or guestinfo."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pyVim import connect

from activities.preflight import PreflightActivities
from pke_vsphere.codec import keys
from pke_vsphere.codec.encryption import EncryptionCodec
from pke_vsphere.config.credentials import StorageCredential, StorageCredentials
from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import PreflightInput
from pke_vsphere.contracts.spec import StorageSpec
from pke_vsphere.contracts.state import ClusterPhase, NodePhase
from pke_vsphere.vsphere import properties
from sim import vcenter
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique, unique_vip
from tests.harness import (
    STORAGE_ACCOUNTS,
    STORAGE_PASSWORD,
    guestinfo_text,
    pke_install_args,
    plain_history,
    userdata_config,
    vms_of_cluster,
)


def datastore_url(stack: Stack, name: str) -> str:
    si = stack.sim.connect()
    try:
        found = si.content.searchIndex.FindByInventoryPath(f"{vcenter.DATACENTER}/datastore/{name}")
        url: str = properties.read(si, found, ["summary.url"])["summary.url"]
        return url
    finally:
        connect.Disconnect(si)


async def test_the_leader_applies_metallb_and_the_csi_storage_class_from_the_spec(
    stack: Stack, payload_keys: Path
) -> None:
    name = unique("services")
    addresses = ["10.123.0.10-10.123.0.40", "10.123.1.0/28"]
    spec = cluster_spec(
        name,
        masters=3,
        workers=1,
        control_plane={"vip": unique_vip()},
        load_balancer={"addresses": addresses},
        storage={"credential": "csi-test", "datastore": vcenter.DATASTORE, "class_name": "vsphere-fast"},
    )
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name)
    assert status.phase is ClusterPhase.READY, status.error
    assert all(n.phase is NodePhase.READY for n in status.nodes)

    services = status.services
    assert services is not None
    assert services.load_balancer_addresses == addresses
    assert (services.storage_class, services.storage_class_default) == ("vsphere-fast", True)

    applied = stack.nodes.cluster_apis[name].objects.applied
    pool = applied[("IPAddressPool", "metallb-system/pke-default")]
    assert pool["spec"]["addresses"] == addresses
    assert ("L2Advertisement", "metallb-system/pke-default") in applied
    storage_class = applied[("StorageClass", "/vsphere-fast")]
    assert storage_class["parameters"] == {"datastoreurl": datastore_url(stack, vcenter.DATASTORE)}
    assert storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    conf = applied[("Secret", "vmware-system-csi/vsphere-config-secret")]["stringData"]["csi-vsphere.conf"]
    account = STORAGE_ACCOUNTS.get("csi-test")
    assert account is not None
    assert f'user = "{account.username}"' in conf and f'password = "{STORAGE_PASSWORD}"' in conf
    assert f'cluster-id = "{status.cluster_uid}"' in conf
    assert f'datacenters = "{vcenter.DATACENTER}"' in conf
    # The CSI driver finds its nodes through the vSphere cloud provider, which runs with
    # the storage account (no cloud_provider in the spec) and initializes every node.
    assert services.cloud_provider == "external"
    cpi_secret = applied[("Secret", "kube-system/vsphere-cloud-secret")]["stringData"]
    vcenter_host = urlsplit(stack.sim.url).hostname
    assert cpi_secret == {
        f"{vcenter_host}.username": account.username,
        f"{vcenter_host}.password": STORAGE_PASSWORD,
    }
    cpi_conf = applied[("ConfigMap", "kube-system/vsphere-cloud-config")]["data"]["vsphere.conf"]
    assert f"- {vcenter.DATACENTER}" in cpi_conf and STORAGE_PASSWORD not in cpi_conf
    for node in status.nodes:
        args = pke_install_args(userdata_config(vms_of_cluster(stack.sim, name)[node.name]["extra"]))
        assert "--kubernetes-cloud-provider=external" in args
    leader_events = [e for _, e in stack.nodes.nodes[f"{name}-master-01"].events]
    assert leader_events.index("addon-applied:metallb@v0.14.9") < leader_events.index("reported-ready")

    # The password went from the orchestrator's account file to the leader and nowhere else:
    # not into Temporal (not even encrypted), not into any VM's guestinfo.
    codec = EncryptionCodec(keys.load(payload_keys))
    workflow_ids = [ids.cluster_workflow_id(name)] + [
        ids.node_workflow_id(name, n.name) for n in status.nodes
    ]
    for workflow_id in workflow_ids:
        history = await plain_history(stack.client, workflow_id, codec)
        assert status.cluster_uid is not None and status.cluster_uid in history  # decrypted indeed
        assert STORAGE_PASSWORD not in history
    for vm in vms_of_cluster(stack.sim, name).values():
        assert STORAGE_PASSWORD not in guestinfo_text(vm["extra"])


async def test_storage_and_address_problems_are_found_at_preflight(stack: Stack) -> None:
    name = unique("bad-storage")
    spec = cluster_spec(
        name, masters=1, workers=1, storage={"credential": "csi-unknown", "datastore": "NoSuchDatastore"}
    )
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name)
    assert status.phase is ClusterPhase.FAILED
    assert status.error is not None
    assert "storage.credential: the orchestrator holds no account 'csi-unknown' (it holds: csi-test)" in (
        status.error
    )
    assert (
        f"storage.datastore: no datastore 'NoSuchDatastore' in {vcenter.DATACENTER}/datastore" in status.error
    )
    assert vms_of_cluster(stack.sim, name) == {}


async def test_the_orchestrators_own_account_is_refused_for_storage(stack: Stack) -> None:
    name = unique("own-account")
    own = STORAGE_ACCOUNTS.get("csi-test")
    assert own is not None and own.username != stack.sim.username
    # The session's worker holds only a proper account, so ask a preflight that holds the
    # orchestrator's own account under a name.
    mine = StorageCredentials({"mine": StorageCredential(username=stack.sim.username, password=own.password)})
    preflight = PreflightActivities(stack.vsphere.session, mine)
    problems: list[str] = []
    si = stack.vsphere.session.service_instance()
    spec = cluster_spec(name, masters=1, workers=0)
    preflight.check_vsphere_addons(
        si,
        PreflightInput(
            cluster=name,
            placement=spec.vsphere,
            storage=StorageSpec(credential="mine", datastore=vcenter.DATASTORE),
            cloud_provider_credential="mine",  # the CPI uses the storage account: one problem
        ),
        problems,
    )
    assert problems == [
        "storage.credential: 'mine' is the orchestrator's own vCenter account; give the CSI driver "
        "an account of its own with only the storage privileges"
    ]
    problems = []
    preflight.check_vsphere_addons(
        si, PreflightInput(cluster=name, placement=spec.vsphere, cloud_provider_credential="mine"), problems
    )
    assert problems == [
        "cloud_provider.credential: 'mine' is the orchestrator's own vCenter account; give the cloud "
        "provider an account of its own with only the read-only privileges"
    ]


async def test_a_node_given_a_load_balancer_address_is_given_up_with_the_reason(stack: Stack) -> None:
    name = unique("lb-clash")
    prefix = stack.nodes.ip_prefix  # every simulated guest's address is inside it
    spec = cluster_spec(name, masters=1, workers=1, load_balancer={"addresses": [f"{prefix}.0.0/16"]})
    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name)

    assert status.phase is ClusterPhase.FAILED
    assert status.error is not None
    assert f"inside load_balancer.addresses '{prefix}.0.0/16'" in status.error
    assert "keep that range out of the nodes' DHCP scope" in status.error
    assert vms_of_cluster(stack.sim, name) == {}
