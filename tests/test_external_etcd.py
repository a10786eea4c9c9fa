"""The external_etcd topology on the simulated data center and a real etcd
(Debian's etcd-server, TLS with client-certificate authentication and RBAC on):
two API servers keep the cluster's data under its prefix in the shared etcd,
reached with certificates of the cluster's own etcd user, which no VM's
guestinfo and no history carries; a cluster's masters reach nothing outside
its prefix; preflight refuses what would not work; delete removes the prefix,
the cluster's user, and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pke_vsphere.codec import keys
from pke_vsphere.codec.encryption import EncryptionCodec
from pke_vsphere.contracts import ids
from pke_vsphere.contracts.pki import EtcdClientCertificate
from pke_vsphere.contracts.protocol import Query
from pke_vsphere.contracts.spec import ExternalEtcd
from pke_vsphere.contracts.state import ClusterPhase, NodePhase
from pke_vsphere.etcd import checks as etcd_checks
from pke_vsphere.etcd import users as etcd_users
from pke_vsphere.etcd.client import EtcdRefused
from starter import clusters
from tests.clusters import external_etcd_control_plane as external
from tests.clusters import removal_times, scale, wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.etcd_server import CREDENTIAL, EtcdServer
from tests.harness import (
    clone_counts,
    free_port,
    guestinfo_text,
    pke_install_args,
    plain_history,
    userdata_config,
    vms_of_cluster,
)


async def test_two_api_servers_keep_the_cluster_in_the_shared_etcd_and_delete_clears_only_its_prefix(
    stack: Stack, payload_keys: Path
) -> None:
    name = unique("ext-etcd")
    prefix = f"/pke-vsphere/{name}"
    control_plane = external(stack)
    spec = cluster_spec(name, masters=2, workers=1, control_plane=control_plane)
    with stack.etcd.client() as etcd:
        etcd.put(f"{prefix}x/registry/neighbour", "another cluster's key, next to ours")

    await clusters.create(stack.client, spec, stack.task_queue)
    status = await wait_until_settled(stack, name)

    assert status.phase is ClusterPhase.READY, status.error
    assert [(n.identity.kind.value, n.phase) for n in status.nodes] == [
        ("leader", NodePhase.READY),
        ("master", NodePhase.READY),
        ("worker", NodePhase.READY),
    ]
    # Two API servers behind keepalived's VIP, which the worker joined through.
    assert status.api_endpoint == f"{control_plane['vip']}:6443"
    services = status.services
    assert services is not None and services.vrrp_router_id is not None
    assert (services.topology, services.etcd_endpoints, services.etcd_prefix) == (
        "external_etcd",
        stack.etcd.endpoints,
        prefix,
    )
    # Both API servers reached the real etcd with the delivered certificate; preflight
    # claimed the prefix for this cluster (its owner key) before any VM existed.
    master_ips = sorted(n.ip for n in status.nodes if n.identity.kind.value != "worker" and n.ip)
    with stack.etcd.client(1) as etcd:
        assert etcd.keys(prefix) == [f"{prefix}/masterleases/{ip}" for ip in master_ips] + [
            f"{prefix}/pke-vsphere.owner"
        ]
        assert etcd.get(f"{prefix}/pke-vsphere.owner") == f"{name}/{status.cluster_uid}"

    vms = vms_of_cluster(stack.sim, name)
    for node in status.nodes:
        args = pke_install_args(userdata_config(vms[node.name]["extra"]))
        etcd_flags = sorted(a for a in args if a.startswith("--etcd-"))
        if node.identity.kind.value == "worker":
            assert etcd_flags == []
            continue
        assert etcd_flags == [
            "--etcd-ca-file=/etc/kubernetes/pki/etcd/external-ca.crt",
            "--etcd-cert-file=/etc/kubernetes/pki/apiserver-etcd-client.crt",
            f"--etcd-endpoints={','.join(stack.etcd.endpoints)}",
            "--etcd-key-file=/etc/kubernetes/pki/apiserver-etcd-client.key",
            f"--etcd-prefix={prefix}",
        ]
        assert "--taints=node-role.kubernetes.io/control-plane:NoSchedule" in args

    # No etcd CA of the cluster's own: the external etcd's CA signs its members.
    material = await stack.client.get_workflow_handle(ids.cluster_workflow_id(name)).query(
        Query.BOOTSTRAP_MATERIAL, {"node": f"{name}-master-01"}, result_type=dict[str, Any]
    )
    assert material["pki"]["etcd_ca"] is None

    # The client key went from the orchestrator's file to the masters only: it is in
    # no VM's guestinfo and in no history, not even encrypted.
    key_line = stack.etcd.key_file.read_text().splitlines()[1]
    for vm in vms.values():
        assert key_line not in guestinfo_text(vm["extra"])
    codec = EncryptionCodec(keys.load(payload_keys))
    for workflow_id in [ids.cluster_workflow_id(name)] + [
        ids.node_workflow_id(name, n.name) for n in status.nodes
    ]:
        history = await plain_history(stack.client, workflow_id, codec)
        assert status.cluster_uid is not None and status.cluster_uid in history  # decrypted indeed
        assert key_line not in history

    outcome = await (await clusters.delete(stack.client, name, stack.task_queue)).result()
    assert outcome.etcd_keys_deleted == len(master_ips) + 1 and outcome.etcd_problem is None
    with stack.etcd.client() as etcd:
        assert etcd.count(prefix) == 0
        assert etcd.keys(f"{prefix}x") == [f"{prefix}x/registry/neighbour"]
    assert vms_of_cluster(stack.sim, name) == {}


async def test_preflight_names_an_unknown_credential_before_anything_exists(stack: Stack) -> None:
    name = unique("etcd-cred")
    control_plane = external(stack)
    control_plane["external_etcd"]["credential"] = "no-such-etcd"
    await clusters.create(
        stack.client, cluster_spec(name, masters=2, workers=1, control_plane=control_plane), stack.task_queue
    )
    status = await wait_until_settled(stack, name)

    assert status.phase is ClusterPhase.FAILED
    assert status.error is not None
    assert (
        "control_plane.external_etcd.credential: the orchestrator holds no etcd credential 'no-such-etcd' "
        f"(it holds: {CREDENTIAL}); add it to PKE_VSPHERE_ETCD_CREDENTIALS_FILE"
    ) in status.error
    assert vms_of_cluster(stack.sim, name) == {}


async def test_preflight_refuses_a_dead_endpoint_and_a_prefix_already_in_use(stack: Stack) -> None:
    name = unique("etcd-used")
    prefix = f"/clusters/{name}"
    dead = f"https://127.0.0.1:{free_port('127.0.0.1')}"
    with stack.etcd.client() as etcd:
        etcd.put(f"{prefix}/registry/namespaces/default", "left by a deleted cluster")
    control_plane = external(stack, prefix=prefix)
    control_plane["external_etcd"]["endpoints"] = [stack.etcd.endpoints[0], dead]
    await clusters.create(
        stack.client, cluster_spec(name, masters=3, workers=1, control_plane=control_plane), stack.task_queue
    )
    status = await wait_until_settled(stack, name)

    assert status.phase is ClusterPhase.FAILED
    assert status.error is not None
    assert "preflight found 2 problem(s)" in status.error
    assert f"control_plane.external_etcd.endpoints: {dead}: cannot connect" in status.error
    assert (
        f"control_plane.external_etcd.prefix: {prefix} already holds 1 key(s): another cluster keeps its "
        "data there, or a deleted one left it; choose another prefix"
    ) in status.error
    assert vms_of_cluster(stack.sim, name) == {}
    assert not any(dest.startswith(name) for dest in clone_counts(stack.sim))
    with stack.etcd.client() as etcd:  # refused, and nothing of etcd touched
        assert etcd.count(prefix) == 1


async def test_api_servers_on_an_external_etcd_grow_and_shrink_newest_first(stack: Stack) -> None:
    """No etcd member lives on them, so a master is drained and removed like a worker."""
    name = unique("ext-scale")
    spec = cluster_spec(name, masters=2, workers=1, control_plane=external(stack))
    await clusters.create(stack.client, spec, stack.task_queue)
    assert (await wait_until_settled(stack, name)).phase is ClusterPhase.READY
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    masters = [f"{name}-master-{i:02d}" for i in (1, 2, 3)]

    up = await scale(handle, "master", 3)
    assert up.added == masters[2:] and not up.failed
    kube = stack.nodes.cluster_apis[name]
    assert set(masters) <= set(kube.objects.nodes)

    down = await scale(handle, "master", 2)
    assert down.removed == masters[2:] and not down.warnings  # the newest
    assert sorted(vms_of_cluster(stack.sim, name)) == [*masters[:2], f"{name}-workers-01"]
    down = await scale(handle, "master", 1)
    assert down.removed == masters[1:2] and not down.warnings  # the leader stays
    assert sorted(vms_of_cluster(stack.sim, name)) == [masters[0], f"{name}-workers-01"]
    assert set(kube.objects.nodes) == {masters[0], f"{name}-workers-01"}
    removed_at = removal_times(stack.sim)
    for node in masters[1:]:
        verbs = [c.verb for c in kube.objects.calls if c.name == node]
        assert verbs[0] == "cordon" and verbs[-1] == "delete", verbs
        assert max(c.at for c in kube.objects.calls if c.name == node) <= removed_at[node]
    status = await wait_until_settled(stack, name)
    assert status.pools["master"] == 1 and status.phase is ClusterPhase.READY
    await (await clusters.delete(stack.client, name, stack.task_queue)).result()


async def test_a_prefix_inside_another_clusters_prefix_is_refused(stack: Stack) -> None:
    """Deleting the outer cluster would delete the inner one's data with its own."""
    outer, inner = unique("etcd-outer"), unique("etcd-inner")
    outer_prefix = f"/nest-{outer}"
    spec = cluster_spec(outer, masters=1, workers=0, control_plane=external(stack, prefix=outer_prefix))
    await clusters.create(stack.client, spec, stack.task_queue)
    assert (await wait_until_settled(stack, outer)).phase is ClusterPhase.READY

    control_plane = external(stack, prefix=f"{outer_prefix}/{inner}")
    await clusters.create(
        stack.client, cluster_spec(inner, masters=1, workers=0, control_plane=control_plane), stack.task_queue
    )
    status = await wait_until_settled(stack, inner)
    assert status.phase is ClusterPhase.FAILED and status.error is not None
    assert (
        f"control_plane.external_etcd.prefix: {outer_prefix}/{inner} lies inside {outer_prefix}, "
        f"the prefix of cluster {outer}; choose a prefix outside it"
    ) in status.error
    assert vms_of_cluster(stack.sim, inner) == {}
    with stack.etcd.client() as etcd:  # the failed create released nothing of the outer cluster
        assert etcd.get(f"{outer_prefix}/pke-vsphere.owner") is not None
    await (await clusters.delete(stack.client, outer, stack.task_queue)).result()


async def test_each_clusters_masters_reach_only_its_own_prefix_and_its_etcd_user_goes_with_it(
    stack: Stack,
) -> None:
    """Two clusters on one etcd (authentication on), naming one credential: each
    cluster's masters hold a certificate of the cluster's own etcd user."""
    names = unique("etcd-a"), unique("etcd-b")
    for name in names:
        spec = cluster_spec(name, masters=1, workers=0, control_plane=external(stack))
        await clusters.create(stack.client, spec, stack.task_queue)
    statuses = [await wait_until_settled(stack, name) for name in names]
    assert [s.phase for s in statuses] == [ClusterPhase.READY, ClusterPhase.READY], statuses
    a, b = names
    user = etcd_users.cluster_user(a, statuses[0].cluster_uid or "")
    delivered = stack.nodes.nodes[f"{a}-master-01"].external_etcd
    assert delivered is not None
    certificate = EtcdClientCertificate.model_validate(delivered["certificate"])
    subject = x509.load_pem_x509_certificate(certificate.cert_pem.encode()).subject.rfc4514_string()
    assert subject == f"CN={user}"
    with stack.etcd.client() as root:
        assert root.user_roles(user) == [user]
    with stack.etcd.client(1, certificate) as master_of_a:
        # Its own API server's lease is there, written with this certificate.
        assert [k for k in master_of_a.keys(f"/pke-vsphere/{a}") if "/masterleases/" in k]
        with pytest.raises(EtcdRefused, match="permission denied"):
            master_of_a.keys(f"/pke-vsphere/{b}")
        with pytest.raises(EtcdRefused, match="permission denied"):
            master_of_a.put(f"/pke-vsphere/{b}/registry/secrets/stolen", "x")
        with pytest.raises(EtcdRefused, match="permission denied"):
            master_of_a.get("/")

    await (await clusters.delete(stack.client, a, stack.task_queue)).result()
    with stack.etcd.client() as root:
        assert root.user_roles(user) is None
        assert root.count(f"/pke-vsphere/{b}") > 0  # the other cluster's data stays
    with stack.etcd.client(0, certificate) as master_of_a, pytest.raises(EtcdRefused):
        master_of_a.keys(f"/pke-vsphere/{a}")  # its user is gone: nothing at all
    await (await clusters.delete(stack.client, b, stack.task_queue)).result()


@pytest.mark.processes  # an etcd of its own, without authentication
def test_preflight_refuses_an_etcd_without_authentication(tmp_path: Path) -> None:
    """Without it any client certificate of the CA reads every cluster's keys."""
    server = EtcdServer(tmp_path, auth=False)
    try:
        etcd = ExternalEtcd(endpoints=server.endpoints, credential=CREDENTIAL)
        found = etcd_checks.problems(
            etcd, "/pke-vsphere/open", server.credentials, "open/uid", "pke-vsphere:open:uid", claim=True
        )
    finally:
        server.stop()
    assert len(found) == 1 and "its authentication is off" in found[0], found
    assert "etcdctl auth enable" in found[0]
