"""The benchmark's in-process bootstrap (sim/light_bootstrap.py) has the same
conversation as the real script.sh.

Both run for the same rendered cloud-config against one recording server that
gives both the same answers ("not now" first, then the document), and with the
same stand-in tools; the requests (method, path, credentials, body), the tool
calls (arguments, stdin), the files left under the node's root, the progress
lines and the exit code must be equal. The recording server stands in for the
node API only here, to give two clients identical answers; the node API itself
is tested against Temporal elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pke_vsphere.contracts.messages import NodeBootstrapSettings
from pke_vsphere.contracts.protocol import NODE_KEY_HEADER
from pke_vsphere.contracts.state import NodeKind
from pke_vsphere.render import cloudinit
from sim.demo import node_api_certificate
from sim.nodes import BootedNode, SimulatedNodes, sourced
from tests.harness import BOOTSTRAP_SETTINGS, node_identity

pytestmark = pytest.mark.asyncio(loop_scope="function")

NODE_IP = "127.9.0.5"
PORT = [0]  # the recording server's, once the first run picked it
OTHER_IP = "127.9.200.5"
PEM = "-----BEGIN X-----\nAAAA\n-----END X-----\n"


def _pair(name: str) -> dict[str, str]:
    return {"cert_pem": PEM.replace("X", f"{name} CERTIFICATE"), "key_pem": PEM.replace("X", f"{name} KEY")}


def material(*, keepalived: bool, external_etcd: bool) -> dict[str, Any]:
    return {
        "node_address": NODE_IP,
        "pki": {
            "kubernetes_ca": _pair("KUBERNETES"),
            "etcd_ca": None if external_etcd else _pair("ETCD"),
            "front_proxy_ca": _pair("FRONT PROXY"),
            "service_account_key_pem": PEM.replace("X", "SA KEY"),
            "service_account_public_pem": PEM.replace("X", "SA PUBLIC"),
        },
        "external_etcd": (
            {"certificate": {"ca_cert_pem": PEM, "cert_pem": PEM, "key_pem": PEM}} if external_etcd else None
        ),
        "keepalived_conf": "vrrp_instance v {\n  interface @VRRP_INTERFACE@\n}\n" if keepalived else None,
    }


JOIN = {
    "token": "abcdef.0123456789abcdef",
    "ca_cert_hash": "sha256:" + "ab" * 32,
    "api_endpoint": "10.0.0.100:6443",
    "node_address": NODE_IP,
}
ADDONS = {
    "addons": [
        {
            "name": "metallb",
            "version": "0.14.8",
            "namespace": "metallb-system",
            "install_url": "https://example.invalid/metallb.yaml",
            "install_selector": None,
            "wait_for_release": True,
            "objects_first": False,
            "manifest": "kind: IPAddressPool\n",
        },
        {
            "name": "vsphere-csi",
            "version": "3.3.1",
            "namespace": "vmware-system-csi",
            "install_url": "https://example.invalid/csi.yaml",
            "install_selector": "app!=x",
            "wait_for_release": False,
            "objects_first": True,
            "manifest": "kind: Secret\n",
        },
    ]
}


@dataclass
class RecordingAPI:
    """Answers each path from its list (a status and body per call, the last one
    repeated) and records every request."""

    answers: dict[str, list[tuple[int, Any]]]
    requests: list[tuple[str, str, dict[str, str], str]] = field(default_factory=list)
    _calls: dict[str, int] = field(default_factory=dict)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        request_line, *header_lines = head.strip().split("\r\n")
        method, path, _ = request_line.split(" ")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        body = (await reader.readexactly(int(headers.get("content-length", "0")))).decode()
        self.requests.append((method, path, headers, body))
        key = f"{method} {path}"
        n = self._calls.get(key, 0)
        self._calls[key] = n + 1
        answers = self.answers.get(key, [(404, {"detail": "no such call"})])
        status, document = answers[min(n, len(answers) - 1)]
        payload = json.dumps(document).encode()
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + payload
        )
        await writer.drain()
        writer.close()


class RecordingNodes(SimulatedNodes):
    """The simulated-nodes agent with tools that record their calls and answer as told."""

    def __init__(self, light: bool, pke_exit: int) -> None:
        super().__init__(lambda: None, join_poll_seconds=0.01, light=light)
        self.tool_calls: list[tuple[str, list[str], str]] = []
        self.pke_exit = pke_exit

    async def _tool(self, node: BootedNode, tool: str, args: list[str], stdin: str) -> tuple[int, str, str]:
        self.tool_calls.append((tool, args, stdin))
        if tool == "pke":
            if self.pke_exit:
                return self.pke_exit, "[preflight] checking\n", "error: kubelet did not start\n"
            return 0, "[install] done\n", ""
        return 0, "", ""


@dataclass
class Conversation:
    requests: list[tuple[str, str, str, str, Any]]
    tool_calls: list[tuple[str, list[str], str]]
    files: dict[str, str]
    lines: list[str]
    events: list[str]


@pytest.fixture
async def tls(tmp_path: Path) -> AsyncIterator[tuple[ssl.SSLContext, str]]:
    cert, key, ca = node_api_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    yield context, ca.read_text()


async def converse(
    light: bool,
    kind: NodeKind,
    answers: dict[str, list[tuple[int, Any]]],
    tls: tuple[ssl.SSLContext, str],
    settings: NodeBootstrapSettings,
    pke_exit: int = 0,
) -> Conversation:
    api = RecordingAPI(answers)
    # The same port for both runs: it is in the node's files, which must be equal.
    server = await asyncio.start_server(api.handle, "127.0.0.1", PORT[0], ssl=tls[0], reuse_address=True)
    port = PORT[0] = server.sockets[0].getsockname()[1]
    agent = RecordingNodes(light, pke_exit)
    agent._install_tools()
    control = await asyncio.start_unix_server(agent._serve_tool, path=str(agent._control_path))
    try:
        identity = node_identity(kind, 2 if kind is NodeKind.MASTER else 1)
        config = cloudinit.parse(
            cloudinit.render(
                identity,
                settings,
                node_api_url=f"https://127.0.0.1:{port}",
                node_token="the.node.token",
                node_api_ca_pem=tls[1],
            )
        )
        env = sourced(cloudinit.written_file(config, cloudinit.ENV_FILE))
        node = BootedNode(
            name=identity.name, vm_ref="vm-1", kind=env["PKE_VSPHERE_KIND"], ip=NODE_IP, install_command=""
        )
        node.uuid = "uuid-1"
        agent.nodes[node.name] = node
        await asyncio.wait_for(agent._cloud_init(node, config), 60)
        assert node.root is not None
        files = {
            str(path.relative_to(node.root)): path.read_text()
            for path in node.root.rglob("*")
            if path.is_file()
        }
    finally:
        control.close()
        server.close()
        await server.wait_closed()
        shutil.rmtree(agent._work, ignore_errors=True)
    keys = {headers.get(NODE_KEY_HEADER.lower()) for _, _, headers, _ in api.requests}
    assert len(keys) == 1 and None not in keys, "one node key, on every call"
    return Conversation(
        requests=[
            (
                method,
                path,
                headers.get("authorization", ""),
                headers.get("content-type", ""),
                json.loads(body) if body else None,
            )
            for method, path, headers, body in api.requests
        ],
        tool_calls=agent.tool_calls,
        files=files,
        # curl's own error lines (--show-error) are not the script's.
        lines=[line for line in node.output if not line.startswith("curl: ")],
        events=[event for _, event in node.events],
    )


SETTINGS = BOOTSTRAP_SETTINGS
EXTERNAL_ETCD = SETTINGS.model_copy(
    update={"etcd_endpoints": ["https://127.0.0.1:2379"], "etcd_prefix": "/pke/prod"}
)
NOT_NOW = (409, {"detail": "not yet"})
BUSY = (503, {"detail": "orchestrator unavailable, retry later"})
REPORTED = (202, {"accepted": True})


@pytest.mark.parametrize(
    ("kind", "settings", "answers", "pke_exit"),
    [
        pytest.param(
            NodeKind.LEADER,
            SETTINGS,
            {
                "GET /v1/nodes/self/bootstrap": [
                    NOT_NOW,
                    (200, material(keepalived=True, external_etcd=False)),
                ],
                "GET /v1/nodes/self/addons": [BUSY, (200, ADDONS)],
                "POST /v1/nodes/self/report": [BUSY, REPORTED],
            },
            0,
            id="leader-keepalived-addons",
        ),
        pytest.param(
            NodeKind.MASTER,
            EXTERNAL_ETCD,
            {
                "GET /v1/nodes/self/bootstrap": [(200, material(keepalived=False, external_etcd=True))],
                "GET /v1/nodes/self/join": [NOT_NOW, NOT_NOW, (200, JOIN)],
                "POST /v1/nodes/self/report": [REPORTED],
            },
            0,
            id="follower-external-etcd",
        ),
        pytest.param(
            NodeKind.WORKER,
            SETTINGS,
            {"GET /v1/nodes/self/join": [BUSY, (200, JOIN)], "POST /v1/nodes/self/report": [BUSY, REPORTED]},
            0,
            id="worker",
        ),
        pytest.param(
            NodeKind.WORKER,
            SETTINGS,
            {"GET /v1/nodes/self/join": [(200, JOIN)], "POST /v1/nodes/self/report": [REPORTED]},
            3,
            id="worker-pke-fails",
        ),
        pytest.param(
            NodeKind.WORKER,
            SETTINGS,
            {
                "GET /v1/nodes/self/join": [(200, {**JOIN, "node_address": "127.9.0.99"})],
                "POST /v1/nodes/self/report": [REPORTED],
            },
            0,
            id="worker-address-not-its-own",
        ),
    ],
)
async def test_the_light_bootstrap_has_the_scripts_conversation(
    kind: NodeKind,
    settings: NodeBootstrapSettings,
    answers: dict[str, list[tuple[int, Any]]],
    pke_exit: int,
    tls: tuple[ssl.SSLContext, str],
) -> None:
    script = await converse(False, kind, answers, tls, settings, pke_exit)
    light = await converse(True, kind, answers, tls, settings, pke_exit)

    assert light.requests == script.requests
    assert light.tool_calls == script.tool_calls
    assert light.files == script.files
    assert light.lines == script.lines
    assert light.events == script.events
    # And the conversation is the one asked for: every "not now" asked again, one report.
    assert script.requests[-1][:2] == ("POST", "/v1/nodes/self/report")
    assert all(auth == "Bearer the.node.token" for _, _, auth, _, _ in script.requests)
    assert len(script.requests) == sum(len(a) for a in answers.values())
    assert any(event.startswith("script-exited:") for event in script.events)
