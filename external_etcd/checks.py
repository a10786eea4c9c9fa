"""What preflight checks of an external etcd before a cluster uses it, and how
it takes the cluster's prefix: the orchestrator holds the named client
credential and it is sound; every endpoint answers healthy to that certificate;
the prefix holds no keys (another cluster's data, or what a deleted one left)
and lies inside no other cluster's prefix; then the prefix is claimed for this
cluster (see ``prefixes``), unless other problems already stop the create."""

from __future__ import annotations

from external_etcd import material, prefixes
from external_etcd.gateway import EtcdGateway, EtcdUnavailable
from models.spec import ExternalEtcd
from settings.credentials import EtcdCredentials

FIELD = "control_plane.external_etcd"


def problems(
    etcd: ExternalEtcd, prefix: str, credentials: EtcdCredentials, owner: str, *, claim: bool
) -> list[str]:
    try:
        client = material.client_certificate(credentials, etcd.credential)
    except material.EtcdCredentialError as exc:
        return [f"{FIELD}.credential: {exc}"]
    found: list[str] = []
    healthy: list[str] = []
    with material.ssl_context(client) as context:
        for endpoint in etcd.endpoints:
            with EtcdGateway(endpoint, context) as gateway:
                try:
                    gateway.check_health()
                    healthy.append(endpoint)
                except EtcdUnavailable as exc:
                    found.append(f"{FIELD}.endpoints: {endpoint}: {exc}")
        if not healthy:
            return found
        with EtcdGateway(healthy[0], context) as gateway:
            try:
                found += _prefix_problems(gateway, prefix, owner, claim=claim and not found)
            except EtcdUnavailable as exc:
                found.append(f"{FIELD}.endpoints: {healthy[0]}: {exc}")
    return found


def _prefix_problems(gateway: EtcdGateway, prefix: str, owner: str, *, claim: bool) -> list[str]:
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
