"""What preflight checks of an external etcd before a cluster uses it: the
orchestrator holds the named client credential and it is sound, every endpoint
answers healthy to that certificate, and the cluster's prefix holds no keys
(another cluster's data, or what a deleted one left behind)."""

from __future__ import annotations

from external_etcd import material
from external_etcd.gateway import EtcdGateway, EtcdUnavailable
from models.spec import ExternalEtcd
from settings.credentials import EtcdCredentials

FIELD = "control_plane.external_etcd"


def problems(etcd: ExternalEtcd, prefix: str, credentials: EtcdCredentials) -> list[str]:
    credential = credentials.get(etcd.credential)
    if credential is None:
        held = ", ".join(credentials.names()) or "none"
        return [
            f"{FIELD}.credential: the orchestrator holds no etcd credential {etcd.credential!r} "
            f"(it holds: {held}); add it to PKE_VSPHERE_ETCD_CREDENTIALS_FILE"
        ]
    try:
        client = material.read(credential)
    except material.EtcdCredentialError as exc:
        return [f"{FIELD}.credential {etcd.credential!r}: {exc}"]
    found: list[str] = []
    keys: int | None = None
    with material.ssl_context(client) as context:
        for endpoint in etcd.endpoints:
            with EtcdGateway(endpoint, context) as gateway:
                try:
                    gateway.check_health()
                    if keys is None:
                        keys = gateway.count(prefix)
                except EtcdUnavailable as exc:
                    found.append(f"{FIELD}.endpoints: {endpoint}: {exc}")
    if keys:
        found.append(
            f"{FIELD}.prefix: {prefix} already holds {keys} key(s): another cluster keeps its data "
            "there, or a deleted one left it; choose another prefix"
        )
    return found
