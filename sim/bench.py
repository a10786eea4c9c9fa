"""``make bench``: how fast, and at what cost, a cluster is created and deleted.

For each size (3 masters + 20 and + 200 workers; + 1000 with ``--thousand``) it
starts a stack of its own on this machine: the embedded Temporal server, the
vCenter simulator with realistic task durations (clone 5 s, power-on 1 s; the
simulated guests boot in 20 s), a counting proxy in front of the simulator for
the worker's traffic, the node API, one ``worker.py`` (with ``--split``, one
``--role workflows`` and one ``--role vcenter``) and the simulated nodes.
The simulated nodes run the bootstrap script's steps in their agent
(sim/light_bootstrap.py: the same node API calls, retries and pauses), not 200
copies of the script, whose processes would cost the two cores more than the
orchestrator under test (on a site each runs on its own VM); ``--scripts`` runs
the real scripts instead. It creates the cluster with ``pke-vsphere create
--wait``, then deletes it, and reports:

- spec -> Ready, the critical path measured in the same run (the leader's path,
  from the create's start to its Ready, plus the fastest other node's own path)
  and their ratio;
- history events per node of the cluster workflow (all its runs) and of the
  node workflows;
- SOAP requests per node by method, the worker's traffic only;
- requests to Temporal's frontend per node by operation during the create (the
  server's own ``service_requests`` metric), everyone's: worker, node API, CLI;
- CPU seconds and peak RSS of the worker (split: the sum of its two processes,
  each shown), the Temporal server and the node API
  (and the CPU of the simulated nodes, the simulator and the counting proxy);
- the node API's p50 and p99 latency and its count of 5xx answers;
- the delete's duration.

``--kill-worker`` SIGKILLs the worker halfway through the create (10 s after
the leader is Ready, the other nodes' clones in flight) and starts it again,
then checks that no VM was cloned twice and no node was given up. The
figures go to the terminal and to ``.state/bench/latest.json`` (each run's
logs to ``.state/bench/3+N/``); the README shows the latest. A benchmark, not a
test: it asserts only the budgets it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pyVim import connect
from pyVmomi import vim
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from pke_vsphere.codec import keys
from pke_vsphere.contracts import ids
from pke_vsphere.contracts.state import ClusterPhase, ClusterStatus, NodeKind, NodePhase
from pke_vsphere.pki.node_tokens import create_signing_key, load_signing_key, write_public_key
from pke_vsphere.runtime.binaries import temporal_binary
from pke_vsphere.runtime.temporal import data_converter
from pke_vsphere.vsphere import properties
from sim import temporal_config, vcenter
from sim.demo import node_api_certificate
from sim.faultproxy import FaultProxy, FaultRates
from starter import clusters

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".state" / "bench"
CLUSTER = "bench"
# With --split, the worker's vCenter role runs in this process of its own.
VCENTER_WORKER = "vcenter-worker"
VIP = "127.0.200.100"
TASK_SECONDS = {"CloneVM_Task": 5.0, "PowerOnVM_Task": 1.0, "PowerOffVM_Task": 1.0, "Destroy_Task": 1.0}
BOOT_SECONDS = 20.0
CLI = str(Path(sys.executable).parent / "pke-vsphere")
# The budgets of the scale issue, printed next to each figure: by cluster size
# (3 + 200; 3 + 997, a 1000-node cluster), and for every size.
RATIO_BUDGET = {203: 1.25, 1000: 2.0}
THOUSAND = 1000
RSS_BUDGET_MB = 400  # the worker's peak, at 1000 nodes
CLUSTER_EVENTS_BUDGET, NODE_EVENTS_BUDGET, SOAP_BUDGET = 6, 25, 10


TEARDOWN_SAMPLES = 3


def delete_budget_s(nodes: int, cap: int, one_vm_s: float | None = None) -> float:
    """1.5 x (one VM's power-off and destroy) x the rounds the task cap makes of them;
    one VM's as measured on the stack (``one_vm_s``), else the simulator's task
    durations (which a client never sees: it learns of a task's end later)."""
    one_vm = one_vm_s or TASK_SECONDS["PowerOffVM_Task"] + TASK_SECONDS["Destroy_Task"]
    return round(1.5 * one_vm * math.ceil(nodes / cap), 1)


def one_vm_teardown_s(sim: vcenter.Simulator, samples: int = TEARDOWN_SAMPLES) -> float:
    """One VM's power-off and destroy as the worker does them, on the idle stack: the
    median of ``samples`` of the simulator's own VMs, one after another, each task
    started and waited for through a session's shared collector (pke_vsphere's waits)."""
    from pke_vsphere.vsphere.session import ServiceInstance
    from pke_vsphere.vsphere.waits import wait_for_task

    raw = sim.connect()
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(connect.Disconnect, raw)
        si = ServiceInstance(raw)
        cleanup.callback(si.watcher.close)
        spare = [
            vm
            for vm, props in properties.find_all(si, vim.VirtualMachine, ["name", "config.template"])
            if not props.get("config.template") and not props["name"].startswith(f"{CLUSTER}-")
        ][:samples]
        if not spare:
            raise SystemExit("the simulator has no VM of its own to time a teardown with")
        seconds = []
        for vm in spare:
            if vm.runtime.powerState != vim.VirtualMachine.PowerState.poweredOn:
                # Powered on first, untimed: every sample is a power-off and a destroy.
                wait_for_task(si, vm.PowerOnVM_Task(), timeout=60, result=False)
            started = time.monotonic()
            wait_for_task(si, vm.PowerOffVM_Task(), timeout=60, result=False)
            wait_for_task(si, vm.Destroy_Task(), timeout=60, result=False)
            seconds.append(time.monotonic() - started)
        return round(_percentile(seconds, 0.5), 2)


def _budget(figures: Figures, text: str, budget: object, at_least: int = 0) -> str:
    nodes = figures.masters + figures.workers
    return f"{text} [<= {budget}]" if budget is not None and nodes >= at_least else text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_usage(pid: int) -> tuple[float, float, float]:
    """A process's own CPU seconds, its ended children's, and its peak RSS in MB."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    own = (int(stat[11]) + int(stat[12])) / ticks
    children = (int(stat[13]) + int(stat[14])) / ticks
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return own, children, peak


@dataclass
class Proc:
    """A process of the stack, with its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def usage(self) -> tuple[float, float, float]:
        """CPU seconds (user + system) of the process itself and of its children
        that ended (the simulated nodes' bootstrap scripts), and peak RSS in MB so far."""
        return process_usage(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Figures:
    masters: int
    workers: int
    spec_to_ready_s: float = 0.0
    critical_path_s: float = 0.0
    ratio: float = 0.0
    nodes_ready: int = 0
    nodes_failed: int = 0
    cli_exit: int | None = None
    cluster_events_per_node: float = 0.0
    node_events_per_node: float = 0.0
    soap_per_node: float = 0.0
    soap_per_node_by_method: dict[str, float] = field(default_factory=dict)
    temporal_per_node: float = 0.0
    temporal_per_node_by_operation: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    node_api_p50_ms: float = 0.0
    node_api_p99_ms: float = 0.0
    node_api_requests: int = 0
    node_api_5xx: int = 0
    delete_s: float = 0.0
    delete_destroyed_s: tuple[float, float] = (0.0, 0.0)
    vcenter_task_cap: int = 0
    one_vm_teardown_s: float = 0.0
    worker_killed: bool = False
    scripts: bool = False
    split_worker: bool = False
    clones_per_node_max: int = 0
    vms_after_create: int = 0
    vms_after_delete: int = 0
    events_by_type: dict[str, dict[str, float]] = field(default_factory=dict)
    others_start_s: tuple[float, float] = (0.0, 0.0)
    others_duration_s: tuple[float, float] = (0.0, 0.0)
    others_steps_s: dict[str, tuple[float, float]] = field(default_factory=dict)
    node_workflow_tasks_s: dict[str, tuple[float, float]] = field(default_factory=dict)


class Stack:
    """One benchmark's processes; ``stop()`` ends them all."""

    def __init__(
        self,
        workdir: Path,
        task_seconds: dict[str, float],
        boot_seconds: float,
        scripts: bool = False,
        split: bool = False,
    ) -> None:
        self.dir = workdir
        self.scripts = scripts
        self.split = split
        self.task_seconds = task_seconds
        self.boot_seconds = boot_seconds
        self.procs: dict[str, Proc] = {}
        self.sim: vcenter.Simulator | None = None
        self.proxy: FaultProxy | None = None
        self.temporal_address = f"127.0.0.1:{_free_port()}"
        self.temporal_metrics_port = _free_port()
        self.node_api_port = _free_port()
        self.payload_keys = workdir / "payload-keys"
        self.worker_settings = workdir / "worker.env"

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        log = self.dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                args,
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
            )
        self.procs[name] = Proc(name, process, log)
        return self.procs[name]

    async def start(self) -> None:
        host, port = self.temporal_address.split(":")
        self._spawn(
            "temporal",
            [
                temporal_binary(),
                "server",
                "start-dev",
                "--ip",
                host,
                "--port",
                port,
                "--headless",
                "--log-level",
                "error",
                "--metrics-port",
                str(self.temporal_metrics_port),
                *temporal_config.dev_server_args(),
            ],
        )
        self.sim = vcenter.start(
            ROOT / ".state", task_seconds=self.task_seconds, log_file=self.dir / "vcsim.log"
        )
        self.proxy = FaultProxy(self.sim.url, FaultRates())
        await self.proxy.__aenter__()

        key_file, public_key = self.dir / "node-token.pem", self.dir / "node-token.pub"
        create_signing_key(key_file)
        write_public_key(load_signing_key(key_file), public_key)
        keys.create(self.payload_keys, "bench-1")
        cert, key, ca = node_api_certificate(self.dir)
        common = [
            f"PKE_VSPHERE_TEMPORAL_ADDRESS={self.temporal_address}",
            "PKE_VSPHERE_VCENTER_INSECURE=true",  # the simulator serves plain HTTP on loopback
            f"PKE_VSPHERE_VCENTER_USERNAME={self.sim.username}",
            f"PKE_VSPHERE_VCENTER_PASSWORD={self.sim.password}",
            f"PKE_VSPHERE_INSTALLATION_ID=bench-{secrets.token_hex(3)}",
            f"PKE_VSPHERE_NODE_API_URL=https://127.0.0.1:{self.node_api_port}",
            f"PKE_VSPHERE_NODE_API_TLS_CERT_FILE={cert}",
            f"PKE_VSPHERE_NODE_API_TLS_KEY_FILE={key}",
            f"PKE_VSPHERE_NODE_API_CA_FILE={ca}",
            f"PKE_VSPHERE_NODE_API_LISTEN_PORT={self.node_api_port}",
            f"PKE_VSPHERE_NODE_TOKEN_KEY_FILE={key_file}",
            f"PKE_VSPHERE_NODE_TOKEN_PUBLIC_KEY_FILE={public_key}",
            f"PKE_VSPHERE_PAYLOAD_KEYS_FILE={self.payload_keys}",
        ]
        # The worker reaches vCenter through the counting proxy; the simulated
        # nodes (standing in for VMware Tools) go straight to the simulator.
        self.worker_settings.write_text("\n".join([*common, f"PKE_VSPHERE_VCENTER_URL={self.proxy.url}", ""]))
        nodes_settings = self.dir / "nodes.env"
        nodes_settings.write_text("\n".join([*common, f"PKE_VSPHERE_VCENTER_URL={self.sim.url}", ""]))
        await self._wait_temporal()
        python = sys.executable
        self.start_worker()
        self._spawn(
            "node-api",
            [python, "-m", "pke_vsphere.nodeapi", "--settings", str(self.worker_settings)],
            {"PKE_VSPHERE_LOG_FORMAT": "json", "PKE_VSPHERE_LOG_LEVEL": "INFO"},
        )
        self._spawn(
            "nodes",
            [
                python,
                "-m",
                "sim.nodes",
                "--settings",
                str(nodes_settings),
                "--boot-seconds",
                str(self.boot_seconds),
                *([] if self.scripts else ["--light"]),
            ],
        )
        await _until(lambda: _listening(self.node_api_port), "the node API", 60)

    def start_worker(self) -> None:
        """``worker.py``, or with ``split`` its two roles in a process each."""
        command = [sys.executable, str(ROOT / "worker.py"), "--settings", str(self.worker_settings)]
        if not self.split:
            self._spawn("worker", command)
            return
        self._spawn("worker", [*command, "--role", "workflows"])
        self._spawn(VCENTER_WORKER, [*command, "--role", "vcenter"])

    def worker_procs(self) -> list[Proc]:
        return [self.procs[name] for name in ("worker", VCENTER_WORKER) if name in self.procs]

    def kill_worker(self) -> None:
        """SIGKILL every worker process, then start them again."""
        for proc in self.worker_procs():
            proc.process.kill()
            proc.process.wait()
        self.start_worker()

    async def _wait_temporal(self) -> None:
        async def healthy() -> bool:
            try:
                await Client.connect(self.temporal_address)
            except Exception:
                return False
            return True

        deadline = time.monotonic() + 60
        while not await healthy():
            if time.monotonic() > deadline:
                raise SystemExit(f"Temporal did not come up; see {self.dir}/temporal.log")
            await asyncio.sleep(0.3)

    async def client(self) -> Client:
        return await Client.connect(
            self.temporal_address, data_converter=data_converter(keys.load(self.payload_keys))
        )

    async def stop(self) -> None:
        for name in ("nodes", "node-api", VCENTER_WORKER, "worker", "temporal"):
            if name in self.procs:
                # In a thread: the counting vCenter proxy runs on this event loop,
                # and a worker logging out at its shutdown goes through it.
                await asyncio.to_thread(self.procs[name].stop)
        if self.proxy is not None:
            await self.proxy.__aexit__(None, None, None)
        if self.sim is not None:
            self.sim.stop()


# The worker is killed this long after the leader is Ready: about halfway through a
# 3 + 200 create, with the other nodes' clones in flight.
KILL_AFTER_LEADER_S = 10.0


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def _until(check: Any, what: str, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up within {within:.0f} s")
        await asyncio.sleep(0.2)


def spec(workers: int) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "demo-cluster.yaml").read_text())
    data["name"] = CLUSTER
    data["control_plane"]["vip"] = VIP
    data.pop("storage", None)  # the bench stack holds no storage account
    data["pools"][1]["count"] = workers
    return data


async def _events(
    client: Client,
    workflow_id: str,
    firsts: dict[str, list[datetime]] | None = None,
    task_times: dict[str, list[float]] | None = None,
) -> Counter[str]:
    """History events by type over every run of a workflow (continue-as-new included);
    into ``firsts``, the time of each type's first event; into ``task_times``, each
    workflow task's seconds in the queue (scheduled to started) and on the worker
    (started to completed)."""
    types: Counter[str] = Counter()
    seen: set[str] = set()
    async for run in client.list_workflows(f"WorkflowId = '{workflow_id}'"):
        history = await client.get_workflow_handle(workflow_id, run_id=run.run_id).fetch_history()
        at: dict[str, datetime] = {}
        for event in history.events:
            name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
            types[name] += 1
            when = event.event_time.ToDatetime(tzinfo=UTC)
            if task_times is not None and name.startswith("WORKFLOW_TASK_"):
                step = name.removeprefix("WORKFLOW_TASK_")
                if step == "STARTED" and "SCHEDULED" in at:
                    task_times["queued"].append((when - at["SCHEDULED"]).total_seconds())
                elif step == "COMPLETED" and "STARTED" in at:
                    task_times["worker"].append((when - at["STARTED"]).total_seconds())
                at[step] = when
            if firsts is not None and name not in seen:
                seen.add(name)
                firsts.setdefault(name, []).append(when)
    return types


_REQUESTS = re.compile(r"^service_requests\{(?P<labels>[^}]*)\} (?P<count>\S+)$")


def temporal_requests(metrics_port: int) -> Counter[str]:
    """Requests the Temporal server's frontend has served so far, by operation (its
    Prometheus ``service_requests`` counter; the history and matching services'
    own requests follow from these and are left out)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        found = _REQUESTS.match(line)
        if found is None:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', found["labels"]))
        if labels.get("service_name") == "frontend" and labels.get("namespace") == "default":
            counts[labels.get("operation", "?")] += int(float(found["count"]))
    return counts


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _destroyed_after(log: Path, since: datetime) -> list[float]:
    """Seconds from ``since`` to each ``vm.destroyed`` line of the worker's log."""
    seconds = []
    for line in log.read_text(errors="replace").splitlines():
        if " vm.destroyed " not in line:
            continue
        with contextlib.suppress(ValueError):
            at = datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00"))
            if at >= since:
                seconds.append((at - since).total_seconds())
    return seconds


def _node_api_latency(log: Path) -> tuple[list[float], int]:
    durations, errors = [], 0
    for line in log.read_text(errors="replace").splitlines():
        if '"nodeapi.request"' not in line:
            continue
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            durations.append(float(entry["ms"]))
            errors += int(entry["status"]) >= 500
    return durations, errors


async def run_one(
    masters: int,
    workers: int,
    kill_worker: bool,
    boot_seconds: float,
    scripts: bool = False,
    split: bool = False,
) -> Figures:
    figures = Figures(
        masters=masters, workers=workers, worker_killed=kill_worker, scripts=scripts, split_worker=split
    )
    bench_cpu_before = sum(os.times()[:2])
    # Kept after the run (logs of every process), replaced by the next run of this size.
    workdir = RESULTS / f"{masters}+{workers}{'-killed' if kill_worker else ''}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    stack = Stack(workdir, TASK_SECONDS, boot_seconds, scripts, split)
    try:
        await stack.start()
        client = await stack.client()
        assert stack.sim is not None and stack.proxy is not None
        spec_file = workdir / "cluster.yaml"
        data = spec(workers)
        data["pools"][0]["count"] = masters
        spec_file.write_text(yaml.safe_dump(data))
        nodes = masters + workers
        # The delete budget's unit, on this stack before anything else runs on it.
        figures.one_vm_teardown_s = await asyncio.to_thread(one_vm_teardown_s, stack.sim)
        temporal_before = temporal_requests(stack.temporal_metrics_port)
        print(f"\n== {masters} + {workers}: creating (logs in {workdir})", flush=True)
        with (workdir / "cli.log").open("wb") as cli_log:
            cli = await asyncio.create_subprocess_exec(
                *[CLI, "--settings", str(stack.worker_settings), "create", "-f", str(spec_file), "--wait"],
                stdout=cli_log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        status = await _follow(client, nodes, stack if kill_worker else None)
        figures.cli_exit = await asyncio.wait_for(cli.wait(), 600)
        temporal = temporal_requests(stack.temporal_metrics_port) - temporal_before
        figures.temporal_per_node = round(sum(temporal.values()) / nodes, 1)
        figures.temporal_per_node_by_operation = {
            operation: round(count / nodes, 2) for operation, count in sorted(temporal.items())
        }
        await _create_figures(client, status, figures)
        figures.vms_after_create = len(_cluster_vms(stack.sim))
        calls = stack.sim.clone_calls()
        figures.clones_per_node_max = max(
            (n for name, n in calls.items() if name.startswith(f"{CLUSTER}-")), default=0
        )
        figures.soap_per_node_by_method = {
            method: round(count / nodes, 2) for method, count in sorted(stack.proxy.stats.requests.items())
        }
        figures.soap_per_node = round(sum(stack.proxy.stats.requests.values()) / nodes, 1)
        for name in ("worker", VCENTER_WORKER, "temporal", "node-api", "nodes"):
            if name not in stack.procs:
                continue
            own, children, peak = stack.procs[name].usage()
            figures.cpu_s[name], figures.peak_rss_mb[name] = round(own + children, 1), round(peak)
            if name == "nodes":
                figures.cpu_s["node-agent"], figures.cpu_s["node-scripts"] = round(own, 1), round(children, 1)
        own, _, _ = process_usage(stack.sim.process.pid)
        figures.cpu_s["vcsim"] = round(own, 1)
        # This process's, for this run: the counting vCenter proxy runs here.
        figures.cpu_s["bench"] = round(sum(os.times()[:2]) - bench_cpu_before, 1)
        durations, errors = _node_api_latency(stack.procs["node-api"].log)
        figures.node_api_requests, figures.node_api_5xx = len(durations), errors
        figures.node_api_p50_ms = round(_percentile(durations, 0.5), 1)
        figures.node_api_p99_ms = round(_percentile(durations, 0.99), 1)

        print(f"== {masters} + {workers}: deleting", flush=True)
        started, started_at = time.monotonic(), datetime.now(UTC)
        handle = await clusters.delete(client, CLUSTER, _task_queue(stack))
        await handle.result()
        figures.delete_s = round(time.monotonic() - started, 1)
        destroyed = _destroyed_after(stack.worker_procs()[-1].log, started_at)
        figures.delete_destroyed_s = (
            round(min(destroyed, default=0.0), 1),
            round(max(destroyed, default=0.0), 1),
        )
        figures.vms_after_delete = len(_cluster_vms(stack.sim))
        figures.vcenter_task_cap = _task_cap(stack)
    finally:
        await stack.stop()
    return figures


def _task_cap(stack: Stack) -> int:
    from pke_vsphere.config import VCenterSettings, load

    return load(VCenterSettings, str(stack.worker_settings)).vcenter_max_concurrent_tasks


def _task_queue(stack: Stack) -> str:
    from pke_vsphere.config import TemporalSettings, load

    return load(TemporalSettings, str(stack.worker_settings)).temporal_task_queue


def _cluster_vms(sim: vcenter.Simulator) -> list[str]:
    si = sim.connect()
    try:
        found = properties.find_all(si, vim.VirtualMachine, ["name"])
        return [props["name"] for _, props in found if props["name"].startswith(f"{CLUSTER}-")]
    finally:
        connect.Disconnect(si)


async def _follow(client: Client, nodes: int, kill: Stack | None) -> ClusterStatus:
    """The cluster's status until it settles; with ``kill``, SIGKILL its worker
    halfway through the create (``KILL_AFTER_LEADER_S`` after the leader is Ready:
    the other nodes' clones in flight) and start it again."""
    deadline = time.monotonic() + 3600
    last = ""
    leader_ready_at: float | None = None
    while True:
        await asyncio.sleep(2)
        try:
            status = await clusters.status(client, CLUSTER, rpc_timeout=timedelta(seconds=10))
        except Exception as exc:
            print(f"   status unavailable: {str(exc).splitlines()[0][:120]}", flush=True)
            continue
        ready = sum(n.phase is NodePhase.READY for n in status.nodes)
        line = f"   {status.phase.value}: {ready}/{nodes} Ready"
        if line != last:
            print(line, flush=True)
            last = line
        if ready and leader_ready_at is None:
            leader_ready_at = time.monotonic()
        if kill is not None and leader_ready_at and time.monotonic() - leader_ready_at >= KILL_AFTER_LEADER_S:
            print(f"   SIGKILL the worker ({ready}/{nodes} Ready), start it again", flush=True)
            kill.kill_worker()
            kill = None
        if status.phase in (ClusterPhase.READY, ClusterPhase.FAILED) or time.monotonic() > deadline:
            return status


async def _create_figures(client: Client, status: ClusterStatus, figures: Figures) -> None:
    figures.nodes_ready = sum(n.phase is NodePhase.READY for n in status.nodes)
    figures.nodes_failed = len(status.failed_nodes)
    cluster_id = ids.cluster_workflow_id(CLUSTER)
    cluster = await client.get_workflow_handle(cluster_id).describe()
    started = cluster.start_time
    # The first run's start: the describe above is of the latest run.
    async for run in client.list_workflows(f"WorkflowId = '{cluster_id}'"):
        started = min(started, run.start_time)
    ends, paths, leader_end = [], [], None
    starts_of_others: list[datetime] = []
    for node in status.nodes:
        description = await client.get_workflow_handle(ids.node_workflow_id(CLUSTER, node.name)).describe()
        if description.close_time is None:
            continue
        ends.append(description.close_time)
        if node.identity.kind is NodeKind.LEADER:
            leader_end = description.close_time
        else:
            paths.append((description.close_time - description.start_time).total_seconds())
            starts_of_others.append(description.start_time)
    if leader_end is None or not ends:
        return
    figures.spec_to_ready_s = round((max(ends) - started).total_seconds(), 1)
    figures.critical_path_s = round((leader_end - started).total_seconds() + min(paths, default=0.0), 1)
    figures.ratio = (
        round(figures.spec_to_ready_s / figures.critical_path_s, 2) if figures.critical_path_s else 0.0
    )
    cluster_events = await _events(client, cluster_id)
    figures.cluster_events_per_node = round(cluster_events.total() / len(status.nodes), 1)
    sample = status.nodes if len(status.nodes) <= 250 else status.nodes[:: math.ceil(len(status.nodes) / 200)]
    node_events: Counter[str] = Counter()
    firsts: dict[str, list[datetime]] = {}
    task_times: dict[str, list[float]] = {"queued": [], "worker": []}
    for node in sample:
        workflow_id = ids.node_workflow_id(CLUSTER, node.name)
        if node.identity.kind is not NodeKind.LEADER:
            node_events += await _events(client, workflow_id, firsts, task_times)
        else:
            node_events += await _events(client, workflow_id)
    figures.node_workflow_tasks_s = {
        part: (round(_percentile(times, 0.5), 2), round(_percentile(times, 0.99), 2))
        for part, times in task_times.items()
    }
    # When the other nodes' steps began, after the leader's Ready (p50 / max): where a create waits.
    figures.others_steps_s = {
        step: (
            round(_percentile([(t - leader_end).total_seconds() for t in times], 0.5), 1),
            round(max((t - leader_end).total_seconds() for t in times), 1),
        )
        for step, times in firsts.items()
        if step
        in (
            "WORKFLOW_EXECUTION_STARTED",
            "WORKFLOW_TASK_STARTED",
            "ACTIVITY_TASK_SCHEDULED",
            "ACTIVITY_TASK_STARTED",
            "ACTIVITY_TASK_COMPLETED",
            "WORKFLOW_EXECUTION_UPDATE_ACCEPTED",
            "WORKFLOW_EXECUTION_COMPLETED",
        )
    }
    figures.node_events_per_node = round(node_events.total() / len(sample), 1)
    figures.events_by_type = {
        "cluster": {t: round(n / len(status.nodes), 2) for t, n in cluster_events.most_common()},
        "node": {t: round(n / len(sample), 2) for t, n in node_events.most_common()},
    }
    # When the other nodes' workflows started after the leader was Ready, and how long they took.
    starts = sorted((s - leader_end).total_seconds() for s in starts_of_others)
    figures.others_start_s = (round(_percentile(starts, 0.5), 1), round(max(starts, default=0.0), 1))
    figures.others_duration_s = (round(_percentile(paths, 0.5), 1), round(max(paths, default=0.0), 1))


def _worker_figure(by_process: dict[str, float]) -> str:
    """The worker's figure; split, the sum of its processes' (workflows + vCenter).
    Of peaks, the sum is an upper bound: the two may peak at different times."""
    if VCENTER_WORKER not in by_process:
        return str(by_process.get("worker", "-"))
    workflows, vcenter = by_process.get("worker", 0), by_process[VCENTER_WORKER]
    return f"{round(workflows + vcenter, 1)} ({workflows} + {vcenter})"


def report(all_figures: list[Figures]) -> str:
    """The figures as a Markdown table, budgets in brackets where the issue sets one."""
    rows = [
        (
            "create",
            lambda f: (
                f"{f.masters} + {f.workers}"
                + (" (worker killed)" if f.worker_killed else "")
                + (" (scripts)" if f.scripts else "")
                + (" (split worker)" if f.split_worker else "")
            ),
        ),
        ("nodes Ready / failed", lambda f: f"{f.nodes_ready} / {f.nodes_failed}"),
        ("`create --wait` exit", lambda f: str(f.cli_exit)),
        ("spec -> Ready", lambda f: f"{f.spec_to_ready_s} s"),
        ("critical path", lambda f: f"{f.critical_path_s} s"),
        (
            "ratio",
            lambda f: _budget(f, str(f.ratio), RATIO_BUDGET.get(f.masters + f.workers)),
        ),
        (
            "cluster-workflow events / node",
            lambda f: f"{f.cluster_events_per_node} [<= {CLUSTER_EVENTS_BUDGET}]",
        ),
        ("node-workflow events / node", lambda f: f"{f.node_events_per_node} [<= {NODE_EVENTS_BUDGET}]"),
        ("SOAP requests / node (worker)", lambda f: f"{f.soap_per_node} [<= {SOAP_BUDGET}]"),
        (
            "  by method",
            lambda f: ", ".join(
                f"{m} {n}" for m, n in sorted(f.soap_per_node_by_method.items(), key=lambda i: -i[1])[:6]
            ),
        ),
        ("Temporal frontend requests / node (create)", lambda f: f"{f.temporal_per_node}"),
        (
            "  by operation",
            lambda f: ", ".join(
                f"{m} {n}"
                for m, n in sorted(f.temporal_per_node_by_operation.items(), key=lambda i: -i[1])[:8]
            ),
        ),
        (
            "CPU s: worker / Temporal / node API / simulated nodes",
            lambda f: " / ".join(
                [
                    _worker_figure(f.cpu_s),
                    *(str(f.cpu_s.get(p, "-")) for p in ("temporal", "node-api", "nodes")),
                ]
            ),
        ),
        (
            "peak RSS MB: worker / Temporal / node API",
            lambda f: " / ".join(
                [
                    _budget(f, _worker_figure(f.peak_rss_mb), RSS_BUDGET_MB, THOUSAND),
                    *(str(f.peak_rss_mb.get(p, "-")) for p in ("temporal", "node-api")),
                ]
            ),
        ),
        (
            "node API p50 / p99",
            lambda f: f"{f.node_api_p50_ms} / {f.node_api_p99_ms} ms ({f.node_api_requests} requests)",
        ),
        ("node API 5xx", lambda f: _budget(f, str(f.node_api_5xx), 0, THOUSAND)),
        (
            "other nodes' start after leader Ready p50 / max",
            lambda f: f"{f.others_start_s[0]} / {f.others_start_s[1]} s",
        ),
        (
            "  their first events after it, p50 / max s",
            lambda f: ", ".join(
                f"{step.lower()} {p50}/{top}" for step, (p50, top) in f.others_steps_s.items()
            ),
        ),
        (
            "other nodes' duration p50 / max",
            lambda f: f"{f.others_duration_s[0]} / {f.others_duration_s[1]} s",
        ),
        (
            "  their workflow tasks, queued / on the worker, p50 / p99 s",
            lambda f: " / ".join(
                f"{p50}/{p99}"
                for p50, p99 in (f.node_workflow_tasks_s.get(k, ("-", "-")) for k in ("queued", "worker"))
            ),
        ),
        (
            "CPU s: simulated nodes' agent / scripts; vCenter simulator; bench (vCenter proxy)",
            lambda f: (
                " / ".join(str(f.cpu_s.get(p, "-")) for p in ("node-agent", "node-scripts"))
                + f"; {f.cpu_s.get('vcsim', '-')}; {f.cpu_s.get('bench', '-')}"
            ),
        ),
        ("max clone calls per node", lambda f: str(f.clones_per_node_max)),
        ("VMs after create / after delete", lambda f: f"{f.vms_after_create} / {f.vms_after_delete}"),
        (
            "delete",
            lambda f: _budget(
                f,
                f"{f.delete_s} s",
                (
                    f"{delete_budget_s(f.masters + f.workers, f.vcenter_task_cap, f.one_vm_teardown_s)} s"
                    if f.vcenter_task_cap
                    else None
                ),
                THOUSAND,
            ),
        ),
        (
            "  first / last VM destroyed after",
            lambda f: f"{f.delete_destroyed_s[0]} / {f.delete_destroyed_s[1]} s",
        ),
        (
            "  one VM's power-off and destroy, measured; the budget with the task durations",
            lambda f: (
                f"{f.one_vm_teardown_s} s; "
                + (
                    f"{delete_budget_s(f.masters + f.workers, f.vcenter_task_cap)} s"
                    if f.vcenter_task_cap
                    else "-"
                )
            ),
        ),
    ]
    lines = ["| | " + " | ".join(render(f) for f in all_figures for _, render in rows[:1]) + " |"]
    lines.append("| --- |" + " --- |" * len(all_figures))
    for label, render in rows[1:]:
        lines.append(f"| {label} | " + " | ".join(render(f) for f in all_figures) + " |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    sizes = [int(n) for n in args.workers]
    if args.thousand:
        sizes.append(997)  # 3 + 997: a 1000-node cluster
    results = []
    for workers in sizes:
        results.append(
            await run_one(
                3,
                workers,
                kill_worker=False,
                boot_seconds=args.boot_seconds,
                scripts=args.scripts,
                split=args.split,
            )
        )
    if args.kill_worker:
        results.append(
            await run_one(
                3,
                args.kill_worker,
                kill_worker=True,
                boot_seconds=args.boot_seconds,
                scripts=args.scripts,
                split=args.split,
            )
        )
    table = report(results)
    print("\n" + table, flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps([asdict(f) for f in results], indent=2, default=str))
    (RESULTS / "latest.md").write_text(table + "\n")
    failed = [
        f for f in results if f.nodes_failed or f.nodes_ready != f.masters + f.workers or f.vms_after_delete
    ]
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description="benchmark cluster creation and deletion on the simulator")
    parser.add_argument("--workers", nargs="*", default=["20", "200"], help="worker counts, 3 masters each")
    parser.add_argument("--thousand", action="store_true", help="also a 1000-node cluster (3 + 997)")
    parser.add_argument(
        "--kill-worker",
        type=int,
        default=0,
        metavar="WORKERS",
        help="also a 3 + WORKERS create whose worker is SIGKILLed halfway through",
    )
    parser.add_argument("--boot-seconds", type=float, default=BOOT_SECONDS)
    parser.add_argument(
        "--split",
        action="store_true",
        help="run the worker as two processes, --role workflows and --role vcenter",
    )
    parser.add_argument(
        "--scripts",
        action="store_true",
        help="the simulated nodes run the real bootstrap script (a dozen processes a node)",
    )
    args = parser.parse_args()
    sys.exit(asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()
