"""The bootstrap script's steps, run inside the simulated-nodes agent: for benchmarks.

A stand-in for ``pke_vsphere/render/script.sh``, because 200 or 1000 copies of
it, each a bash with a dozen curl, python3 and stand-in tool processes, cost
more CPU on the benchmark's two cores than the orchestrator it measures (on a
real site each runs on its own VM). It makes the node API the same requests in
the same order (method, path, headers, body; a new connection each, as curl
opens), retries what the script retries as often and with the same pauses, asks
the agent's stand-in tools (``pke``, ``kubectl``, ``systemctl``) what the script
would run, with the arguments the script would expand, and writes the same
files under the node's root. tests/test_light_bootstrap.py runs both against
one recording server and requires the same conversation.

Only the benchmark uses it (``sim.nodes --light``): every test of the product
runs the real script.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import shlex
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pke_vsphere.contracts.protocol import NODE_KEY_HEADER, NODE_REQUEST_SECONDS
from pke_vsphere.render import cloudinit

# What the agent's stand-in tools answer: (exit code, stdout, stderr).
Tool = Callable[[str, list[str], str], Awaitable[tuple[int, str, str]]]

FETCH_TRIES = 60  # fetch(): seq 60
REPORT_TRIES = 20  # report(): seq 20
INSTALL_LOG = "var/log/pke-vsphere-install.log"
_VARIABLE = re.compile(r"\$([A-Z_]+)")
_SAFE = re.compile(r"^[A-Za-z0-9_.:/=-]*$")


class BootstrapFailed(Exception):
    """A step the script's ``set -e`` would stop at: the line it stopped at and its exit code."""

    def __init__(self, line: int, code: int) -> None:
        super().__init__(f"line {line}, exit {code}")
        self.line, self.code = line, code


@dataclass
class LightBootstrap:
    """One node's bootstrap, as script.sh runs it.

    ``say`` gets every line the script would print on stdout; ``tool`` runs a
    stand-in tool; ``addresses`` are the node's ``(interface, address/prefix)``
    in the order ``ip -o -4 addr show`` lists them.
    """

    root: Path
    script: str
    env: dict[str, str]
    tool: Tool
    say: Callable[[str], None]
    addresses: list[tuple[str, str]]
    retry_seconds: float
    _headers: dict[str, str] = field(default_factory=dict, repr=False)
    _tls: ssl.SSLContext | bool = True

    def _line(self, statement: str, occurrence: int = 1) -> int:
        """The script's line number of ``statement`` (its ERR trap reports it)."""
        found = [n for n, line in enumerate(self.script.splitlines(), start=1) if statement in line]
        if len(found) < occurrence:
            raise AssertionError(f"script.sh has no line {occurrence} with {statement!r}")
        return found[occurrence - 1]

    def _pause(self) -> float:
        return self.retry_seconds * (1 + random.randint(0, 32767) / 32767)

    async def run(self) -> int:
        """The script's exit code."""
        token_file = self.root / cloudinit.TOKEN_FILE.lstrip("/")
        self._headers = {
            "Authorization": f"Bearer {token_file.read_text().replace(chr(10), '')}",
            NODE_KEY_HEADER: secrets.token_urlsafe(32),
            "Content-Type": "application/json",
        }
        ca = self.env.get("PKE_VSPHERE_NODE_API_CA")
        if ca:
            self._tls = ssl.create_default_context(cafile=str(self.root / ca.lstrip("/")))
        try:
            await self._bootstrap()
        except BootstrapFailed as failed:
            detail = ""
            log = self.root / INSTALL_LOG
            if log.exists() and (lines := log.read_text().splitlines()):
                detail = lines[-1][:300]
            message = f"bootstrap failed at line {failed.line} (exit {failed.code})"
            await self._report("failed", message + (f": {detail}" if detail else ""))
            return failed.code
        return 0

    # --- the script's helpers -------------------------------------------------------
    async def _api(self, method: str, path: str, body: str | None = None) -> tuple[bool, str]:
        """``api``: curl --fail-with-body; a new connection per call, as curl makes."""
        try:
            async with httpx.AsyncClient(verify=self._tls, timeout=NODE_REQUEST_SECONDS) as client:
                response = await client.request(
                    method, self.env["PKE_VSPHERE_NODE_API"] + path, headers=self._headers, content=body
                )
        except httpx.HTTPError:
            return False, ""
        return response.is_success, response.text

    async def _fetch(self, path: str, statement: str) -> dict[str, Any]:
        for _ in range(FETCH_TRIES):
            ok, body = await self._api("GET", path)
            if ok:
                document: dict[str, Any] = json.loads(body)
                return document
            await asyncio.sleep(self._pause())
        raise BootstrapFailed(self._line(statement), 1)

    async def _report(self, kind: str, value: str) -> None:
        body = json.dumps({"kind": kind, ("message" if kind == "failed" else "address"): value})
        for _ in range(REPORT_TRIES):
            ok, _ = await self._api("POST", "/v1/nodes/self/report", body)
            if ok:
                self.say(f"pke-vsphere: reported {kind}")
                break
            await asyncio.sleep(self._pause())
        for path in (cloudinit.TOKEN_FILE, "/run/pke-vsphere/api-headers"):
            (self.root / path.lstrip("/")).unlink(missing_ok=True)

    def _json(self, document: dict[str, Any], key_path: str, statement: str) -> str:
        value: Any = document
        for key in key_path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            raise BootstrapFailed(self._line(statement), 1)
        return str(value)

    @staticmethod
    def _has(document: dict[str, Any], key_path: str) -> bool:
        value: Any = document
        for key in key_path.split("."):
            value = (value or {}).get(key)
        return value is not None

    def _own_address(self, address: str, occurrence: int) -> None:
        """``own_address``: one of the node's interfaces must hold the address."""
        if not any(held.split("/")[0] == address for _, held in self.addresses):
            self.say(f"the orchestrator's address for this node, {address}, is on none of its interfaces")
            raise BootstrapFailed(self._line('own_address "$ADVERTISE_ADDRESS"', occurrence), 1)

    def _write(self, path: str, line: str) -> None:
        """``... > path``: what ``json`` printed (the value and a newline)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(line + "\n")

    async def _run_tool(
        self, statement: str, tool: str, args: list[str], stdin: str = "", exit_code: int | None = None
    ) -> None:
        """Run a tool; its failure stops the bootstrap at ``statement`` with the tool's
        exit code (or ``exit_code``: the add-on step's python3 exits 1)."""
        code, out, err = await self.tool(tool, args, stdin)
        for printed in (out + err).splitlines():
            self.say(printed)
        if code != 0:
            raise BootstrapFailed(self._line(statement), code if exit_code is None else exit_code)

    # --- the bootstrap -----------------------------------------------------------------
    async def _bootstrap(self) -> None:
        kind = self.env["PKE_VSPHERE_KIND"]
        (self.root / "run/pke-vsphere").mkdir(parents=True, exist_ok=True)
        variables: dict[str, str] = {"API_PORT": self.env["PKE_VSPHERE_API_PORT"]}
        if kind != "worker":
            await self._masters_material(variables)
        if kind != "leader":
            join = await self._fetch("/v1/nodes/self/join", 'join="$(fetch /v1/nodes/self/join)"')
            self.say("pke-vsphere: fetched the join information")
            for variable, key in (
                ("JOIN_TOKEN", "token"),
                ("CA_CERT_HASH", "ca_cert_hash"),
                ("API_ENDPOINT", "api_endpoint"),
                ("ADVERTISE_ADDRESS", "node_address"),
            ):
                variables[variable] = self._json(join, key, f'{variable}="$(echo "$join" | json {key})"')
            self._own_address(variables["ADVERTISE_ADDRESS"], occurrence=2)
        variables.setdefault(
            "API_ENDPOINT",
            self.env.get("PKE_VSPHERE_API_ENDPOINT")
            or f"{variables['ADVERTISE_ADDRESS']}:{variables['API_PORT']}",
        )
        await self._install(variables)
        if kind == "leader":
            await self._addons()
            await self._report("ready", variables["ADVERTISE_ADDRESS"])
        else:
            await self._report("joined", variables["ADVERTISE_ADDRESS"])

    async def _masters_material(self, variables: dict[str, str]) -> None:
        material = await self._fetch(
            "/v1/nodes/self/bootstrap", 'material="$(fetch /v1/nodes/self/bootstrap)"'
        )
        self.say("pke-vsphere: fetched the bootstrap material")
        address = self._json(
            material, "node_address", 'ADVERTISE_ADDRESS="$(echo "$material" | json node_address)"'
        )
        variables["ADVERTISE_ADDRESS"] = address
        self._own_address(address, occurrence=1)
        pki = "/etc/kubernetes/pki"
        files = [("pki.kubernetes_ca.cert_pem", "ca.crt"), ("pki.kubernetes_ca.key_pem", "ca.key")]
        if self._has(material, "pki.etcd_ca"):
            files += [("pki.etcd_ca.cert_pem", "etcd/ca.crt"), ("pki.etcd_ca.key_pem", "etcd/ca.key")]
        if self._has(material, "external_etcd"):
            files += [
                ("external_etcd.certificate.ca_cert_pem", "etcd/external-ca.crt"),
                ("external_etcd.certificate.cert_pem", "apiserver-etcd-client.crt"),
                ("external_etcd.certificate.key_pem", "apiserver-etcd-client.key"),
            ]
        files += [
            ("pki.front_proxy_ca.cert_pem", "front-proxy-ca.crt"),
            ("pki.front_proxy_ca.key_pem", "front-proxy-ca.key"),
            ("pki.service_account_key_pem", "sa.key"),
            ("pki.service_account_public_pem", "sa.pub"),
        ]
        for key_path, name in files:
            self._write(f"{pki}/{name}", self._json(material, key_path, f'json {key_path} > "$PKI/{name}"'))
        if self._has(material, "keepalived_conf"):
            interface = next((nic for nic, held in self.addresses if held.startswith(f"{address}/")), "")
            conf = self._json(material, "keepalived_conf", 'keepalived_conf="$(echo')
            # echo "$keepalived_conf" | sed ...: $(...) dropped the trailing newlines, echo adds one.
            conf = conf.rstrip("\n").replace("@VRRP_INTERFACE@", interface)
            self._write("/etc/keepalived/keepalived.conf", conf)
            await self._run_tool(
                "systemctl enable --now keepalived", "systemctl", ["enable", "--now", "keepalived"]
            )
            self.say(f"pke-vsphere: started keepalived on {interface}")

    async def _install(self, variables: dict[str, str]) -> None:
        """``pke install ARGS 2>&1 | tee -a INSTALL_LOG``, ARGS as bash expands them."""
        line = next(line for line in self.script.splitlines() if line.startswith("pke install "))
        words = line.removeprefix("pke install ").split(" 2>&1 |")[0]

        def value(match: re.Match[str]) -> str:
            found = variables[match[1]]
            if not _SAFE.match(found):  # what the shell would keep as is inside double quotes
                raise ValueError(f"${match[1]} holds {found!r}: not a value the stand-in expands")
            return found

        args = ["install", *shlex.split(_VARIABLE.sub(value, words))]
        (self.root / INSTALL_LOG).parent.mkdir(parents=True, exist_ok=True)
        code, out, err = await self.tool("pke", args, "")
        with (self.root / INSTALL_LOG).open("a") as log:
            log.write(out + err)
        for printed in (out + err).splitlines():
            self.say(printed)
        if code != 0:
            raise BootstrapFailed(self._line(line), code)
        self.say("pke-vsphere: pke install finished")

    async def _addons(self) -> None:
        """The leader's add-on step (the script's embedded Python, call by call)."""
        addons = await self._fetch("/v1/nodes/self/addons", "fetch /v1/nodes/self/addons >")

        async def kubectl(*args: str, stdin: str = "") -> None:
            await self._run_tool(
                'python3 - "$addons_file"', "kubectl", ["--request-timeout=60s", *args], stdin, exit_code=1
            )

        for addon in addons["addons"]:
            if addon.get("objects_first"):
                await kubectl("apply", "-f", "-", stdin=addon["manifest"])
            selector = ["-l", addon["install_selector"]] if addon.get("install_selector") else []
            await kubectl("apply", "-f", addon["install_url"], *selector)
            await kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=300s")
            if addon["wait_for_release"]:
                await kubectl(
                    "-n",
                    addon["namespace"],
                    "wait",
                    "--for=condition=Available",
                    "deployment",
                    "--all",
                    "--timeout=600s",
                )
            if not addon.get("objects_first"):
                await kubectl("apply", "-f", "-", stdin=addon["manifest"])
            self.say(f"pke-vsphere: applied add-on {addon['name']}@{addon['version']}")
