"""Every cloud-config the orchestrator renders is valid by cloud-init's own JSON
schema (from Debian's cloud-init package; `make cloud-init-schema` extracts it),
for every role and control-plane mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator
from jsonschema.exceptions import best_match

from pke_vsphere.contracts.messages import NodeBootstrapSettings
from pke_vsphere.contracts.spec import ControlPlane, ExternalEtcd, Topology
from pke_vsphere.contracts.state import NodeKind
from pke_vsphere.render import cloudinit
from tests.harness import ROOT, node_identity

SCHEMA = ROOT / ".state" / "cloud-init" / "schema-cloud-config-v1.json"
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture(scope="module")
def validator() -> Draft4Validator:
    if not SCHEMA.exists():
        pytest.fail(f"{SCHEMA.relative_to(ROOT)} is missing: run `make cloud-init-schema`")
    schema = json.loads(SCHEMA.read_text())
    Draft4Validator.check_schema(schema)
    return Draft4Validator(schema)


def problems(validator: Draft4Validator, config: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(config)]


MODES = {
    # name: (control plane, masters)
    "single-master": (ControlPlane(), 1),
    "ha-vip": (ControlPlane(vip="10.0.0.100"), 3),
    "ha-vip-dns-name": (ControlPlane(vip="10.0.0.100", dns_name="api.prod.example.com"), 5),
    "ha-vip-interface": (ControlPlane(vip="10.0.0.100", interface="ens192", vrrp_router_id=42), 3),
    "shared": (ControlPlane(vip="10.0.0.100", topology=Topology.SHARED), 3),
    "external-etcd": (
        ControlPlane(
            vip="10.0.0.100",
            topology=Topology.EXTERNAL_ETCD,
            external_etcd=ExternalEtcd(
                endpoints=["https://10.0.0.5:2379", "https://10.0.0.6:2379"], credential="shared-etcd"
            ),
        ),
        2,
    ),
}
ROLES = [NodeKind.LEADER, NodeKind.MASTER, NodeKind.WORKER]


def rendered(mode: str, kind: NodeKind, *, node_api_ca: bool, ssh_keys: bool) -> dict[str, Any]:
    control_plane, _ = MODES[mode]
    identity = node_identity(kind, 2 if kind is NodeKind.MASTER else 1)
    settings = NodeBootstrapSettings(
        kubernetes_version="1.30.4",
        api_endpoint=f"{control_plane.dns_name or control_plane.vip or '10.0.0.11'}:6443",
        master_mode="ha" if control_plane.vip else "default",
        pod_cidr="10.20.0.0/16",
        service_cidr="10.10.0.0/16",
        ssh_authorized_keys=["ssh-ed25519 AAAAC3Nza test@example"] if ssh_keys else [],
        api_server_cert_sans=control_plane.cert_sans,
        schedulable_masters=control_plane.topology is Topology.SHARED,
        etcd_endpoints=control_plane.external_etcd.endpoints if control_plane.external_etcd else [],
        etcd_prefix="/pke-vsphere/prod" if control_plane.external_etcd else None,
    )
    document = cloudinit.render(
        identity,
        settings,
        node_api_url="https://orchestrator.example:8480",
        node_token="a.b.c",
        node_api_ca_pem=CA_PEM if node_api_ca else None,
    )
    return cloudinit.parse(document)


# Every role of every mode (a single-master cluster has no follower masters).
CASES = [(m, k) for m in MODES for k in ROLES if not (k is NodeKind.MASTER and MODES[m][1] == 1)]


@pytest.mark.parametrize(("mode", "kind"), CASES, ids=[f"{m}-{k.value}" for m, k in CASES])
@pytest.mark.parametrize("node_api_ca", [False, True], ids=["public-ca", "own-ca"])
def test_every_rendered_cloud_config_is_valid_by_cloud_inits_schema(
    validator: Draft4Validator, mode: str, kind: NodeKind, node_api_ca: bool
) -> None:
    config = rendered(mode, kind, node_api_ca=node_api_ca, ssh_keys=mode != "single-master")
    assert problems(validator, config) == []


@pytest.mark.parametrize(
    ("mistake", "where"),
    [
        (lambda c: c.update(runcmd="/etc/pke-vsphere/bootstrap.sh"), "runcmd"),
        (lambda c: c["write_files"][0].pop("path"), "write_files.0"),
        (lambda c: c["write_files"][1].update(permissions=600), "write_files.1.permissions"),
        (lambda c: c["users"][0].update(lock_passwd="yes"), "users.0.lock_passwd"),
        (lambda c: c.update(manage_etc_hosts="sometimes"), "manage_etc_hosts"),
    ],
    ids=["runcmd-not-a-list", "file-without-path", "numeric-permissions", "string-boolean", "bad-enum"],
)
def test_the_schema_catches_what_cloud_init_would_reject(
    validator: Draft4Validator, mistake: Any, where: str
) -> None:
    """The check above can fail: the same configs, each with one mistake."""
    config = rendered("ha-vip", NodeKind.WORKER, node_api_ca=True, ssh_keys=True)
    mistake(config)
    error = best_match(validator.iter_errors(config))
    assert error is not None
    assert ".".join(map(str, error.absolute_path)).startswith(where), error


def test_the_schema_comes_from_debians_cloud_init() -> None:
    version = (SCHEMA.parent / "VERSION").read_text().strip()
    assert version.split(".")[0].isdigit() and int(version.split(".")[0]) >= 22, version
    assert Path(SCHEMA).stat().st_size > 10_000
