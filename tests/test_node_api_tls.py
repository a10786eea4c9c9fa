"""The node API over HTTPS: nodes verify it with the CA their cloud-config
carries (a public certificate), so they talk only to this orchestrator."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import worker as worker_module
from pke_vsphere.contracts.state import ClusterPhase
from pke_vsphere.pki import authority
from pke_vsphere.render import cloudinit, guestinfo
from pke_vsphere.vsphere.session import VCenterSession
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique, vcenter_settings, vsphere_activities
from tests.harness import serve_node_api, vms_of_cluster


def serving_pair(directory: Path, ca: authority.KeyPair) -> tuple[Path, Path]:
    leaf = authority.issue(ca, "node-api", ip_addresses=("127.0.0.1",), server=True)
    cert, key = directory / "node-api.crt", directory / "node-api.key"
    cert.write_text(leaf.cert_pem())
    key.write_text(leaf.key_pem())
    return cert, key


async def https_worker(stack: Stack, key_file: Path, url: str, ca_pem: str) -> AsyncIterator[str]:
    task_queue = f"https-{uuid.uuid4()}"
    session = VCenterSession(vcenter_settings(stack.sim))
    vsphere = vsphere_activities(session, key_file, url, ca_pem, client=stack.client, task_queue=task_queue)
    with ThreadPoolExecutor(32) as executor:
        async with worker_module.build_worker(stack.client, task_queue, vsphere, executor, 32):
            yield task_queue


@pytest.mark.parametrize("trusted", [True, False], ids=["right-ca", "impostor"])
async def test_nodes_bootstrap_over_https_only_against_the_ca_they_were_given(
    stack: Stack, key_file: Path, tmp_path: Path, trusted: bool
) -> None:
    ca = authority.new_ca("node API CA")
    served_by = ca if trusted else authority.new_ca("someone else")
    name = unique("https" if trusted else "impostor")
    async with serve_node_api(stack.client, key_file, serving_pair(tmp_path, served_by)) as url:
        assert url.startswith("https://")
        async for task_queue in https_worker(stack, key_file, url, ca.cert_pem()):
            spec = cluster_spec(name, masters=1, workers=1, timeouts={"leader_ready": 5})
            await clusters.create(stack.client, spec, task_queue)
            status = await wait_until_settled(stack, name, within=60)
    if trusted:
        assert status.phase is ClusterPhase.READY, status.error
        leader = vms_of_cluster(stack.sim, name)[f"{name}-master-01"]["extra"]
        userdata = guestinfo.decode(leader[guestinfo.USERDATA], leader[f"{guestinfo.USERDATA}.encoding"])
        config = cloudinit.parse(userdata)
        env = cloudinit.written_file(config, cloudinit.ENV_FILE)
        assert cloudinit.written_file(config, cloudinit.NODE_API_CA_FILE) == ca.cert_pem()
        assert f"PKE_VSPHERE_NODE_API_CA={cloudinit.NODE_API_CA_FILE}" in env
        assert f"PKE_VSPHERE_NODE_API={url}" in env
    else:
        assert status.phase is ClusterPhase.FAILED
        # The leader's script: curl refused the impostor's certificate (exit 60) every time.
        output = stack.nodes.nodes[f"{name}-master-01"].output
        assert any(line.startswith("curl: (60) SSL certificate problem") for line in output), output
        assert vms_of_cluster(stack.sim, name) == {}
