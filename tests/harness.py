"""Test harness: the real Temporal dev server, the real vCenter simulator, the
node API served over loopback HTTP, and the simulated nodes, wired together."""

from __future__ import annotations

import asyncio
import base64
import gzip
import itertools
import json
import os
import shlex
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import uvicorn
from google.protobuf.message import Message
from pydantic import SecretStr
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from pke_vsphere.codec.encryption import EncryptionCodec
from pke_vsphere.config.credentials import EtcdCredentials, StorageCredential, StorageCredentials
from pke_vsphere.contracts.messages import NodeBootstrapSettings
from pke_vsphere.contracts.state import NodeIdentity, NodeKind
from pke_vsphere.nodeapi.app import create_app
from pke_vsphere.pki.node_tokens import NodeTokenVerifier, load_signing_key
from pke_vsphere.render import cloudinit
from pke_vsphere.runtime.binaries import temporal_binary
from sim.vcenter import Simulator

ROOT = Path(__file__).resolve().parent.parent
# The storage accounts the test orchestrator holds (worker and node API alike).
STORAGE_PASSWORD = "csi-Storage-Secret-7f3a"
STORAGE_ACCOUNTS = StorageCredentials(
    {"csi-test": StorageCredential(username="k8s-csi@vsphere.local", password=SecretStr(STORAGE_PASSWORD))}
)
STATE_DIR = ROOT / ".state"

# pytest-xdist runs the suite in several processes ("gw0", "gw1", ...), each with a
# stack of its own and its own share of loopback addresses and ports.
WORKER_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
# Ports for servers a test starts by number (etcd, a Temporal dev server): each
# process takes its own block, below the kernel's ephemeral range, so neither the
# other process nor an outgoing connection takes a port between the check and the bind.
PORT_BLOCK = 1000
_ports = itertools.count(20000 + PORT_BLOCK * WORKER_INDEX)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, from this process's block."""
    for port in _ports:
        assert port < 20000 + PORT_BLOCK * (WORKER_INDEX + 1), "this process used its whole port block"
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError("unreachable")


def temporal_cli() -> str:
    return temporal_binary()


@asynccontextmanager
async def serve_app(app: Any, tls: tuple[Path, Path] | None = None) -> AsyncIterator[str]:
    """Serve an ASGI app on a free loopback port in this event loop; yields its URL.
    With ``tls`` (certificate, key) it serves HTTPS."""
    # Name TCP, so that asyncio turns Nagle off: otherwise every reply on a kept-alive
    # connection waits ~40 ms for the delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no event to await
        await asyncio.sleep(0.02)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def serve_node_api(
    client: Client,
    key_file: Path,
    tls: tuple[Path, Path] | None = None,
    etcd_credentials: EtcdCredentials | None = None,
) -> AsyncIterator[str]:
    """Run the node API in this event loop; yields its base URL."""
    verifier = NodeTokenVerifier(load_signing_key(key_file).public_key())
    async with serve_app(create_app(client, verifier, STORAGE_ACCOUNTS, etcd_credentials), tls) as url:
        yield url


def vms_of_cluster(sim: Simulator, cluster: str) -> dict[str, dict[str, Any]]:
    """Every VM carrying the cluster's marker, by name, with the properties tests check."""
    from pyVim import connect
    from pyVmomi import vim

    from pke_vsphere.render import guestinfo
    from pke_vsphere.vsphere import properties

    si = sim.connect()
    try:
        found = {}
        for vm, props in properties.find_all(
            si,
            vim.VirtualMachine,
            [
                "name",
                "parent",
                "resourcePool",
                "datastore",
                "config.hardware.numCPU",
                "config.hardware.memoryMB",
                "config.extraConfig",
                "config.instanceUuid",
                "runtime.powerState",
                "config.hardware.device",
                "guest.net",
            ],
        ):
            extra = properties.extra_config(props.get("config.extraConfig"))
            if extra.get(guestinfo.MARKER_CLUSTER) == cluster:
                props["extra"] = extra
                props["ref"] = vm._moId
                key = str(props["name"])
                if key in found:  # a duplicate VM: keep both visible to the test
                    key = f"{key}#dup-{vm._moId}"
                found[key] = props
        return found
    finally:
        connect.Disconnect(si)


def plant_marked_vm(sim: Simulator, cluster: str, name: str, installation: str = "tests") -> str:
    """A VM carrying the cluster's markers that the cluster does not own (what a
    crashed run or a person's copy leaves behind; with another ``installation``,
    a VM of another pke-vsphere's cluster of the same name); returns its reference."""
    import uuid

    from pyVim import connect

    from pke_vsphere.render import guestinfo
    from pke_vsphere.vsphere import inventory
    from pke_vsphere.vsphere.vms import start_clone
    from pke_vsphere.vsphere.waits import wait_for_task
    from tests.conftest import cluster_spec

    si = sim.connect()
    try:
        placement = inventory.resolve(si, cluster_spec(cluster).vsphere)
        extra = {**guestinfo.owner_markers(installation, cluster), guestinfo.MARKER_NODE: name}
        task = start_clone(
            si,
            placement,
            inventory.refs(si, placement),
            name=name,
            instance_uuid=str(uuid.uuid4()),
            cpus=1,
            memory_mb=2048,
            extra_config=extra,
            power_on=False,
        )
        ref: str = wait_for_task(si, task, timeout=30)._moId
        return ref
    finally:
        connect.Disconnect(si)


def destroy_planted(sim: Simulator, ref: str) -> None:
    """Remove a VM ``plant_marked_vm`` made (it is off)."""
    from pyVim import connect
    from pyVmomi import vim

    from pke_vsphere.vsphere.waits import wait_for_task

    si = sim.connect()
    try:
        wait_for_task(si, vim.VirtualMachine(ref, si._stub).Destroy_Task(), timeout=30)
    finally:
        connect.Disconnect(si)


def clone_counts(sim: Simulator) -> Counter[str]:
    """How many clones vCenter started per destination name, from its own event log."""
    from pyVim import connect
    from pyVmomi import vim

    si = sim.connect()
    try:
        # The simulator keeps its last 1000 events: ask right after the operation.
        spec = vim.event.EventFilterSpec(eventTypeId=["VmBeingClonedEvent"], maxCount=1000)
        events = si.content.eventManager.QueryEvents(spec)
        return Counter(str(getattr(e, "destName", "")) for e in events)
    finally:
        connect.Disconnect(si)


def clone_started_at(sim: Simulator, vm_name: str) -> datetime | None:
    """When vCenter started the first clone to ``vm_name`` (its event log), if it has."""
    from pyVim import connect
    from pyVmomi import vim

    si = sim.connect()
    try:
        spec = vim.event.EventFilterSpec(eventTypeId=["VmBeingClonedEvent"], maxCount=1000)
        times = [e.createdTime for e in si.content.eventManager.QueryEvents(spec) if e.destName == vm_name]
        return min(times) if times else None
    finally:
        connect.Disconnect(si)


def tasks_running(sim: Simulator, si: Any, vm_prefix: str | None = None) -> Counter[str]:
    """vCenter tasks queued or running right now, per vSphere method, from the task
    manager's recent tasks (``si``: a connection to ``sim`` kept by the caller).
    With ``vm_prefix``, only the tasks on VMs so named, and every clone (a clone's
    task is on its template, which clusters share): another test's cluster still
    giving up a node or being deleted runs its tasks meanwhile, under its own cap.
    (The simulator's ``info.entityName`` is the entity's reference, not its name
    as in vCenter, so the names are read.)"""
    from pyVmomi import vim

    from pke_vsphere.vsphere import properties

    recent = properties.read(si, si.content.taskManager, ["recentTask"]).get("recentTask") or []
    infos = properties.read_many(si, recent, ["info.state", "info.name", "info.entity"])
    busy = (vim.TaskInfo.State.queued, vim.TaskInfo.State.running)
    running = [p for p in infos.values() if p.get("info.state") in busy]
    if vm_prefix is not None:
        entities = [p["info.entity"] for p in running if p.get("info.entity") is not None]
        names = properties.read_many(si, entities, ["name"]) if entities else {}

        def ours(p: dict[str, Any]) -> bool:
            entity = p.get("info.entity")
            return p["info.name"] == "CloneVM_Task" or (
                entity is not None and str(names.get(entity._moId, {}).get("name", "")).startswith(vm_prefix)
            )

        running = [p for p in running if ours(p)]
    return Counter(str(p["info.name"]) for p in running)


def clone_events(sim: Simulator, vm_name: str) -> int:
    return clone_counts(sim)[vm_name]


# What a node of cluster ``prod`` is bootstrapped with, for rendering tests.
BOOTSTRAP_SETTINGS = NodeBootstrapSettings(
    kubernetes_version="1.30.4",
    api_endpoint="10.0.0.100:6443",
    master_mode="ha",
    pod_cidr="10.20.0.0/16",
    service_cidr="10.10.0.0/16",
    ssh_authorized_keys=["ssh-ed25519 AAAAC3Nza test@example"],
)


def node_identity(kind: NodeKind, index: int = 1) -> NodeIdentity:
    """A node of cluster ``prod`` for rendering tests (workers in pool ``workers``)."""
    pool = "workers" if kind is NodeKind.WORKER else "master"
    return NodeIdentity(
        cluster="prod",
        cluster_uid="uid-1",
        pool=pool,
        name=f"prod-{pool}-{index:02d}",
        kind=kind,
        index=index,
        instance_uuid="11111111-2222-3333-4444-555555555555",
    )


def userdata_config(extra: dict[str, str]) -> dict[str, object]:
    """The cloud-config a VM's guestinfo carries, decoded and parsed."""
    return cloudinit.parse(gzip.decompress(base64.b64decode(extra["guestinfo.userdata"])).decode())


def guestinfo_text(extra: dict[str, str]) -> str:
    """Everything a VM's guestinfo holds, with its userdata decoded, to search for a secret."""
    return json.dumps(extra) + json.dumps(userdata_config(extra))


def pke_install_args(config: dict[str, object]) -> list[str]:
    """The ``pke install`` arguments of a cloud-config's bootstrap script."""
    script = cloudinit.written_file(config, cloudinit.SCRIPT_FILE)
    return shlex.split(next(line for line in script.splitlines() if line.startswith("pke install ")))


def payloads(message: Message) -> Iterator[Payload]:
    """Every payload anywhere inside a history event."""
    if isinstance(message, Payload):
        yield message
        return
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            items = value.values()
        elif isinstance(value, Iterable):
            items = value
        else:
            items = [value]
        for item in items:
            if isinstance(item, Message):
                yield from payloads(item)


async def plain_history(client: Client, workflow_id: str, codec: EncryptionCodec) -> str:
    """A workflow's history with every payload decrypted, as one string to search."""
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    found = [p for event in history.events for p in payloads(event)]
    decoded = await codec.decode(found)
    return history.to_json() + "".join(p.data.decode(errors="replace") for p in decoded)


def random_ssh_keys(count: int, size: int = 1024) -> list[str]:
    """OpenSSH-shaped public keys of random bytes (which gzip cannot shrink)."""
    import os

    return [f"ssh-rsa {base64.b64encode(os.urandom(size)).decode()} user{i}@example" for i in range(count)]
