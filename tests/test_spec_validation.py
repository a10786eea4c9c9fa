"""Every rule of the cluster spec names the field it checks."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from pke_vsphere.contracts.spec import ClusterSpec
from tests.conftest import cluster_spec

BASE: dict[str, Any] = cluster_spec("valid").model_dump(mode="json")


def with_changes(**changes: Any) -> dict[str, Any]:
    data = {**BASE, **changes}
    return data


def placement(**changes: Any) -> dict[str, Any]:
    return with_changes(vsphere={**BASE["vsphere"], **changes})


def pools(*items: dict[str, Any]) -> dict[str, Any]:
    return with_changes(pools=list(items))


MASTER = {"name": "master", "role": "master", "count": 3}
WORKER = {"name": "workers", "role": "worker", "count": 2}
ETCD = {"endpoints": ["https://etcd-1.example.com:2379"], "credential": "shared-etcd"}


def external_etcd(count: int = 2, **etcd: Any) -> dict[str, Any]:
    """A spec of the external_etcd topology with ``count`` masters and ``etcd`` changes."""
    control_plane = {"vip": "10.0.0.100", "topology": "external_etcd", "external_etcd": {**ETCD, **etcd}}
    return pools({**MASTER, "count": count}, WORKER) | {"control_plane": control_plane}


BAD_SPECS = [
    ("upper-case name", with_changes(name="Prod"), "name", "RFC 1123"),
    ("name with underscore", with_changes(name="my_cluster"), "name", "RFC 1123"),
    ("name too long", with_changes(name="a" * 31), "name", "longer than 30"),
    ("name ends with dash", with_changes(name="prod-"), "name", "RFC 1123"),
    (
        "bad kubernetes version",
        with_changes(kubernetes_version="2.0"),
        "kubernetes_version",
        "1.26-1.39",
    ),
    ("unknown field", with_changes(colour="blue"), "colour", "Extra inputs"),
    ("no pools", with_changes(pools=[]), "pools", "at least 1"),
    ("no master pool", pools(WORKER), "", "exactly one master pool, found 0"),
    (
        "two master pools",
        pools(MASTER, {**MASTER, "name": "m2"}),
        "",
        "exactly one master pool, found 2",
    ),
    ("even masters", pools({**MASTER, "count": 2}, WORKER), "", "1, 3 or 5 nodes"),
    ("zero masters", pools({**MASTER, "count": 0}, WORKER), "", "1, 3 or 5 nodes"),
    ("duplicate pool", pools(MASTER, WORKER, WORKER), "", "repeated: workers"),
    ("pool of 1000", pools(MASTER, {**WORKER, "count": 1000}), "pools.1.count", "less than or equal to 999"),
    (
        "1001 nodes in all",
        pools(MASTER, {**WORKER, "count": 999}, {**WORKER, "name": "more", "count": 2}),
        "",
        "pools: 1004 nodes in all, more than a cluster's 1000",
    ),
    (
        "pool name upper-case",
        pools(MASTER, {**WORKER, "name": "Workers"}),
        "pools.1.name",
        "RFC 1123",
    ),
    (
        "negative count",
        pools(MASTER, {**WORKER, "count": -1}),
        "pools.1.count",
        "greater than or equal",
    ),
    ("too many cpus", pools(MASTER, {**WORKER, "cpus": 500}), "pools.1.cpus", "less than or equal"),
    ("too little memory", pools(MASTER, {**WORKER, "memory_mb": 512}), "pools.1.memory_mb", "2048"),
    (
        "odd memory",
        pools(MASTER, {**WORKER, "memory_mb": 4097}),
        "pools.1.memory_mb",
        "multiple of 4",
    ),
    (
        "unknown role",
        pools(MASTER, {**WORKER, "role": "etcd"}),
        "pools.1.role",
        "'master' or 'worker'",
    ),
    ("HA without VIP", with_changes(control_plane={}), "", "control_plane.vip is required"),
    (
        "VIP not an address",
        with_changes(control_plane={"vip": "10.0.0"}),
        "control_plane.vip",
        "IPv4",
    ),
    (
        "VIP inside pod CIDR",
        with_changes(control_plane={"vip": "10.20.1.1"}),
        "",
        "inside network.pod_cidr",
    ),
    (
        "overlapping CIDRs",
        with_changes(network={"pod_cidr": "10.0.0.0/8", "service_cidr": "10.10.0.0/16"}),
        "network",
        "overlap",
    ),
    ("both cluster and pool", placement(resource_pool="C0/Resources"), "vsphere", "exactly one of"),
    ("neither cluster nor pool", placement(compute_cluster=None), "vsphere", "exactly one of"),
    ("datastore and datastore cluster", placement(datastore="ds"), "vsphere", "exactly one of"),
    ("empty template", placement(template=""), "vsphere.template", "at least 1"),
    ("bad ssh key", with_changes(ssh_authorized_keys=["hello"]), "ssh_authorized_keys", "OpenSSH"),
    (
        "timeout too short",
        with_changes(timeouts={"ip": 1}),
        "timeouts.ip",
        "greater than or equal to 5",
    ),
    (
        "bad interface",
        with_changes(control_plane={"vip": "127.0.10.1", "interface": "a b"}),
        "",
        "pattern",
    ),
    (
        "DNS name with capitals",
        with_changes(control_plane={"vip": "127.0.10.1", "dns_name": "API.example.com"}),
        "control_plane.dns_name",
        "'API.example.com' is not a DNS name",
    ),
    (
        "DNS name label too long",
        with_changes(control_plane={"vip": "127.0.10.1", "dns_name": "a" * 64 + ".example.com"}),
        "control_plane.dns_name",
        "is not a DNS name",
    ),
    (
        "VRRP router id 0",
        with_changes(control_plane={"vip": "127.0.10.1", "vrrp_router_id": 0}),
        "control_plane.vrrp_router_id",
        "greater than or equal to 1",
    ),
    (
        "VRRP router id 256",
        with_changes(control_plane={"vip": "127.0.10.1", "vrrp_router_id": 256}),
        "control_plane.vrrp_router_id",
        "less than or equal to 255",
    ),
    (
        "load balancer range reversed",
        with_changes(load_balancer={"addresses": ["10.0.0.99-10.0.0.50"]}),
        "load_balancer.addresses",
        "'10.0.0.99-10.0.0.50' is not an IPv4 range 'A-B' or a CIDR (the range ends before it starts)",
    ),
    (
        "load balancer CIDR with host bits",
        with_changes(load_balancer={"addresses": ["10.0.0.65/27"]}),
        "load_balancer.addresses",
        "'10.0.0.65/27' is not an IPv4 range 'A-B' or a CIDR",
    ),
    (
        "load balancer entries overlap",
        with_changes(load_balancer={"addresses": ["10.0.0.64/27", "10.0.0.90-10.0.0.100"]}),
        "load_balancer.addresses",
        "'10.0.0.90-10.0.0.100' overlaps '10.0.0.64/27'",
    ),
    (
        "load balancer range holds the VIP",
        with_changes(
            control_plane={"vip": "127.0.10.1"}, load_balancer={"addresses": ["127.0.10.0-127.0.10.20"]}
        ),
        "",
        "'127.0.10.0-127.0.10.20' contains control_plane.vip 127.0.10.1",
    ),
    (
        "load balancer range inside the pod network",
        with_changes(load_balancer={"addresses": ["10.20.5.0/24"]}),
        "",
        "'10.20.5.0/24' overlaps network.pod_cidr 10.20.0.0/16",
    ),
    (
        "storage with datastore and policy",
        with_changes(storage={"credential": "csi", "datastore": "ds1", "storage_policy": "gold"}),
        "storage",
        "give exactly one of datastore and storage_policy",
    ),
    (
        "storage credential name not a label",
        with_changes(storage={"credential": "CSI Prod", "datastore": "ds1"}),
        "storage.credential",
        "pattern",
    ),
    (
        "shared topology on one node",
        pools({**MASTER, "count": 1}, WORKER) | {"control_plane": {"topology": "shared"}},
        "",
        "the shared topology runs etcd, the API server and workloads on 3 or 5 nodes",
    ),
    (
        "unknown topology",
        with_changes(control_plane={"vip": "127.0.10.1", "topology": "stacked"}),
        "control_plane.topology",
        "Input should be 'dedicated', 'shared' or 'external_etcd'",
    ),
    (
        "shared topology on four nodes",
        pools({**MASTER, "count": 4}, WORKER)
        | {"control_plane": {"vip": "10.0.0.100", "topology": "shared"}},
        "",
        "the shared topology runs etcd, the API server and workloads on 3 or 5 nodes; not 4",
    ),
    (
        "external etcd topology without its etcd",
        with_changes(control_plane={"vip": "10.0.0.100", "topology": "external_etcd"}),
        "control_plane",
        "control_plane.external_etcd is required with topology external_etcd",
    ),
    (
        "an etcd for a topology that runs its own",
        with_changes(control_plane={"vip": "10.0.0.100", "external_etcd": ETCD}),
        "control_plane",
        "control_plane.external_etcd is only for topology external_etcd; the dedicated topology runs etcd",
    ),
    ("six API servers", external_etcd(6), "", "the external_etcd topology runs 1 to 5 API servers, not 6"),
    (
        "two API servers without a VIP",
        external_etcd(2) | {"control_plane": {"topology": "external_etcd", "external_etcd": ETCD}},
        "",
        "control_plane.vip is required when the master pool has more than 1 node",
    ),
    (
        "plain http etcd endpoint",
        external_etcd(endpoints=["http://etcd-1:2379"]),
        "control_plane.external_etcd.endpoints",
        "must use https (the API servers present a client certificate)",
    ),
    (
        "etcd endpoint without a port",
        external_etcd(endpoints=["https://etcd-1.example.com"]),
        "control_plane.external_etcd.endpoints",
        "needs a host and a port: https://HOST:PORT",
    ),
    (
        "etcd endpoint with a path",
        external_etcd(endpoints=["https://etcd-1:2379/v3"]),
        "control_plane.external_etcd.endpoints",
        "must be only https://HOST:PORT (no user, path or query)",
    ),
    (
        "etcd endpoint host not a name",
        external_etcd(endpoints=["https://etcd_1:2379"]),
        "control_plane.external_etcd.endpoints",
        "'etcd_1' is neither an IP address nor a DNS name",
    ),
    (
        "repeated etcd endpoint",
        external_etcd(endpoints=["https://10.0.0.5:2379", "https://10.0.0.5:2379/"]),
        "control_plane.external_etcd.endpoints",
        "repeated https://10.0.0.5:2379",
    ),
    ("no etcd endpoints", external_etcd(endpoints=[]), "control_plane.external_etcd.endpoints", "at least 1"),
    (
        "etcd prefix with a trailing slash",
        external_etcd(prefix="/clusters/prod/"),
        "control_plane.external_etcd.prefix",
        "starting with '/' and not ending with one",
    ),
    (
        "etcd prefix ending in a newline",
        external_etcd(prefix="/clusters/prod\n"),
        "control_plane.external_etcd.prefix",
        "starting with '/' and not ending with one",
    ),
    ("name ending in a newline", with_changes(name="prod\n"), "name", "RFC 1123"),
    (
        "DNS name ending in a newline",
        with_changes(control_plane={"vip": "10.0.0.100", "dns_name": "api.example.com\n"}),
        "control_plane.dns_name",
        "is not a DNS name",
    ),
    (
        "cloud provider credential not a name",
        with_changes(cloud_provider={"credential": "Read Only"}),
        "cloud_provider.credential",
        "pattern",
    ),
    (
        "etcd credential not a name",
        external_etcd(credential="../etc/passwd"),
        "control_plane.external_etcd.credential",
        "pattern",
    ),
    (
        "VRRP router id without a VIP",
        pools({**MASTER, "count": 1}, WORKER) | {"control_plane": {"vrrp_router_id": 7}},
        "control_plane",
        "control_plane.vrrp_router_id configures keepalived, which runs only with control_plane.vip",
    ),
]


@pytest.mark.parametrize(("case", "data", "field", "message"), BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec_is_refused_with_a_message_naming_the_field(
    case: str, data: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        ClusterSpec.model_validate(data)
    errors = info.value.errors()
    rendered = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in errors]
    assert any(loc.startswith(field) and message in msg for loc, msg in rendered), rendered


def test_the_valid_base_spec_passes() -> None:
    assert ClusterSpec.model_validate(BASE).master_pool.count == 3


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5])
def test_the_external_etcd_topology_takes_one_to_five_api_servers(count: int) -> None:
    spec = ClusterSpec.model_validate(external_etcd(count))
    assert spec.master_pool.count == count
    assert spec.etcd_prefix == "/pke-vsphere/valid"  # the default: one prefix per cluster


def test_etcd_endpoints_are_normalised_and_a_prefix_kept() -> None:
    endpoints = ["https://10.0.0.5:2379/", "https://[fd00::5]:2379", "https://etcd-2.example.com:2379"]
    spec = ClusterSpec.model_validate(external_etcd(endpoints=endpoints, prefix="/clusters/prod"))
    etcd = spec.control_plane.external_etcd
    assert etcd is not None
    assert etcd.endpoints == [
        "https://10.0.0.5:2379",
        "https://[fd00::5]:2379",
        "https://etcd-2.example.com:2379",
    ]
    assert spec.etcd_prefix == "/clusters/prod"


def test_single_master_may_omit_the_vip() -> None:
    spec = ClusterSpec.model_validate(pools({**MASTER, "count": 1}, WORKER) | {"control_plane": {}})
    assert spec.control_plane.vip is None


def test_the_example_specs_are_valid() -> None:
    from pathlib import Path

    from starter.spec_file import load as load_spec

    root = Path(__file__).parent.parent / "examples"
    assert load_spec(root / "demo-cluster.yaml").name == "demo"
    assert load_spec(root / "cluster-input.json").name == "cli-example"


def test_the_cloud_provider_uses_its_own_account_else_the_storage_one() -> None:
    storage = {"credential": "csi", "datastore": "ds1"}
    assert ClusterSpec.model_validate(BASE).cloud_provider_credential is None
    assert ClusterSpec.model_validate(with_changes(storage=storage)).cloud_provider_credential == "csi"
    both = with_changes(storage=storage, cloud_provider={"credential": "cpi-read-only"})
    assert ClusterSpec.model_validate(both).cloud_provider_credential == "cpi-read-only"
