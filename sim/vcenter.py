"""Build, start and stock govmomi's vCenter simulator (vcsim).

The simulator is a real vSphere SOAP API on loopback. It is built once from
Debian's ``golang-github-vmware-govmomi-dev`` source, offline, in GOPATH mode.
``prepare_inventory`` turns its generated inventory into what a cluster spec
needs: a template, a VM folder, and a datastore cluster holding two datastores.
See sim/README.md for where it differs from a real vCenter.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from pyVim import connect
from pyVmomi import vim

from pke_vsphere.vsphere import properties
from pke_vsphere.vsphere.waits import wait_for_task

GO_SOURCE = Path(__file__).parent / "vcsim"
DEBIAN_GOPATH = "/usr/share/gocode"

# The inventory the demo and tests use (names the simulator generates, plus ours).
DATACENTER = "DC0"
COMPUTE_CLUSTER = "DC0_C0"
RESOURCE_POOL = "DC0_C0/Resources/DC0_C0_RP1"
DATASTORE = "LocalDS_0"
DATASTORE_CLUSTER = "DC0_POD0"
NETWORK = "DC0_DVPG0"
OTHER_NETWORK = "DC0_DVPG1"  # the template's second NIC: a storage or backup network
TEMPLATE = "pke-ubuntu-2204"
FOLDER = "pke"
# A template of an older virtual hardware version (at most 64 CPUs, 1011 GiB).
OLD_TEMPLATE = "pke-ubuntu-1804-vmx10"
OLD_TEMPLATE_VERSION = "vmx-10"
TEMPLATE_CPUS = 2
TEMPLATE_CORES_PER_SOCKET = 2
SOURCE_VM = "DC0_C0_RP0_VM0"
PLAIN_VM = "DC0_C0_RP0_VM1"  # an ordinary VM, not a template

# How long tasks take unless a test or `SIM_TASK_SECONDS` says otherwise: long
# enough that every task is seen running (a VM appears only when its clone
# ends), short enough for the test suite.
DEFAULT_TASK_SECONDS: dict[str, float] = {
    "CloneVM_Task": 0.5,
    "ReconfigVM_Task": 0.1,
    "PowerOnVM_Task": 0.2,
    "PowerOffVM_Task": 0.1,
    "Destroy_Task": 0.2,
}


PATCH_DIR = GO_SOURCE / "patch"
SIMULATOR_PACKAGE = "src/github.com/vmware/govmomi/simulator"


def _sources() -> list[Path]:
    """Everything the binary is built from: the main package and the patch."""
    return sorted([*GO_SOURCE.glob("*.go"), *PATCH_DIR.glob("*.go"), *PATCH_DIR.glob("*.diff")])


def binary_path(state_dir: Path) -> Path:
    digest = hashlib.sha256()
    for source in _sources():
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return state_dir / "bin" / f"vcsim-{digest.hexdigest()[:12]}"


def _patched_gopath(state_dir: Path, build_id: str) -> Path:
    """A GOPATH holding Debian's simulator package with sim/vcsim/patch applied:
    the diff (small edits to Debian's files) and the Go files added to the package.
    Every other file of govmomi is a link to Debian's (GOPATH mode takes a package
    from the first GOPATH entry holding its directory), and it comes before
    Debian's GOPATH, which serves govmomi's own dependencies."""
    root = (state_dir / f"gopath-{build_id}").resolve()
    package = root / SIMULATOR_PACKAGE
    if (package / ".patched").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    debian = Path(DEBIAN_GOPATH) / SIMULATOR_PACKAGE
    shutil.copytree(debian, package, ignore=shutil.ignore_patterns("*_test.go"))
    for entry in debian.parent.iterdir():
        if entry.name != debian.name:
            (package.parent / entry.name).symlink_to(entry)
    for diff in sorted(PATCH_DIR.glob("*.diff")):
        subprocess.run(["patch", "--quiet", "-p1", "-d", str(package), "-i", str(diff.resolve())], check=True)
    for added in sorted(PATCH_DIR.glob("*.go")):
        shutil.copy(added, package / added.name)
    (package / ".patched").touch()
    return root


def build(state_dir: Path) -> Path:
    """Build the simulator once per source version; later calls reuse the binary."""
    binary = binary_path(state_dir)
    if binary.exists():
        return binary
    go = shutil.which("go") or "/usr/lib/go/bin/go"
    if not Path(go).exists() or not Path(DEBIAN_GOPATH, "src/github.com/vmware/govmomi").exists():
        raise RuntimeError(
            "building the vCenter simulator needs Debian's golang-go and "
            "golang-github-vmware-govmomi-dev packages: run `make system-deps`"
        )
    if shutil.which("patch") is None:
        raise RuntimeError("building the vCenter simulator needs Debian's patch: run `make system-deps`")
    binary.parent.mkdir(parents=True, exist_ok=True)
    gopath = _patched_gopath(state_dir, binary.name.removeprefix("vcsim-"))
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{gopath}{os.pathsep}{DEBIAN_GOPATH}",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOCACHE": str((state_dir / "go-cache").resolve()),
    }
    tmp = binary.with_suffix(".tmp")
    subprocess.run([go, "build", "-o", str(tmp.resolve()), "."], cwd=GO_SOURCE, env=env, check=True)
    tmp.rename(binary)
    return binary


@dataclass
class Simulator:
    """A running simulator process."""

    process: subprocess.Popen[str]
    url: str
    username: str
    password: str
    log: IO[str] | None = field(default=None, repr=False)

    def connect(self) -> Any:
        parts = urlsplit(self.url)
        return connect.SmartConnect(
            protocol=parts.scheme,
            host=parts.hostname,
            port=parts.port,
            user=self.username,
            pwd=self.password,
            disableSslCertValidation=True,
        )

    def fail_clones_of(self, vm_name: str, fault: str) -> None:
        """From now on, every clone to ``vm_name`` is a task that fails with
        ``fault`` (``NoDiskSpace`` or ``HostCommunication``); see vcsim/faults.go."""
        self._clone_faults("POST", {"name": vm_name, "fault": fault})

    def failed_clones(self) -> dict[str, int]:
        """How many clone tasks were failed on purpose, per VM name."""
        injected: dict[str, int] = self._clone_faults("GET", {})["injected"]
        return injected

    def _clone_faults(self, method: str, query: dict[str, str]) -> Any:
        import httpx

        parts = urlsplit(self.url)
        url = f"{parts.scheme}://{parts.netloc}/pke-sim/clone-faults"
        response = httpx.request(method, url, params=query, verify=False, timeout=10)  # noqa: S501 - the local simulator
        response.raise_for_status()
        return response.json()

    def set_task_seconds(self, method: str, seconds: float, prefix: str = "") -> None:
        """From now on, tasks of ``method`` (``CloneVM_Task``, ``PowerOnVM_Task``, ...)
        on targets whose name starts with ``prefix`` take ``seconds``; see vcsim/control.go."""
        self._control(
            "/pke-sim/task-seconds", [("method", method), ("seconds", str(seconds)), ("prefix", prefix)]
        )

    def _control(self, path: str, params: list[tuple[str, str | int | float | bool | None]]) -> None:
        import httpx

        parts = urlsplit(self.url)
        url = f"{parts.scheme}://{parts.netloc}{path}"
        response = httpx.post(url, params=params, verify=False, timeout=10)  # noqa: S501 - the local simulator
        response.raise_for_status()

    def clone_calls(self) -> dict[str, int]:
        """Every CloneVM_Task call so far per destination name, refused ones included."""
        import httpx

        parts = urlsplit(self.url)
        url = f"{parts.scheme}://{parts.netloc}/pke-sim/clone-calls"
        response = httpx.get(url, verify=False, timeout=10)  # noqa: S501 - the local simulator
        response.raise_for_status()
        calls: dict[str, int] = response.json()
        return calls

    def deny_privileges(self, *privileges: str) -> None:
        """From now on, report these privileges as not granted (none: all granted)."""
        self._control("/pke-sim/denied-privileges", [("privilege", str(p)) for p in privileges])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=3)  # it may wait for idle connections; nothing to keep
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def parse_task_seconds(spec: str) -> dict[str, float]:
    """``"CloneVM_Task=20 PowerOnVM_Task=2"`` (spaces or commas), as `SIM_TASK_SECONDS` takes it.

    Raises:
        ValueError: an item is not METHOD=SECONDS with a known method and seconds >= 0.
    """
    durations: dict[str, float] = {}
    for item in spec.replace(",", " ").split():
        method, _, seconds = item.partition("=")
        if method not in DEFAULT_TASK_SECONDS:
            known = ", ".join(sorted(DEFAULT_TASK_SECONDS))
            raise ValueError(f"SIM_TASK_SECONDS: {item!r} is not METHOD=SECONDS with METHOD one of {known}")
        try:
            value = float(seconds)
        except ValueError:
            value = -1
        if value < 0:
            raise ValueError(f"SIM_TASK_SECONDS: {item!r}: seconds must be a number >= 0")
        durations[method] = value
    return durations


def start(
    state_dir: Path,
    *,
    username: str = "pke-orchestrator@vsphere.local",
    password: str = "sim-password",  # noqa: S107 - the simulator's own login, not a real secret
    listen: str = "127.0.0.1:0",
    method_delay: dict[str, int] | None = None,
    task_seconds: Mapping[str, float] | None = None,
    task_jitter: float = 0.2,
    session_limit: int = 0,
    session_idle_timeout: str | None = None,
    log_file: Path | None = None,
    prepare: bool = True,
    new_session: bool = False,
    tls: tuple[Path, Path] | None = None,
) -> Simulator:
    binary = build(state_dir)
    args = [str(binary), "-listen", listen, "-username", username, "-password", password]
    if method_delay:
        args += ["-method-delay", ",".join(f"{k}={v}" for k, v in method_delay.items())]
    durations = {**DEFAULT_TASK_SECONDS, **(task_seconds or {})}
    args += ["-task-seconds", ",".join(f"{k}={v}" for k, v in durations.items())]
    args += ["-task-jitter", str(task_jitter), "-session-limit", str(session_limit)]
    if session_idle_timeout:
        args += ["-session-idle-timeout", session_idle_timeout]
    if tls:
        args += ["-tls-cert", str(tls[0]), "-tls-key", str(tls[1])]
    log = log_file.open("a") if log_file else None
    process = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=log or subprocess.DEVNULL,
        text=True,
        start_new_session=new_session,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(timeout=5)
        raise RuntimeError(f"vCenter simulator exited with {process.returncode} before listening")
    sim = Simulator(process, json.loads(line)["url"], username, password, log)
    if prepare:
        prepare_inventory(sim)
    return sim


def prepare_inventory(sim: Simulator) -> None:
    """Template, VM folder and datastore cluster the example specs name."""
    si = sim.connect()
    try:
        content = si.content
        index = content.searchIndex
        dc = index.FindByInventoryPath(DATACENTER)
        if index.FindByInventoryPath(f"{DATACENTER}/vm/{TEMPLATE}") is None:
            vm = index.FindByInventoryPath(f"{DATACENTER}/vm/{SOURCE_VM}")
            state = properties.read(si, vm, ["runtime.powerState"])["runtime.powerState"]
            if state == vim.VirtualMachine.PowerState.poweredOn:
                wait_for_task(si, vm.PowerOffVM_Task(), timeout=30)
            wait_for_task(si, vm.Rename_Task(TEMPLATE), timeout=30)
            # Templates are often made with several cores per socket (vCenter then
            # refuses a CPU count that is not a multiple of it) and a second NIC on
            # another network (whose address must not become the node's).
            group = index.FindByInventoryPath(f"{DATACENTER}/network/{OTHER_NETWORK}")
            switch = properties.read(si, group, ["config.distributedVirtualSwitch"])
            uuid = properties.read(si, switch["config.distributedVirtualSwitch"], ["uuid"])["uuid"]
            second = vim.vm.device.VirtualVmxnet3(
                key=-1,
                backing=vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
                    port=vim.dvs.PortConnection(portgroupKey=group.key, switchUuid=uuid)
                ),
                connectable=vim.vm.device.VirtualDevice.ConnectInfo(startConnected=True, connected=True),
            )
            template_spec = vim.vm.ConfigSpec(
                numCPUs=TEMPLATE_CPUS,
                numCoresPerSocket=TEMPLATE_CORES_PER_SOCKET,
                deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=second)],
            )
            wait_for_task(si, vm.ReconfigVM_Task(spec=template_spec), timeout=30)
            vm.MarkAsTemplate()
        vm_folder = properties.read(si, dc, ["vmFolder"])["vmFolder"]
        if index.FindByInventoryPath(f"{DATACENTER}/vm/{OLD_TEMPLATE}") is None:
            cluster = index.FindByInventoryPath(f"{DATACENTER}/host/{COMPUTE_CLUSTER}")
            pool = properties.read(si, cluster, ["resourcePool"])["resourcePool"]
            old = vim.vm.ConfigSpec(
                name=OLD_TEMPLATE,
                version=OLD_TEMPLATE_VERSION,
                guestId="ubuntu64Guest",
                files=vim.vm.FileInfo(vmPathName=f"[{DATASTORE}]"),
            )
            made = wait_for_task(si, vm_folder.CreateVM_Task(config=old, pool=pool), timeout=30)
            made.MarkAsTemplate()
        if index.FindByInventoryPath(f"{DATACENTER}/vm/{FOLDER}") is None:
            vm_folder.CreateFolder(FOLDER)
        pod = index.FindByInventoryPath(f"{DATACENTER}/datastore/{DATASTORE_CLUSTER}")
        members = properties.read(si, pod, ["childEntity"]).get("childEntity", [])
        if not members:
            stores = [index.FindByInventoryPath(f"{DATACENTER}/datastore/LocalDS_{i}") for i in (1, 2)]
            wait_for_task(si, pod.MoveIntoFolder_Task([s for s in stores if s]), timeout=30)
    finally:
        connect.Disconnect(si)
