"""What preflight checks of an external etcd before a cluster uses it, and how
it takes the cluster's prefix: the orchestrator holds the named credential and
it is sound; every endpoint answers healthy to its certificate; the prefix
holds no keys (another cluster's data, or what a deleted one left) and lies
inside no other cluster's prefix; then the prefix is claimed for this cluster
(see ``prefixes``) and the cluster's own etcd user created (see ``users``),
unless other problems already stop the create. Last, a certificate of that
user must be refused outside the prefix: an etcd without authentication would
let every cluster's masters read every other's keys."""

from __future__ import annotations

from pke_vsphere.config.credentials import EtcdCredentials
from pke_vsphere.contracts.pki import EtcdClientCertificate
from pke_vsphere.contracts.spec import ExternalEtcd
from pke_vsphere.etcd import material, prefixes
from pke_vsphere.etcd.client import EtcdClient, EtcdRefused, EtcdUnavailable

FIELD = "control_plane.external_etcd"
# A key outside every cluster's prefix that a cluster's user must not read.
OUTSIDE = "/pke-vsphere.scope-probe"


def problems(
    etcd: ExternalEtcd, prefix: str, credentials: EtcdCredentials, owner: str, user: str, *, claim: bool
) -> list[str]:
    try:
        root = material.client_certificate(credentials, etcd.credential)
        probe = material.cluster_certificate(credentials, etcd.credential, user)
    except material.EtcdCredentialError as exc:
        return [f"{FIELD}.credential: {exc}"]
    found: list[str] = []
    healthy: list[str] = []
    for endpoint in etcd.endpoints:
        try:
            with EtcdClient(endpoint, root) as client:
                client.check_health()
            healthy.append(endpoint)
        except EtcdUnavailable as exc:
            found.append(f"{FIELD}.endpoints: {endpoint}: {exc}")
    if not healthy:
        return found
    try:
        with EtcdClient(healthy[0], root) as client:
            found += _prefix_problems(client, prefix, owner, claim=claim and not found)
            if claim and not found:
                found += _user_problems(client, healthy[0], etcd.credential, user, prefix, probe)
    except EtcdRefused as exc:
        found.append(
            f"{FIELD}.credential: etcd refused the orchestrator's certificate ({exc}); it must be "
            "a certificate of etcd's root user"
        )
    except EtcdUnavailable as exc:
        found.append(f"{FIELD}.endpoints: {healthy[0]}: {exc}")
    return found


def _user_problems(
    client: EtcdClient, endpoint: str, credential: str, user: str, prefix: str, probe: EtcdClientCertificate
) -> list[str]:
    """Create the cluster's user, then check a certificate of it is kept in the prefix."""
    client.ensure_prefix_user(user, prefix)
    try:
        with EtcdClient(endpoint, probe) as scoped:
            scoped.get(OUTSIDE)
    except EtcdRefused:
        return []  # refused outside its prefix, as it must be
    return [
        f"{FIELD}.credential: etcd let a certificate of the cluster's own user ({user}) read outside "
        f"{prefix}: its authentication is off, so any client certificate of credential {credential!r} "
        "reads every cluster's keys; enable it (etcdctl auth enable)"
    ]


def _prefix_problems(gateway: EtcdClient, prefix: str, owner: str, *, claim: bool) -> list[str]:
    key = prefixes.owner_key(prefix)
    keys = gateway.count(prefix)
    if keys == 1 and gateway.get(key) == owner:
        return []  # claimed by this cluster already (a retried preflight)
    if keys:
        return [
            f"{FIELD}.prefix: {prefix} already holds {keys} key(s): another cluster keeps its data "
            "there, or a deleted one left it; choose another prefix"
        ]
    for outer in prefixes.ancestors(prefix):
        other = gateway.get(prefixes.owner_key(outer))
        if other is not None:
            return [
                f"{FIELD}.prefix: {prefix} lies inside {outer}, the prefix of cluster "
                f"{other.split('/')[0]}; choose a prefix outside it"
            ]
    if claim and not gateway.claim(key, owner):
        return [f"{FIELD}.prefix: {prefix} was just taken by another cluster; choose another prefix"]
    return []
