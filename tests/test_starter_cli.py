"""The ``pke-vsphere`` CLI against the real stack: progress, refusals, status, list."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pke_vsphere.contracts.state import ClusterServices
from starter import cli
from starter.progress import services_line
from tests.conftest import Stack, cluster_spec, unique


@pytest.fixture
def spec_file(tmp_path: Path) -> tuple[str, Path]:
    name = unique("cli")
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(cluster_spec(name, masters=1, workers=1).model_dump(mode="json")))
    return name, path


async def test_create_wait_shows_node_progress_then_status_and_list(
    stack: Stack,
    spec_file: tuple[str, Path],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name, path = spec_file
    monkeypatch.setenv("PKE_VSPHERE_TEMPORAL_TASK_QUEUE", stack.task_queue)
    assert await cli.run(["create", "-f", str(path), "--wait"], client=stack.client) == 0
    out = capsys.readouterr().out
    assert f"cluster {name}: Ready" in out
    lines = out.splitlines()
    worker_lines = [i for i, line in enumerate(lines) if f"{name}-workers-01 [worker]" in line]
    assert "Pending" in lines[worker_lines[0]] and "Ready" in lines[worker_lines[-1]]
    leader_ready = lines.index(f"  {name}-master-01 [leader] Ready")
    assert leader_ready < worker_lines[1]  # the worker moved only after the leader was ready

    assert await cli.run(["create", "-f", str(path)], client=stack.client) == 1
    assert "already exists" in capsys.readouterr().out

    assert await cli.run(["status", name], client=stack.client) == 0
    out = capsys.readouterr().out
    assert f"{name}-master-01" in out and "2/2 nodes ready" in out
    assert "services: dedicated control plane; endpoint 127." in out  # one master: its own address

    assert await cli.run(["list"], client=stack.client) == 0
    assert name in capsys.readouterr().out


async def test_create_refuses_an_invalid_spec_naming_each_field(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = cluster_spec(unique("cli-bad")).model_dump(mode="json")
    data["pools"][1]["cpus"] = 0
    data["name"] = "Bad Name"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert await cli.run(["create", "-f", str(path)], client=stack.client) == 2
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith(f"error: {path}: invalid cluster spec (2 problem(s)): ")
    assert "name: Value error, cluster name 'Bad Name' is not an RFC 1123 label" in line
    assert "pools.1.cpus: Input should be greater than or equal to 1" in line


async def test_status_of_an_unknown_cluster_is_a_clear_error(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli.run(["status", "no-such-cluster"], client=stack.client) == 1
    assert (
        capsys.readouterr().out
        == "error: no cluster named 'no-such-cluster' (no workflow pke-cluster-no-such-cluster)\n"
    )


def test_the_services_are_shown_one_per_line_under_the_control_plane() -> None:
    services = ClusterServices(
        topology="external_etcd",
        api_endpoint="10.0.0.100:6443",
        etcd_endpoints=["https://10.0.0.5:2379", "https://10.0.0.6:2379"],
        etcd_prefix="/pke-vsphere/prod",
        vip="10.0.0.100",
        vrrp_router_id=42,
        load_balancer_addresses=["10.0.50.10-10.0.50.40"],
        cloud_provider="external",
        storage_class="vsphere",
        storage_class_default=True,
    )
    assert services_line(services).plain.splitlines() == [
        "  services: external_etcd control plane; endpoint 10.0.0.100:6443",
        "            etcd https://10.0.0.5:2379, https://10.0.0.6:2379 (prefix /pke-vsphere/prod)",
        "            VIP 10.0.0.100 (keepalived, VRRP router id 42)",
        "            load balancers 10.0.50.10-10.0.50.40 (MetalLB)",
        "            nodes initialized by the vSphere cloud provider (CPI)",
        "            StorageClass vsphere (default) (vSphere CSI)",
    ]


def test_a_cluster_from_before_the_cpi_add_on_shows_its_in_tree_provider() -> None:
    services = ClusterServices(topology="dedicated", api_endpoint="10.0.0.11:6443", cloud_provider="vsphere")
    assert services_line(services).plain.splitlines()[1:] == [
        "            in-tree cloud provider vsphere (deprecated)"
    ]
