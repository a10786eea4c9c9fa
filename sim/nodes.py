"""Simulated booting nodes.

A stand-in for real VMs running cloud-init and PKE, because no VM boots here.
It watches the simulator for powered-on VMs carrying pke-vsphere's markers,
decodes each VM's real ``guestinfo.userdata``, waits a boot delay, reports an
address the way VMware Tools would (``SET.guest.ipAddress``, a distinct
127.x.y.z per VM), then follows the bootstrap protocol of the rendered
script using only what the cloud-config gave it (node API URL and token):
masters fetch their material, the leader reports ready, the others fetch
join information until the leader is ready and then report joined.

It never reaches into Temporal or the orchestrator's memory. Per-node
behaviours let tests make a node silent, fail, or never get an address.
"""

from __future__ import annotations

import asyncio
import fnmatch
import random
import secrets
import shlex
import ssl
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import httpx
import structlog
from pyVmomi import vim

from pke_vsphere.contracts.pki import ExternalEtcdClient
from pke_vsphere.contracts.protocol import NODE_KEY_HEADER
from pke_vsphere.etcd.client import EtcdUnavailable, first_answer
from pke_vsphere.pki.bootstrap_tokens import TOKEN_PATTERN
from pke_vsphere.render import cloudinit, guestinfo
from pke_vsphere.vsphere import properties
from sim import vcenter
from sim.kubeapi import PORT, StandInKubeAPI

log = structlog.get_logger(__name__)


class Behaviour(StrEnum):
    NORMAL = "normal"
    SILENT = "silent"
    """Gets an address, never reports."""
    NO_IP = "no-ip"
    """VMware Tools never reports an address."""
    FAIL = "fail"
    """Reports a bootstrap failure."""
    OTHER_ADDRESS = "other-address"
    """Runs Kubernetes on its other NIC's address and reports that one."""


@dataclass
class BootedNode:
    name: str
    vm_ref: str
    kind: str
    ip: str
    install_command: str
    token: str = field(repr=False, default="")
    """The token as guestinfo carried it at this node's first boot (attacker tests replay it)."""
    external_etcd: dict[str, Any] | None = field(repr=False, default=None)
    """What a master of an external etcd got to reach it (tests try it outside its prefix)."""
    events: list[tuple[float, str]] = field(default_factory=list)


_PREFIXES_TAKEN: set[str] = set()


def _free_prefix() -> str:
    """A 127.N prefix no other agent of this process has; drawn from the OS's
    randomness, which test frameworks that seed ``random`` do not repeat."""
    choices = [f"127.{n}" for n in range(64, 251) if f"127.{n}" not in _PREFIXES_TAKEN]
    prefix = random.SystemRandom().choice(choices)
    _PREFIXES_TAKEN.add(prefix)
    return prefix


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
    ) -> None:
        self._connect = connect
        self._si: Any = None
        self.boot_seconds = boot_seconds
        self.join_poll_seconds = join_poll_seconds
        self.behaviours = behaviours or {}
        self.boot_delays = boot_delays or {}
        self.scan_seconds = scan_seconds
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
        if self._si is None:
            self._si = self._connect()
        found = []
        for vm, props in properties.find_all(
            self._si,
            vim.VirtualMachine,
            ["runtime.powerState", "config.extraConfig", "config.instanceUuid"],
        ):
            if props.get("runtime.powerState") != vim.VirtualMachine.PowerState.poweredOn:
                continue
            extra = properties.extra_config(props.get("config.extraConfig"))
            if extra.get(guestinfo.MARKER_MANAGED_BY) == guestinfo.MANAGED_BY:
                found.append((vm, extra, props.get("config.instanceUuid", vm._moId)))
        return found

    async def run(self) -> None:
        """Scan until cancelled; boot each VM once per power-on."""
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
        env = {
            key: shlex.split(value)[0] if value else ""
            for key, _, value in (
                line.partition("=")
                for line in cloudinit.written_file(config, cloudinit.ENV_FILE).splitlines()
                if "=" in line
            )
        }
        token = cloudinit.written_file(config, cloudinit.TOKEN_FILE).strip()
        script = cloudinit.written_file(config, cloudinit.SCRIPT_FILE)
        install = next(line for line in script.splitlines() if line.startswith("pke install "))
        kind = env["PKE_VSPHERE_KIND"]
        node = BootedNode(name=name, vm_ref=vm._moId, kind=kind, ip=ip, install_command=install, token=token)
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

        # As the bootstrap script: a node key drawn at boot, sent with the token on every call.
        headers = {"Authorization": f"Bearer {token}", NODE_KEY_HEADER: secrets.token_urlsafe(32)}
        verify: ssl.SSLContext | bool = True
        if "PKE_VSPHERE_NODE_API_CA" in env:  # like curl --cacert in the bootstrap script
            verify = ssl.create_default_context(
                cadata=cloudinit.written_file(config, env["PKE_VSPHERE_NODE_API_CA"])
            )
        async with httpx.AsyncClient(
            base_url=env["PKE_VSPHERE_NODE_API"], headers=headers, timeout=30, verify=verify
        ) as api:
            if behaviour is Behaviour.FAIL:
                await self._post(api, {"kind": "failed", "message": "simulated: pke install exited 1"})
                node.events.append((time.time(), "reported-failed"))
                return
            material: dict[str, Any] = {}
            own = {ip, self.other_network_ip(ip)}  # the addresses on this guest's NICs
            if kind != "worker":
                material = await self._fetch(api, "/v1/nodes/self/bootstrap")
                if "BEGIN CERTIFICATE" not in material["pki"]["kubernetes_ca"]["cert_pem"]:
                    raise RuntimeError("bootstrap material has no Kubernetes CA")
                node.events.append((time.time(), "material-fetched"))
                node.external_etcd = material.get("external_etcd")
                # As the bootstrap script: the orchestrator's address for this node, if it is ours.
                ip = material["node_address"]
                if ip not in own:
                    await self._post(api, {"kind": "failed", "message": f"{ip} is on none of my interfaces"})
                    return
                node.ip = ip
                problem = await self._start_api_server_storage(install, ip, material)
                if problem is not None:
                    await self._post(api, {"kind": "failed", "message": problem})
                    node.events.append((time.time(), "reported-failed"))
                    return
            pool = env["PKE_VSPHERE_POOL"]
            if kind == "leader":
                kube = await self._start_api(env["PKE_VSPHERE_CLUSTER"], ip, material)
                kube.register_node(name, pool, kind, pods=0)
                await self._apply_addons(api, kube, node)
                self._bootstrapped.add(uuid)
                await self._post(api, {"kind": "ready", "address": ip})
                node.events.append((time.time(), "reported-ready"))
                return
            join = await self._fetch(api, "/v1/nodes/self/join")
            if not TOKEN_PATTERN.match(join["token"]) or not join["ca_cert_hash"].startswith("sha256:"):
                await self._post(api, {"kind": "failed", "message": "malformed join information"})
                return
            node.events.append((time.time(), "join-info"))
            ip = join["node_address"]
            if ip not in own:
                await self._post(api, {"kind": "failed", "message": f"{ip} is on none of my interfaces"})
                return
            node.ip = ip
            serving = self.kube_apis.get(join["api_endpoint"])
            if serving is None or not serving.accepts_token(join["token"]):
                node.events.append((time.time(), "token-rejected"))
                message = (
                    f"kubeadm join: the API server at {join['api_endpoint']} rejected the bootstrap token"
                )
                await self._post(api, {"kind": "failed", "message": message})
                return
            serving.register_node(name, pool, kind, pods=self.pods_per_worker if kind == "worker" else 0)
            self._bootstrapped.add(uuid)
            if behaviour is Behaviour.OTHER_ADDRESS:
                ip = self.other_network_ip(ip)
            await self._post(api, {"kind": "joined", "address": ip})
            node.events.append((time.time(), "reported-joined"))

    @staticmethod
    async def _start_api_server_storage(install: str, ip: str, material: dict[str, Any]) -> str | None:
        """What a master's kube-apiserver needs of etcd, or why it would not start.
        With ``--etcd-endpoints`` it is the external etcd in the install flags, reached
        with the client certificate the bootstrap material carries: the stand-in
        writes its master lease (``PREFIX/masterleases/IP``, as kube-apiserver does)
        to the real etcd. Without, the master runs etcd itself and needs the etcd CA."""
        flags = dict(arg.split("=", 1) for arg in shlex.split(install) if arg.startswith("--etcd-"))
        if "--etcd-endpoints" not in flags:
            if material["pki"].get("etcd_ca") is None:
                return "etcd: no etcd CA in the bootstrap material, and no external etcd in the flags"
            return None
        if material.get("external_etcd") is None:
            return "kube-apiserver: --etcd-endpoints given but the bootstrap material has no etcd certificate"
        etcd = ExternalEtcdClient.model_validate(material["external_etcd"])
        endpoints = flags["--etcd-endpoints"].split(",")
        if endpoints != etcd.endpoints or flags.get("--etcd-prefix") != etcd.prefix:
            return "kube-apiserver: the install flags and the bootstrap material name different etcds"

        def write_lease() -> str | None:
            try:
                first_answer(
                    endpoints, etcd.certificate, lambda g: g.put(f"{etcd.prefix}/masterleases/{ip}", ip)
                )
            except EtcdUnavailable as exc:
                return f"kube-apiserver: cannot reach etcd: {exc}"
            return None

        return await asyncio.to_thread(write_lease)

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

    async def _start_api(self, cluster: str, ip: str, material: dict[str, Any]) -> StandInKubeAPI:
        """The leader's API server, on its own address and on the VIP, signed by the cluster CA."""
        ca = material["pki"]["kubernetes_ca"]
        kube = self.kube_apis.get(f"{ip}:{PORT}")
        if kube is None:
            kube = StandInKubeAPI(ca["cert_pem"], ca["key_pem"])
        hosts = [ip]
        vip = material.get("vip")
        if vip and vip != ip:
            hosts.append(vip)
        for host in hosts:
            await kube.serve(host)
            self.kube_apis[f"{host}:{PORT}"] = kube
        endpoint = material.get("api_endpoint")
        if endpoint and endpoint not in self.kube_apis:
            # A DNS name: the simulated network resolves it to the VIP (or the leader).
            self.kube_apis[endpoint] = kube
        self.cluster_apis[cluster] = kube
        return kube

    async def stop_apis(self) -> None:
        for kube in {id(k): k for k in self.kube_apis.values()}.values():
            await kube.stop()
        self.kube_apis.clear()
        self.cluster_apis.clear()

    @property
    def ip_prefix(self) -> str:
        """The 127.N prefix this agent's guests get their addresses from."""
        return self._ip_prefix

    async def _apply_addons(self, api: httpx.AsyncClient, kube: StandInKubeAPI, node: BootedNode) -> None:
        """What the bootstrap script does after `pke install` on the leader: install each
        add-on's release, then apply the objects the node API made for this cluster."""
        bundle = await self._fetch(api, "/v1/nodes/self/addons")
        for addon in bundle["addons"]:
            kube.objects.installed.append(addon["install_url"])
            kube.apply(addon["manifest"])
            node.events.append((time.time(), f"addon-applied:{addon['name']}@{addon['version']}"))

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
    )
    asyncio.run(agent.run())


if __name__ == "__main__":
    main()
