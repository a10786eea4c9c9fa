"""Simulated booting nodes.

A stand-in for real VMs, because no VM boots here. It watches the simulator for
powered-on VMs carrying pke-vsphere's markers (property updates of every VM's
power state, one collector: no rescans), decodes each VM's real
``guestinfo.userdata``, waits a boot delay, and reports an address the way
VMware Tools would (``SET.guest.nic.MAC.ipAddress``, a distinct 127.x.y.z per
VM). Then it does what cloud-init does: it writes the cloud-config's files
under a directory of the node's own and runs its ``runcmd``, the rendered
bootstrap script itself, unprivileged (``PKE_VSPHERE_ROOT``). The script calls
the node API with real curl; its ``pke``, ``kubectl``, ``systemctl`` and ``ip``
are the stand-ins of sim/standin_tool.py, which ask this agent to do to the
simulated world what the real tools would: the leader's ``pke install`` starts
a stand-in API server (sim/kubeapi.py) on its address and VIP, a joining
node's is accepted only with a bootstrap token that API holds, a master of an
external etcd writes its lease to the real etcd with the files it was given.

It never reaches into Temporal or the orchestrator's memory. Per-node
behaviours let tests make a node silent, fail, never get an address, or run a
bootstrap of its own that reports another address.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import random
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx
import structlog
from pyVmomi import vim, vmodl

from pke_vsphere.contracts.pki import EtcdClientCertificate, ExternalEtcdClient
from pke_vsphere.contracts.protocol import NODE_KEY_HEADER
from pke_vsphere.etcd.client import EtcdUnavailable, first_answer
from pke_vsphere.pki.bootstrap_tokens import TOKEN_PATTERN
from pke_vsphere.render import cloudinit, guestinfo
from pke_vsphere.vsphere import properties
from sim import vcenter
from sim.kubeapi import StandInKubeAPI
from sim.light_bootstrap import LightBootstrap

log = structlog.get_logger(__name__)


class Behaviour(StrEnum):
    NORMAL = "normal"
    SILENT = "silent"
    """Gets an address, never reports."""
    NO_IP = "no-ip"
    """VMware Tools never reports an address."""
    FAIL = "fail"
    """Its ``pke install`` fails: the script reports the failure."""
    OTHER_ADDRESS = "other-address"
    """Runs a bootstrap of its own instead of the script: Kubernetes on its other
    NIC's address, and reports that one."""


@dataclass
class BootedNode:
    name: str
    vm_ref: str
    kind: str
    ip: str
    install_command: str
    token: str = field(repr=False, default="")
    """The token as guestinfo carried it at this node's first boot (attacker tests replay it)."""
    cluster: str = ""
    pool: str = ""
    uuid: str = ""
    external_etcd: dict[str, Any] | None = field(repr=False, default=None)
    """What a master of an external etcd got to reach it (tests try it outside its prefix)."""
    root: Path | None = None
    """The node's file system: where cloud-init wrote its files and its script writes."""
    vip: str | None = None
    """The VIP, once the node started keepalived."""
    pke_args: list[str] = field(default_factory=list)
    """What ``pke`` was called with, as the script expanded it."""
    events: list[tuple[float, str]] = field(default_factory=list)
    output: list[str] = field(default_factory=list, repr=False)
    """What the bootstrap script printed (cloud-init-output.log)."""


NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The script's progress lines (``say`` in script.sh) and the events they are.
_EVENTS = {
    "pke-vsphere: fetched the bootstrap material": "material-fetched",
    "pke-vsphere: fetched the join information": "join-info",
    "pke-vsphere: pke install finished": "installed",
    "pke-vsphere: reported ready": "reported-ready",
    "pke-vsphere: reported joined": "reported-joined",
    "pke-vsphere: reported failed": "reported-failed",
}
_ADDON = re.compile(r"^pke-vsphere: applied add-on (\S+)$")


def script_event(line: str) -> str | None:
    """The event a line of the bootstrap script's output stands for, if any."""
    if line in _EVENTS:
        return _EVENTS[line]
    if match := _ADDON.match(line):
        return f"addon-applied:{match[1]}"
    return None


def sourced(env_file: str) -> dict[str, str]:
    """The variables of node.env, as ``. node.env`` sets them (each value one shell word)."""
    return {
        key: shlex.split(value)[0] if value else ""
        for key, _, value in (line.partition("=") for line in env_file.splitlines() if "=" in line)
    }


_PREFIXES_TAKEN: set[str] = set()
# Where an agent given no prefix draws one (the demo); the tests hand out the
# prefixes below, a share to each of their processes.
DEFAULT_PREFIXES = range(150, 251)


def _free_prefix() -> str:
    """A 127.N prefix no other agent of this process has; drawn from the OS's
    randomness, which test frameworks that seed ``random`` do not repeat."""
    choices = [f"127.{n}" for n in DEFAULT_PREFIXES if f"127.{n}" not in _PREFIXES_TAKEN]
    prefix = random.SystemRandom().choice(choices)
    _PREFIXES_TAKEN.add(prefix)
    return prefix


class _PowerWatch:
    """Every VM's power state, through one PropertyCollector filter on a view of
    all VMs: each call returns what changed since the last (the first, all)."""

    def __init__(self, si: Any) -> None:
        content = si.content
        self._view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
        self._collector = content.propertyCollector.CreatePropertyCollector()
        traversal = vmodl.query.PropertyCollector.TraversalSpec(
            name="view", path="view", skip=False, type=vim.view.ContainerView
        )
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(obj=self._view, skip=True, selectSet=[traversal])
            ],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.VirtualMachine, pathSet=["runtime.powerState"]
                )
            ],
        )
        self._collector.CreateFilter(spec, partialUpdates=False)
        self._version = ""

    def changes(self, wait_seconds: int) -> dict[Any, bool]:
        """VM -> whether it is on now, for every VM whose power state changed (or that
        appeared or went) since the last call; waits up to ``wait_seconds`` for one."""
        options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=wait_seconds)
        update = self._collector.WaitForUpdatesEx(self._version, options)
        changed: dict[Any, bool] = {}
        if update is None:
            return changed
        self._version = update.version
        for filter_set in update.filterSet or []:
            for object_set in filter_set.objectSet or []:
                on = object_set.kind != "leave" and any(
                    change.name == "runtime.powerState"
                    and change.val == vim.VirtualMachine.PowerState.poweredOn
                    for change in object_set.changeSet or []
                )
                changed[object_set.obj] = on
        return changed


class SimulatedNodes:
    """Boots every powered-on VM of pke-vsphere that appears in the simulator."""

    def __init__(
        self,
        connect: Any,
        *,
        boot_seconds: float = 0.5,
        join_poll_seconds: float = 0.5,
        behaviours: dict[str, Behaviour] | None = None,
        boot_delays: dict[str, float] | None = None,
        scan_seconds: float = 0.3,
        ip_prefix: str | None = None,
        cluster_network: str | None = vcenter.NETWORK,
        light: bool = False,
    ) -> None:
        self._connect = connect
        self._si: Any = None
        self._power: _PowerWatch | None = None
        self._on: dict[str, tuple[Any, dict[str, str], str]] = {}
        self.boot_seconds = boot_seconds
        self.join_poll_seconds = join_poll_seconds
        self.behaviours = behaviours or {}
        self.boot_delays = boot_delays or {}
        self.scan_seconds = scan_seconds
        # The bootstrap script's steps run in this process (sim/light_bootstrap.py), not
        # the script: for benchmarks, whose nodes would otherwise cost more CPU than
        # the orchestrator they measure.
        self.light = light
        # The port group whose DHCP hands out the nodes' addresses; the guests' other
        # NICs get addresses of another network, reported first (see _report_ip).
        self.cluster_network = cluster_network
        # Each agent takes its own 127.N.0.0/16, so two at once (a demo and a test
        # run, or two agents of one test run) never hand out the same address or
        # bind the same API port.
        self._ip_prefix = ip_prefix or _free_prefix()
        self._ips: dict[str, str] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.nodes: dict[str, BootedNode] = {}
        self.errors: list[str] = []
        # Stand-in API servers, by every "host:port" they answer on, and by cluster.
        self.kube_apis: dict[str, StandInKubeAPI] = {}
        self.cluster_apis: dict[str, StandInKubeAPI] = {}
        self.pods_per_worker = 2
        # cloud-init runs once per instance: a VM that booted before only restarts its kubelet.
        self._bootstrapped: set[str] = set()
        self._node_of: dict[str, str] = {}
        # Each node's file system, the stand-in tools and the socket they ask this agent on.
        self._work = Path(tempfile.mkdtemp(prefix="pke-sim-nodes-"))
        self._bin = self._work / "bin"
        self._control_path = self._work / "control.sock"

    def behaviour(self, name: str) -> Behaviour:
        for pattern, behaviour in self.behaviours.items():
            if fnmatch.fnmatch(name, pattern):
                return behaviour
        return Behaviour.NORMAL

    def boot_delay(self, name: str) -> float:
        for pattern, seconds in self.boot_delays.items():
            if fnmatch.fnmatch(name, pattern):
                return seconds
        return self.boot_seconds

    def _ip_for(self, instance_uuid: str) -> str:
        if instance_uuid not in self._ips:
            n = len(self._ips) + 10
            self._ips[instance_uuid] = f"{self._ip_prefix}.{n // 250}.{n % 250 + 2}"
        return self._ips[instance_uuid]

    def other_network_ip(self, ip: str) -> str:
        """The address a guest gets on a network other than the cluster's (the same
        host part, third octet + 200: never one of this agent's node addresses)."""
        a, b, c, d = ip.split(".")
        return f"{a}.{b}.{int(c) + 200}.{d}"

    def _scan(self) -> list[tuple[Any, dict[str, str], str]]:
        """The powered-on VMs of pke-vsphere, as the simulator's property updates tell
        it: one collector watches every VM's power state, and a VM that comes on
        has its guestinfo read once. (Reading every VM's extraConfig each round
        cost more CPU at 200 nodes than the orchestrator under test.)"""
        if self._si is None:
            self._si = self._connect()
            self._power = _PowerWatch(self._si)
            self._on = {}
        assert self._power is not None
        for vm, on in self._power.changes(max(1, round(self.scan_seconds))).items():
            if not on:
                self._on.pop(vm._moId, None)
                continue
            props = properties.read(self._si, vm, ["config.extraConfig", "config.instanceUuid"])
            extra = properties.extra_config(props.get("config.extraConfig"))
            if extra.get(guestinfo.MARKER_MANAGED_BY) == guestinfo.MANAGED_BY:
                self._on[vm._moId] = (vm, extra, props.get("config.instanceUuid", vm._moId))
        return list(self._on.values())

    def _install_tools(self) -> None:
        tool = Path(__file__).with_name("standin_tool.py")
        self._bin.mkdir(exist_ok=True)
        for name in ("pke", "kubectl", "systemctl", "ip"):
            wrapper = self._bin / name
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S -E "{tool}" {name} "$@"\n')
            wrapper.chmod(0o755)

    async def run(self) -> None:
        """Scan until cancelled; boot each VM once per power-on."""
        self._install_tools()
        control = await asyncio.start_unix_server(self._serve_tool, path=str(self._control_path))
        try:
            while True:
                try:
                    vms = await asyncio.to_thread(self._scan)
                except Exception as exc:  # the simulator may restart in fault tests
                    log.warning("simnodes.scan_failed", error=str(exc))
                    self._si = None
                    vms = []
                on = set()
                for vm, extra, uuid in vms:
                    on.add(uuid)
                    if uuid not in self._tasks:
                        self._tasks[uuid] = asyncio.create_task(self._boot(vm, extra, uuid))
                for uuid in list(self._tasks):
                    if uuid not in on and self._tasks[uuid].done():
                        del self._tasks[uuid]  # powered off: boots again when powered on
                        self._kubelet_stopped(uuid)
                await asyncio.sleep(self.scan_seconds)
        finally:
            for task in self._tasks.values():
                task.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
            control.close()
            shutil.rmtree(self._work, ignore_errors=True)
            await self.stop_apis()

    async def _boot(self, vm: Any, extra: dict[str, str], uuid: str) -> None:
        name = extra.get(guestinfo.MARKER_NODE, vm._moId)
        try:
            await self._boot_node(vm, extra, uuid, name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors.append(f"{name}: {exc}")
            log.warning("simnodes.boot_failed", node=name, error=str(exc))

    async def _boot_node(self, vm: Any, extra: dict[str, str], uuid: str, name: str) -> None:
        behaviour = self.behaviour(name)
        userdata = guestinfo.decode(
            extra[guestinfo.USERDATA], extra.get(f"{guestinfo.USERDATA}.encoding", "")
        )
        ip = self._ip_for(uuid)
        if uuid in self._bootstrapped:  # cloud-init ran already: its guestinfo holds no token now
            await self._reboot(vm, uuid, name, ip)
            return
        config = cloudinit.parse(userdata)
        env = sourced(cloudinit.written_file(config, cloudinit.ENV_FILE))
        token = cloudinit.written_file(config, cloudinit.TOKEN_FILE).strip()
        script = cloudinit.written_file(config, cloudinit.SCRIPT_FILE)
        install = next(line for line in script.splitlines() if line.startswith("pke install "))
        node = BootedNode(
            name=name,
            vm_ref=vm._moId,
            kind=env["PKE_VSPHERE_KIND"],
            ip=ip,
            install_command=install,
            token=token,
            cluster=env["PKE_VSPHERE_CLUSTER"],
            pool=env["PKE_VSPHERE_POOL"],
            uuid=uuid,
        )
        self.nodes[name] = node
        self._node_of[uuid] = name
        node.events.append((time.time(), "powered-on"))

        await asyncio.sleep(self.boot_delay(name))
        if behaviour is Behaviour.NO_IP:
            node.events.append((time.time(), "no-ip"))
            return
        await asyncio.to_thread(self._report_ip, vm, ip, name)
        node.events.append((time.time(), "ip-reported"))
        if behaviour is Behaviour.SILENT:
            return
        if behaviour is Behaviour.OTHER_ADDRESS:
            await self._own_bootstrap(node, env, token)
            return
        await self._cloud_init(node, config)

    # --- cloud-init and the bootstrap script ------------------------------------------
    async def _cloud_init(self, node: BootedNode, config: dict[str, object]) -> None:
        """What cloud-init does with the node's cloud-config: write its files (under the
        node's own root) and run its runcmd, the rendered bootstrap script itself."""
        root = node.root = self._work / f"{node.name}-{node.uuid[:8]}"
        files = config.get("write_files")
        assert isinstance(files, list)
        for entry in files:
            path = root / str(entry["path"]).lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(entry["content"]))
            path.chmod(int(str(entry.get("permissions", "0644")), 8))
        commands = config.get("runcmd")
        assert isinstance(commands, list)
        if self.light:
            await self._run_light(node, cloudinit.written_file(config, cloudinit.SCRIPT_FILE))
            return
        for command in commands:
            argv = [str(root / str(command[0]).lstrip("/")), *map(str, command[1:])]
            await self._run_script(node, argv)

    def _addresses(self, node: BootedNode) -> list[tuple[str, str]]:
        """The guest's interfaces and addresses, as ``ip`` lists them (its other NIC
        first: see _report_ip)."""
        return [("ens224", f"{self.other_network_ip(node.ip)}/16"), ("ens192", f"{node.ip}/16")]

    async def _run_light(self, node: BootedNode, script: str) -> None:
        """The script's steps in this process (sim/light_bootstrap.py)."""
        assert node.root is not None
        env = sourced((node.root / cloudinit.ENV_FILE.lstrip("/")).read_text())

        def say(line: str) -> None:
            node.output.append(line)
            if (event := script_event(line)) is not None:
                node.events.append((time.time(), event))

        async def tool(name: str, args: list[str], stdin: str) -> tuple[int, str, str]:
            return await self._answer_tool(node, name, args, stdin)

        bootstrap = LightBootstrap(
            root=node.root,
            script=script,
            env=env,
            tool=tool,
            say=say,
            addresses=self._addresses(node),
            retry_seconds=self.join_poll_seconds,
        )
        code = await bootstrap.run()
        node.events.append((time.time(), f"script-exited:{code}"))

    def _script_env(self, node: BootedNode) -> dict[str, str]:
        return {
            # A node's own PATH (not this process's: a VM has no virtualenv or pyenv shims).
            "PATH": f"{self._bin}:{NODE_PATH}",
            "HOME": str(node.root),
            "TMPDIR": str(node.root),
            "LANG": "C.UTF-8",
            "PKE_VSPHERE_ROOT": str(node.root),
            "PKE_VSPHERE_RETRY_SECONDS": str(self.join_poll_seconds),
            "PKE_VSPHERE_SIM_NODE": node.name,
            "PKE_VSPHERE_SIM_CONTROL": str(self._control_path),
            "PKE_VSPHERE_SIM_ADDRESSES": " ".join(f"{nic}={held}" for nic, held in self._addresses(node)),
        }

    async def _run_script(self, node: BootedNode, argv: list[str]) -> None:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=self._script_env(node),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        try:
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                node.output.append(line)
                event = script_event(line)
                if event is not None:
                    node.events.append((time.time(), event))
            code = await process.wait()
        except asyncio.CancelledError:
            if process.returncode is None:
                process.kill()
            raise
        node.events.append((time.time(), f"script-exited:{code}"))
        if code != 0:
            log.info("simnodes.script_failed", node=node.name, exit=code, last=node.output[-3:])

    # --- the stand-in tools (sim/standin_tool.py) ---------------------------------------
    async def _serve_tool(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(await reader.readline())
            node = self.nodes[request["node"]]
            code, out, err = await self._answer_tool(node, request["tool"], request["args"], request["stdin"])
            writer.write(json.dumps({"exit": code, "stdout": out, "stderr": err}).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    async def _answer_tool(
        self, node: BootedNode, tool: str, args: list[str], stdin: str
    ) -> tuple[int, str, str]:
        try:
            return await self._tool(node, tool, args, stdin)
        except Exception as exc:  # a bug here must fail the node's step, not hang its script
            log.warning("simnodes.tool_failed", node=node.name, tool=tool, error=repr(exc))
            return 1, "", f"{tool} (stand-in): {exc!r}\n"

    async def _tool(self, node: BootedNode, tool: str, args: list[str], stdin: str) -> tuple[int, str, str]:
        if tool == "pke":
            return await self._pke(node, args)
        if tool == "kubectl":
            return self._kubectl(node, args, stdin)
        if tool == "systemctl":
            return self._systemctl(node, args)
        return 127, "", f"{tool}: no stand-in\n"

    def _systemctl(self, node: BootedNode, args: list[str]) -> tuple[int, str, str]:
        """``systemctl enable --now keepalived``: the VIP is the node's from now on
        (the leader holds it: its priority is the highest)."""
        if args == ["enable", "--now", "keepalived"]:
            assert node.root is not None
            conf = (node.root / "etc/keepalived/keepalived.conf").read_text()
            match = re.search(r"virtual_ipaddress \{\s*([0-9.]+)", conf)
            if match is None:
                return 1, "", "keepalived: no virtual_ipaddress in /etc/keepalived/keepalived.conf\n"
            node.vip = match[1]
            node.events.append((time.time(), "keepalived-started"))
            return 0, "", ""
        return 0, "", ""

    async def _pke(self, node: BootedNode, args: list[str]) -> tuple[int, str, str]:
        """``pke install master|worker FLAGS``: what PKE would do to the simulated world."""
        node.pke_args = list(args)
        if args[:1] != ["install"] or len(args) < 2:
            return 2, "", f"pke (stand-in): only 'pke install' is simulated, not {args!r}\n"
        flags: dict[str, str] = {}
        for arg in args[2:]:
            key, _, value = arg.partition("=")
            flags.setdefault(key, value)
        if self.behaviour(node.name) is Behaviour.FAIL:
            return 1, "", "simulated: pke install exited 1\n"
        if args[1] == "master":
            problem = await self._start_api_server_storage(node, flags)
            if problem is not None:
                return 1, "", problem + "\n"
        if node.kind == "leader":
            assert node.root is not None
            pki = node.root / "etc/kubernetes/pki"
            host, _, port = flags["--kubernetes-advertise-address"].rpartition(":")
            kube = await self._start_api(
                node.cluster,
                host,
                int(port),
                node.vip,
                flags.get("--kubernetes-api-server"),
                (pki / "ca.crt").read_text(),
                (pki / "ca.key").read_text(),
            )
            kube.register_node(node.name, node.pool, node.kind, pods=0)
            (node.root / "etc/kubernetes/admin.conf").write_text(f"# stand-in for {host}:{port}\n")
            self._bootstrapped.add(node.uuid)
            return 0, f"[init] control plane of {node.cluster} serving on {host}:{port}\n", ""
        endpoint, token = flags["--kubernetes-api-server"], flags["--kubernetes-node-token"]
        ca_hash = flags.get("--kubernetes-api-server-ca-cert-hash", "")
        if not TOKEN_PATTERN.match(token) or not ca_hash.startswith("sha256:"):
            return 1, "", "kubeadm join: malformed bootstrap token or CA hash\n"
        if not self._join(node, endpoint, token):
            return 1, "", f"kubeadm join: the API server at {endpoint} rejected the bootstrap token\n"
        return 0, f"[join] {node.name} joined {endpoint}\n", ""

    def _join(self, node: BootedNode, endpoint: str, token: str) -> bool:
        """What kubeadm join does: the API server at ``endpoint`` must hold the token;
        then the kubelet registers its Node (a worker's pods with it)."""
        serving = self.kube_apis.get(endpoint)
        if serving is None or not serving.accepts_token(token):
            node.events.append((time.time(), "token-rejected"))
            return False
        pods = self.pods_per_worker if node.kind == "worker" else 0
        serving.register_node(node.name, node.pool, node.kind, pods=pods)
        self._bootstrapped.add(node.uuid)
        return True

    def _kubectl(self, node: BootedNode, args: list[str], stdin: str) -> tuple[int, str, str]:
        """``kubectl apply -f -|URL [-l SELECTOR]`` and ``kubectl wait ...`` on the leader."""
        kube = self.cluster_apis.get(node.cluster)
        if kube is None:
            return 1, "", "kubectl: the connection to the server was refused\n"
        words = [a for a in args if not a.startswith("--request-timeout")]
        if words[:1] == ["apply"] and "-f" in words:
            source = words[words.index("-f") + 1]
            if source == "-":
                kube.apply(stdin)
            else:
                kube.objects.installed.append(source)
        return 0, "", ""

    async def _start_api_server_storage(self, node: BootedNode, flags: dict[str, str]) -> str | None:
        """What a master's kube-apiserver needs of etcd, or why it would not start.
        With ``--etcd-endpoints`` it is the external etcd of the flags, reached with the
        certificate files the script wrote: the stand-in writes its master lease
        (``PREFIX/masterleases/IP``, as kube-apiserver does) to the real etcd. Without,
        the master runs etcd itself and needs the etcd CA the script wrote."""
        assert node.root is not None
        root = node.root

        def read(path: str) -> str | None:
            file = root / path.lstrip("/")
            return file.read_text() if path and file.is_file() else None

        if "--etcd-endpoints" not in flags:
            if read("/etc/kubernetes/pki/etcd/ca.crt") is None:
                return (
                    "etcd: no etcd CA at /etc/kubernetes/pki/etcd/ca.crt, and no external etcd in the flags"
                )
            return None
        files = {f: read(flags.get(f"--etcd-{f}-file", "")) for f in ("ca", "cert", "key")}
        if None in files.values():
            return "kube-apiserver: --etcd-endpoints given but its certificate files are missing"
        pems = {"ca_cert_pem": files["ca"], "cert_pem": files["cert"], "key_pem": files["key"]}
        etcd = ExternalEtcdClient(
            endpoints=flags["--etcd-endpoints"].split(","),
            prefix=flags.get("--etcd-prefix", ""),
            certificate=EtcdClientCertificate.model_validate(pems),
        )
        node.external_etcd = etcd.model_dump(mode="json") | {"certificate": pems}
        ip = flags["--kubernetes-advertise-address"].rpartition(":")[0]

        def write_lease() -> str | None:
            try:
                first_answer(
                    etcd.endpoints, etcd.certificate, lambda g: g.put(f"{etcd.prefix}/masterleases/{ip}", ip)
                )
            except EtcdUnavailable as exc:
                return f"kube-apiserver: cannot reach etcd: {exc}"
            return None

        return await asyncio.to_thread(write_lease)

    async def _own_bootstrap(self, node: BootedNode, env: dict[str, str], token: str) -> None:
        """A node whose image does not run our script: it joins, but runs Kubernetes on
        its other NIC and reports that address (the orchestrator must notice)."""
        headers = {"Authorization": f"Bearer {token}", NODE_KEY_HEADER: secrets.token_urlsafe(32)}
        async with httpx.AsyncClient(
            base_url=env["PKE_VSPHERE_NODE_API"], headers=headers, timeout=30
        ) as api:
            join = await self._fetch(api, "/v1/nodes/self/join")
            if not self._join(node, join["api_endpoint"], join["token"]):
                await self._post(api, {"kind": "failed", "message": "the API server rejected the token"})
                return
            await self._post(api, {"kind": "joined", "address": self.other_network_ip(join["node_address"])})
            node.events.append((time.time(), "reported-joined"))

    async def _reboot(self, vm: Any, uuid: str, name: str, ip: str) -> None:
        """A second boot of the same instance: VMware Tools reports the address again
        and the kubelet comes back; cloud-init does not run again."""
        node = self.nodes[name]
        node.events.append((time.time(), "powered-on-again"))
        await asyncio.sleep(self.boot_delay(name))
        await asyncio.to_thread(self._report_ip, vm, ip, name)
        for kube in self.cluster_apis.values():
            kube.set_ready(name, True)
        node.events.append((time.time(), "kubelet-ready"))

    def _kubelet_stopped(self, uuid: str) -> None:
        name = self._node_of.get(uuid)
        if name is not None and uuid in self._bootstrapped:
            for kube in self.cluster_apis.values():
                kube.set_ready(name, False)

    async def _start_api(
        self,
        cluster: str,
        ip: str,
        port: int,
        vip: str | None,
        endpoint: str | None,
        ca_cert_pem: str,
        ca_key_pem: str,
    ) -> StandInKubeAPI:
        """The leader's API server, on its own address and the VIP it holds, on the
        control plane's port, signed by the cluster CA."""
        kube = self.kube_apis.get(f"{ip}:{port}") or StandInKubeAPI(ca_cert_pem, ca_key_pem)
        for host in dict.fromkeys([ip, *([vip] if vip else [])]):
            await kube.serve(host, port)
            self.kube_apis[f"{host}:{port}"] = kube
        if endpoint and endpoint not in self.kube_apis:
            # A DNS name: the simulated network resolves it to the VIP (or the leader).
            self.kube_apis[endpoint] = kube
        self.cluster_apis[cluster] = kube
        return kube

    async def stop_apis(self) -> None:
        """Stop every stand-in API server at once (each takes a few tenths of a second)."""
        apis = {id(k): k for k in [*self.kube_apis.values(), *self.cluster_apis.values()]}
        await asyncio.gather(*(kube.stop() for kube in apis.values()))
        self.kube_apis.clear()
        self.cluster_apis.clear()

    @property
    def ip_prefix(self) -> str:
        """The 127.N prefix this agent's guests get their addresses from."""
        return self._ip_prefix

    async def _fetch(self, api: httpx.AsyncClient, path: str) -> dict[str, Any]:
        """GET ``path``, retrying "not now" answers (409, 503) as the bootstrap script does."""
        while True:
            response = await api.get(path)
            if response.status_code == 200:
                result: dict[str, Any] = response.json()
                return result
            if response.status_code not in (409, 503):
                response.raise_for_status()
            await asyncio.sleep(self.join_poll_seconds)

    @staticmethod
    async def _post(api: httpx.AsyncClient, body: dict[str, str]) -> None:
        for _ in range(120):  # as the script: "not now" (409, 503) is asked again
            response = await api.post("/v1/nodes/self/report", json=body)
            if response.status_code not in (409, 503):
                break
            await asyncio.sleep(0.5)
        response.raise_for_status()

    def _report_ip(self, vm: Any, ip: str, name: str) -> None:
        """What VMware Tools does: publish the guest's addresses and host name. The
        NIC on the cluster's network gets ``ip``; any other NIC an address of its own
        network, listed first (a guest's interface order need not be the VM's)."""
        if self._si is None:
            self._si = self._connect()
        vm = vim.VirtualMachine(vm._moId, self._si._stub)
        nics = properties.read(self._si, vm, ["guest.net"]).get("guest.net") or []
        ours = [n for n in nics if n.network == self.cluster_network] or nics[:1]
        addresses = [(n.macAddress, self.other_network_ip(ip)) for n in nics if n not in ours]
        addresses += [(n.macAddress, ip) for n in ours[:1]]
        options = [
            vim.option.OptionValue(key=f"SET.guest.nic.{mac}.ipAddress", value=a) for mac, a in addresses
        ]
        if not addresses:  # a VM without a NIC
            options.append(vim.option.OptionValue(key="SET.guest.ipAddress", value=ip))
        options.append(vim.option.OptionValue(key="SET.guest.hostName", value=name))
        vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=options))


def main() -> None:
    """``python -m sim.nodes --settings FILE``: boot the simulator's VMs (demo)."""
    import argparse

    from pke_vsphere.config import VCenterSettings, load
    from pke_vsphere.runtime import logs
    from pke_vsphere.vsphere.session import VCenterSession

    parser = argparse.ArgumentParser(description="simulated booting nodes")
    parser.add_argument("--settings", help="dotenv-style settings file (vCenter URL and login)")
    parser.add_argument("--boot-seconds", type=float, default=2.0)
    parser.add_argument(
        "--light",
        action="store_true",
        help="run the bootstrap script's steps in this process instead of the script (benchmarks)",
    )
    parser.add_argument(
        "--behaviour",
        action="append",
        default=[],
        metavar="NODE_GLOB=BEHAVIOUR",
        help=f"e.g. 'demo-workers-02=silent'; behaviours: {', '.join(b.value for b in Behaviour)}",
    )
    args = parser.parse_args()
    logs.configure()
    behaviours = {}
    for item in args.behaviour:
        pattern, _, value = item.partition("=")
        behaviours[pattern] = Behaviour(value)
    session = VCenterSession(load(VCenterSettings, args.settings))
    agent = SimulatedNodes(
        session.service_instance,
        boot_seconds=args.boot_seconds,
        join_poll_seconds=2.0,
        behaviours=behaviours,
        light=args.light,
    )
    asyncio.run(_until_terminated(agent))


async def _until_terminated(agent: SimulatedNodes) -> None:
    """Run the agent until SIGTERM (``make down``), then let it stop its scripts, its
    stand-in APIs and remove the nodes' files."""
    import signal

    task = asyncio.create_task(agent.run())
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


if __name__ == "__main__":
    main()
