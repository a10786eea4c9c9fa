"""VM activities: the only place where a cluster's VMs are cloned, configured,
powered on and watched for an address.

A node's identity (name and instance UUID) is recorded in workflow history
before ``ensure_vm`` runs, so a retry after a worker crash finds the VM the
first attempt made instead of cloning a second one.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pyVmomi import vim, vmodl
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.progress import BatchProgress, Deadline, Progress, previous, previous_items
from activities.progress import in_thread as progress_in_thread
from activities.task_slots import SharedSlots, TaskSlots
from pke_vsphere.contracts.messages import (
    ClusterVm,
    ConfigureVmInput,
    DestroyVmInput,
    DestroyVmResult,
    DestroyVmsInput,
    DestroyVmsResult,
    EnsureVmInput,
    EnsureVmResult,
    FindClusterVmsInput,
    FindClusterVmsResult,
    NodeBootstrapSettings,
    PlacementRefs,
    PowerOnInput,
    PowerOnResult,
    ProvisionVmInput,
    ProvisionVmResult,
    RemoveNodeTokenInput,
    VCenterProgress,
    VCenterStep,
    WaitForIpInput,
    WaitForIpResult,
)
from pke_vsphere.contracts.protocol import ErrorType
from pke_vsphere.contracts.spec import VSpherePlacement
from pke_vsphere.contracts.state import NodeIdentity, NodePhase
from pke_vsphere.pki.node_tokens import NodeTokenSigner
from pke_vsphere.render import cloudinit, guestinfo
from pke_vsphere.runtime import crashpoints
from pke_vsphere.runtime.threads import ActivityExecutor
from pke_vsphere.vsphere import inventory, properties, tasks, vms
from pke_vsphere.vsphere.errors import (
    CloneTimeout,
    PermanentError,
    TransientError,
    as_activity_errors,
    describe,
)
from pke_vsphere.vsphere.session import VCenterSession
from pke_vsphere.vsphere.waits import wait_for_task

log = structlog.get_logger(__name__)

# vCenter's clock and ours may differ: look for an earlier attempt's clone this
# much before the step began.
CLOCK_SKEW = timedelta(minutes=2)
# A give-up destroy looks this far back for a clone of the node still running.
CLONE_LOOKBACK = timedelta(days=1)
# A destroy's whole step (power-off, destroy, and an earlier attempt's task).
DESTROY_TIMEOUT = timedelta(minutes=10)
# A batch's heartbeat while its VMs' threads wait on vCenter.
BATCH_BEAT_SECONDS = 1.0
# What a destroy reads of a VM first: its markers, power state and identity.
DESTROY_PATHS = (
    "runtime.powerState",
    "config.instanceUuid",
    *properties.extra_config_paths(guestinfo.OWNER_MARKERS),
)
# Threads for the blocking parts of coroutine activities, at most (a part waits
# for a vCenter task slot and its task; at most the cap's tasks run at once).
PART_THREADS = 1024
RECONFIGURE, POWER_ON = "ReconfigVM_Task", "PowerOnVM_Task"
POWER_OFF, DESTROY = "PowerOffVM_Task", "Destroy_Task"


@dataclass(frozen=True)
class _PoweredUp:
    """A node's VM once it is on: what ``provision_vm`` waits for its address with."""

    si: Any
    vm: Any
    created: bool
    nic_key: int | None
    powered_on_at: datetime


class VSphereActivities:
    """Owns the worker's vCenter session and its cap on concurrent vCenter tasks."""

    def __init__(
        self,
        session: VCenterSession,
        signer: NodeTokenSigner,
        node_api_url: str,
        node_token_ttl: timedelta,
        max_concurrent_tasks: int,
        node_api_ca_pem: str | None = None,
        shared_slots: SharedSlots | None = None,
    ) -> None:
        self._session = session
        self._signer = signer
        self._node_api_url = node_api_url
        self._node_token_ttl = node_token_ttl
        self._node_api_ca_pem = node_api_ca_pem
        self.task_slots = TaskSlots(max_concurrent_tasks, shared_slots)
        # The threads of the coroutine activities' blocking parts (their vCenter
        # calls and task waits), started off the event loop as needed.
        self._parts = ActivityExecutor(PART_THREADS, thread_name_prefix="vcenter-call")

    @property
    def session(self) -> VCenterSession:
        return self._session

    @property
    def installation_id(self) -> str:
        return self._session.settings.installation_id

    def _run_task(
        self,
        si: Any,
        start: Callable[[], Any],
        name: str,
        method: str,
        progress: Progress,
        deadline: Deadline,
        wait: Callable[[Any], Any] | None = None,
        governed: bool = True,
    ) -> Any:
        """Start a vCenter task under the cap (held until the task ends) and wait for
        it until the step's deadline; every heartbeat from its start on names it.
        ``governed=False``: a metadata-only task (an extraConfig edit) that does not
        queue for the cap, which is for the work hosts and datastores do."""
        with self.task_slots.hold(progress) if governed else contextlib.nullcontext():
            task = start()
            # A task that holds a slot is one a retry resumes; an extraConfig edit
            # (not governed) it may repeat, so that heartbeat need not go at once.
            progress.at(VCenterStep.TASK, task._moId, method, urgent=governed)
            crashpoints.reach(f"{name}.started")
            if wait is not None:
                return wait(task)
            return wait_for_task(si, task, timeout=deadline.left(), on_wake=progress, result=False)

    @activity.defn
    def ensure_vm(self, input: EnsureVmInput) -> EnsureVmResult:
        """Find the node's VM by its instance UUID, or the clone an earlier attempt
        started, or clone it from the template (powered off: the workflows of 0.2
        configure and power on in steps of their own)."""
        progress = Progress()
        deadline = Deadline.of_activity()
        clone = self._clone(input, power_on=False)

        def run(si: Any) -> EnsureVmResult:
            placement = inventory.resolve(si, input.placement)
            progress()
            vm, created = self._ensure(
                si, placement, inventory.refs(si, placement), clone, progress, deadline
            )
            return EnsureVmResult(vm_ref=vm._moId, created=created)

        with as_activity_errors(f"ensure VM {input.identity.name}"):
            return self._session.run(run)

    @activity.defn
    async def provision_vm(self, input: ProvisionVmInput) -> ProvisionVmResult:
        """A node's VM from nothing to its address, in one activity: found by its
        instance UUID (or the clone an earlier attempt started), else cloned and
        powered on by the clone's own task; a VM found otherwise gets its hardware
        matched and is powered on; then VMware Tools' address. Each part has its
        deadline within the step (clone, then configure and power-on, then IP, from
        the step's first attempt) and every heartbeat names the part, so a retry
        after a crash resumes there. A first attempt looks nothing up: no earlier
        attempt can have started anything for this node's instance UUID. Once the
        VM has its address, its token is taken out of its guestinfo.

        A coroutine: its vCenter calls and task waits run in threads, but its wait
        for the address (the guest's boot, most of the step) holds none. A thousand
        booting nodes held a thousand threads that only woke to heartbeat."""
        node, steps = input.identity, input.timeouts
        step = Deadline.of_activity()
        clone_deadline = step.part(steps.as_timedelta("clone"), steps.as_timedelta("clone"))
        powered_by = (
            steps.as_timedelta("clone") + steps.as_timedelta("configure") + steps.as_timedelta("power_on")
        )
        power_deadline = step.part(
            powered_by, steps.as_timedelta("configure") + steps.as_timedelta("power_on")
        )
        progress = Progress(phase=NodePhase.CLONING)
        first_attempt = activity.info().attempt == 1 and previous() is None
        clone = self._clone(input, power_on=True)
        network = vms.portgroup_name(input.placement.network)

        def place(si: Any) -> tuple[inventory.Placement, PlacementRefs]:
            if input.refs is not None:
                return inventory.from_refs(si, input.refs), input.refs
            placement = inventory.resolve(si, input.placement)
            return placement, inventory.refs(si, placement)

        def power_up(si: Any) -> _PoweredUp:
            placement, refs = place(si)
            try:
                vm, created = self._ensure(
                    si, placement, refs, clone, progress, clone_deadline, look_first=not first_attempt
                )
            except vmodl.fault.ManagedObjectNotFound as gone:
                if (
                    input.refs is None
                    or getattr(gone.obj, "_moId", None) not in input.refs.model_dump().values()
                ):
                    raise
                # The preflight's references went stale (a template replaced): by path.
                log.info("vm.placement_refs_stale", node=node.name, gone=gone.obj._moId)
                placement = inventory.resolve(si, input.placement)
                refs = inventory.refs(si, placement)
                vm, created = self._ensure(si, placement, refs, clone, progress, clone_deadline)
            if not created:
                progress.enter(NodePhase.CONFIGURING)
                self._match_hardware(si, vm, node.name, input.cpus, input.memory_mb, progress, power_deadline)
                progress.enter(NodePhase.POWERING_ON)
                self._power_on(si, vm, node.name, progress, power_deadline)
            nic_key = refs.nic_key
            if network is None and nic_key is None:
                nic_key = vms.first_nic_key(si, vm)
            return _PoweredUp(si, vm, created, nic_key, datetime.now(UTC))

        async def in_thread(part: Callable[[], Any]) -> Any:
            return await progress_in_thread(self._parts, part, progress)

        with as_activity_errors(f"provision VM {node.name}"):
            up: _PoweredUp = await in_thread(lambda: self._session.run(power_up))
            # Nothing for a retry to resume (it finds the VM by its UUID): status
            # shows this with the next heartbeat due, within half a heartbeat timeout.
            progress.enter(NodePhase.WAITING_FOR_IP, VCenterStep.WAITING, urgent=False)
            try:
                ip = await up.si.watcher.wait_async(
                    up.vm,
                    vms.ip_answer(network, up.nic_key),
                    # The IP part's own deadline from the power-on, within the step's.
                    within=min(step.left(), float(steps.ip)),
                    on_wake=progress,
                    what=vms.IP_WHAT,
                    in_thread=in_thread,
                )
            except TimeoutError as exc:
                raise _ip_timeout(node.name, steps.ip) from exc
            crashpoints.reach("ip.reported")
            log.info("vm.ip_reported", node=node.name, vm=up.vm._moId, ip=ip)

            # The guest is up and on the network: cloud-init read its user data
            # before that (its VMware datasource runs before networking), so the
            # token leaves guestinfo now; the node keeps it in a file until its report.
            # A VM this attempt cloned holds the document rendered here: its tokenless
            # twin goes in without reading the VM's back.
            def remove_token(si: Any) -> bool:
                tokenless = self._userdata(clone, None) if up.created else None
                return self._remove_token(si, up.vm, node.name, progress, step, tokenless=tokenless)

            await in_thread(lambda: self._session.run(remove_token))
            return ProvisionVmResult(
                vm_ref=up.vm._moId, ip=ip, created=up.created, powered_on_at=up.powered_on_at
            )

    def _ensure(
        self,
        si: Any,
        placement: inventory.Placement,
        refs: PlacementRefs,
        clone: Clone,
        progress: Progress,
        deadline: Deadline,
        look_first: bool = True,
    ) -> tuple[Any, bool]:
        """The node's VM and whether this call cloned it: found (``look_first``) by
        instance UUID or as the clone an earlier attempt started, else cloned."""
        node = clone.identity
        logger = log.bind(cluster=node.cluster, node=node.name, instance_uuid=node.instance_uuid)
        if look_first:
            earlier = earlier_task(tasks.CLONE, previous())
            existing = self._find_or_resume(si, placement, clone, progress, deadline, earlier)
            if existing is not None:
                logger.info("vm.found", vm=existing._moId)
                return existing, False
        if deadline.left_for_task() <= 0:  # a retry after the clone step: no clone to start
            raise CloneTimeout(
                f"the clone of {node.name} did not finish within the clone step "
                f"({deadline.total.total_seconds():.0f}s); no clone was started past it"
            )
        userdata = self._userdata(clone, self._signer.sign(node, clone.token_ttl))
        extra_config = guestinfo.extra_config(node, userdata, self.installation_id)
        try:
            guestinfo.check_limits(extra_config, cloudinit.spec_sources(clone.bootstrap))
        except guestinfo.TooLarge as exc:
            raise PermanentError(str(exc)) from None
        logger.info("vm.cloning", template=clone.placement.template, folder=clone.placement.folder)
        # A clone, once started, is waited for even if the activity is cancelled
        # (a cluster deleted mid-create): the VM must exist before the sweep.
        with activity.shield_thread_cancel_exception():
            try:
                vm = self._run_task(
                    si,
                    lambda: vms.start_clone(
                        si,
                        placement,
                        refs,
                        name=node.name,
                        instance_uuid=node.instance_uuid,
                        cpus=clone.cpus,
                        memory_mb=clone.memory_mb,
                        extra_config=extra_config,
                        power_on=clone.power_on,
                    ),
                    "clone",
                    tasks.CLONE,
                    progress,
                    deadline,
                    wait=lambda task: self._wait_for_clone(si, task, clone, progress, deadline),
                )
            except vim.fault.DuplicateName:
                # Something of that name appeared since the lookup: an earlier
                # attempt's clone, most likely. Look again; never give up here.
                logger.info("vm.clone_name_taken")
                found = self._find_or_resume(si, placement, clone, progress, deadline, None)
                if found is None:
                    raise TransientError(
                        f"vCenter reports {node.name!r} as taken in folder {clone.placement.folder!r} "
                        "but neither a VM nor a clone of this node is there yet"
                    ) from None
                return found, False
        crashpoints.reach("clone.finished")
        logger.info("vm.cloned", vm=vm._moId, powered_on=clone.power_on)
        return vm, True

    def _find_or_resume(
        self,
        si: Any,
        placement: inventory.Placement,
        clone: Clone,
        progress: Progress,
        deadline: Deadline,
        task_id: str | None,
    ) -> Any | None:
        """This node's VM if it exists; else the clone an earlier attempt started
        (named in its heartbeat, or found in vCenter), waited for. None: clone."""
        node = clone.identity
        vm = vms.find_by_instance_uuid(si, placement.datacenter, node.instance_uuid)
        if vm is not None:
            return vm
        task = tasks.task_by_id(si, task_id) if task_id else None
        if task is None:
            task = tasks.find_clone(si, placement, node.name, since=deadline.started - CLOCK_SKEW)
        if task is not None:
            log.info("vm.clone_resumed", node=node.name, task=task._moId)
            with activity.shield_thread_cancel_exception(), self.task_slots.hold(progress):
                progress.at(VCenterStep.TASK, task._moId, tasks.CLONE)
                try:
                    self._wait_for_clone(si, task, clone, progress, deadline)
                except vmodl.fault.ManagedObjectNotFound:
                    log.info("vm.clone_task_forgotten", node=node.name, task=task._moId)
                except vim.fault.DuplicateName:
                    pass  # that attempt lost a race; whatever won is looked up below
                except vmodl.MethodFault as fault:  # the earlier clone failed: it made no VM
                    reason = describe(fault)
                    log.info("vm.earlier_clone_failed", node=node.name, task=task._moId, error=reason)
            vm = vms.find_by_instance_uuid(si, placement.datacenter, node.instance_uuid)
            if vm is not None:
                return vm
        same_name = vms.find_in_folder(si, placement.folder, node.name)
        if same_name is not None:
            raise PermanentError(
                f"a VM named {node.name!r} already exists in folder {clone.placement.folder!r} "
                "and is not this node (its instance UUID differs); remove or rename it"
            )
        return None

    def _wait_for_clone(
        self, si: Any, task: Any, clone: Clone, progress: Progress, deadline: Deadline
    ) -> Any:
        """Wait for the clone until shortly before the step's deadline; then cancel
        it in vCenter and wait for it to end, so that no VM appears after the node
        was given up."""
        try:
            return wait_for_task(si, task, timeout=deadline.left_for_task(), on_wake=progress)
        except TimeoutError:
            log.info(
                "vm.clone_cancelled", node=clone.identity.name, task=task._moId, why="past the clone step"
            )
            with contextlib.suppress(TimeoutError):  # the step is over either way
                _cancel_clone(si, task, progress, timeout=max(1.0, deadline.left()))
            raise CloneTimeout(
                f"the clone of {clone.identity.name} did not finish within the clone step "
                f"({deadline.total.total_seconds():.0f}s) and was cancelled in vCenter"
            ) from None

    @activity.defn
    def configure_vm(self, input: ConfigureVmInput) -> None:
        """Make CPUs and memory match the pool (before power-on)."""
        progress = Progress()
        deadline = Deadline.of_activity(timedelta(minutes=5))

        def run(si: Any) -> None:
            vm = vms.vm_by_ref(si, input.vm_ref)
            self._match_hardware(si, vm, input.name, input.cpus, input.memory_mb, progress, deadline)

        with as_activity_errors(f"configure VM {input.name}"):
            self._session.run(run)

    def _match_hardware(
        self, si: Any, vm: Any, name: str, cpus: int, memory_mb: int, progress: Progress, deadline: Deadline
    ) -> None:
        self._finish_earlier(si, RECONFIGURE, progress, deadline, previous())
        current = vms.facts(si, vm)
        if current.cpus == cpus and current.memory_mb == memory_mb:
            return
        if current.powered_on:
            raise PermanentError(
                f"VM {name} is on with {current.cpus} CPUs/{current.memory_mb} MiB; "
                f"power it off to apply {cpus} CPUs/{memory_mb} MiB"
            )
        cores = vms.cores_per_socket(cpus, current.cores_per_socket)
        self._run_task(
            si,
            lambda: vms.start_reconfigure(vm, cpus=cpus, cores=cores, memory_mb=memory_mb),
            "reconfigure",
            RECONFIGURE,
            progress,
            deadline,
        )
        crashpoints.reach("reconfigure.finished")
        log.info("vm.configured", node=name, vm=vm._moId, cpus=cpus, memory_mb=memory_mb)

    def _clone(self, input: EnsureVmInput | ProvisionVmInput, power_on: bool) -> Clone:
        return Clone(
            identity=input.identity,
            placement=input.placement,
            cpus=input.cpus,
            memory_mb=input.memory_mb,
            bootstrap=input.bootstrap,
            token_ttl=self._token_ttl(input.token_expires_at),
            power_on=power_on,
        )

    def _token_ttl(self, expires_at: datetime | None) -> timedelta:
        """Until the node's bootstrap deadline (the default TTL for older workflows)."""
        if expires_at is None:
            return self._node_token_ttl
        return max(expires_at - datetime.now(UTC), timedelta(seconds=1))

    @activity.defn
    def remove_node_token(self, input: RemoveNodeTokenInput) -> bool:
        """Take the node's token out of its VM's guestinfo (the node bootstrapped);
        False when there is none (a retry, or a VM cloned without one)."""
        progress = Progress()
        deadline = Deadline.of_activity(timedelta(minutes=2))

        def run(si: Any) -> bool:
            return self._remove_token(si, vms.vm_by_ref(si, input.vm_ref), input.name, progress, deadline)

        with as_activity_errors(f"remove the token from VM {input.name}"):
            return self._session.run(run)

    def _userdata(self, clone: Clone, token: str | None) -> str:
        """The node's cloud-config: with its token for the clone, without (None) once
        the VM has its address."""
        return cloudinit.render(
            clone.identity,
            clone.bootstrap,
            node_api_url=self._node_api_url,
            node_token=token,
            node_api_ca_pem=self._node_api_ca_pem,
        )

    def _remove_token(
        self,
        si: Any,
        vm: Any,
        name: str,
        progress: Progress,
        deadline: Deadline,
        tokenless: str | None = None,
    ) -> bool:
        """Take the token out of the VM's guestinfo; False if it holds none. With
        ``tokenless`` (the VM was cloned in this attempt, with the document that is
        this plus the token), that is written without reading the VM's back."""
        self._finish_earlier(si, RECONFIGURE, progress, deadline, previous())
        kept = tokenless
        if kept is None:
            keys = (guestinfo.USERDATA, f"{guestinfo.USERDATA}.encoding")
            props = properties.read(si, vm, ["name", *properties.extra_config_paths(keys)])
            if not props:
                raise PermanentError(f"VM {name} no longer exists")
            extra = properties.extra_config_entries(props)
            encoded = extra.get(guestinfo.USERDATA)
            if not encoded:
                return False
            userdata = guestinfo.decode(encoded, extra.get(f"{guestinfo.USERDATA}.encoding", ""))
            kept = cloudinit.without_token(userdata)
            if kept == userdata:
                return False
        self._run_task(
            si,
            lambda: vms.start_set_extra_config(vm, guestinfo.userdata_config(kept)),
            "reconfigure",
            RECONFIGURE,
            progress,
            deadline,
            # An extraConfig edit: it does not wait behind clones for the cap (the
            # node's address is known, and its bootstrap waits for this).
            governed=False,
        )
        log.info("vm.node_token_removed", node=name, vm=vm._moId)
        return True

    @activity.defn
    def power_on_vm(self, input: PowerOnInput) -> PowerOnResult:
        progress = Progress()
        deadline = Deadline.of_activity(timedelta(minutes=5))

        def run(si: Any) -> PowerOnResult:
            vm = vms.vm_by_ref(si, input.vm_ref)
            started = self._power_on(si, vm, input.name, progress, deadline)
            return PowerOnResult(powered_on_at=datetime.now(UTC), already_on=not started)

        with as_activity_errors(f"power on VM {input.name}"):
            return self._session.run(run)

    def _power_on(self, si: Any, vm: Any, name: str, progress: Progress, deadline: Deadline) -> bool:
        """Power the VM on; False if it already was."""
        self._finish_earlier(si, POWER_ON, progress, deadline, previous())
        if vms.facts(si, vm).powered_on:
            return False
        self._run_task(si, vm.PowerOnVM_Task, "power_on", POWER_ON, progress, deadline)
        log.info("vm.powered_on", node=name, vm=vm._moId)
        return True

    @activity.defn
    def wait_for_vm_ip(self, input: WaitForIpInput) -> WaitForIpResult:
        """Wait for VMware Tools to report a usable IPv4 address."""
        progress = Progress(VCenterStep.WAITING)

        def run(si: Any) -> WaitForIpResult:
            vm = vms.vm_by_ref(si, input.vm_ref)
            ip = vms.wait_for_ip(
                si,
                vm,
                timeout=input.timeout_seconds,
                on_wake=progress,
                network=vms.portgroup_name(input.network),
            )
            crashpoints.reach("ip.reported")
            log.info("vm.ip_reported", node=input.name, vm=input.vm_ref, ip=ip)
            return WaitForIpResult(ip=ip)

        with as_activity_errors(f"wait for the IP of VM {input.name}"):
            try:
                return self._session.run(run)
            except TimeoutError as exc:
                raise _ip_timeout(input.name, input.timeout_seconds) from exc

    @activity.defn
    def find_cluster_vms(self, input: FindClusterVmsInput) -> FindClusterVmsResult:
        """Every VM in the datacenter marked as belonging to the cluster."""

        def run(si: Any) -> FindClusterVmsResult:
            started = time.monotonic()
            root = None
            if input.datacenter is not None:
                root = inventory.find_path(si, input.datacenter)
                if root is None:
                    raise PermanentError(f"no datacenter {input.datacenter!r}")
            markers = guestinfo.owner_markers(self.installation_id, input.cluster)
            identity = (guestinfo.MARKER_CLUSTER_UID, guestinfo.MARKER_POOL, guestinfo.MARKER_NODE)
            found = [
                ClusterVm(
                    ref=vm._moId,
                    name=props.get("name", ""),
                    instance_uuid=props.get("config.instanceUuid"),
                    powered_on=props.get("runtime.powerState") == vim.VirtualMachine.PowerState.poweredOn,
                    cluster_uid=props["extra"].get(guestinfo.MARKER_CLUSTER_UID),
                    pool=props["extra"].get(guestinfo.MARKER_POOL),
                    node=props["extra"].get(guestinfo.MARKER_NODE),
                )
                for vm, props in vms.marked_vms(si, root, markers, also=identity)
            ]
            # How long a sweep of every VM's markers takes: the start of every delete.
            seconds = round(time.monotonic() - started, 2)
            log.info("vms.swept", cluster=input.cluster, found=len(found), seconds=seconds)
            return FindClusterVmsResult(vms=found)

        with as_activity_errors(f"find the VMs of cluster {input.cluster}"):
            return self._session.run(run)

    @activity.defn
    def destroy_vm(self, input: DestroyVmInput) -> DestroyVmResult:
        """Power off and destroy a VM, found by reference or instance UUID; a VM that
        is already gone is success. Never touches a VM without the cluster's marker.
        With the node's placement, a clone of it still running in vCenter is
        cancelled first, and what it made is destroyed too."""
        progress = Progress()
        deadline = Deadline.of_activity(DESTROY_TIMEOUT)
        earlier = previous()
        with as_activity_errors(f"destroy VM {input.name}"):
            destroyed = self._session.run(lambda si: self._destroy(si, input, progress, earlier, deadline))
        return DestroyVmResult(destroyed=destroyed)

    @activity.defn
    def destroy_vms(self, input: DestroyVmsInput) -> DestroyVmsResult:
        """Several VMs of a cluster, each in a thread of its own under the task cap.
        A first attempt acts on what a delete's sweep found (markers checked, power
        state), or, for VMs as the cluster recorded them (``swept=False``), on one
        read of the whole batch, each VM's identity and markers checked; a retry
        reads and checks each VM as :meth:`destroy_vm` does. One heartbeat carries
        every VM's task, so a retry resumes each; a VM that fails does not stop the
        others, and the activity then fails with the first non-retryable error,
        else the first error."""
        batch = BatchProgress()
        deadline = Deadline.of_activity(DESTROY_TIMEOUT)
        earlier = previous_items()

        known: dict[str, ClusterVm] = {}
        if activity.info().attempt == 1:
            if input.swept:
                known = {vm.ref: vm for vm in input.vms}
            else:
                with as_activity_errors(f"read the {len(input.vms)} VMs to destroy"):
                    known = self._session.run(lambda si: self._read_recorded(si, input))

        def one(vm: ClusterVm, progress: Progress) -> bool:
            # Acted on as read above; a VM not read so (gone, replaced, unmarked, or a
            # retry) is looked up and checked on its own.
            each, swept = input.one(vm), known.get(vm.ref)
            with as_activity_errors(f"destroy VM {vm.name}"):
                return self._session.run(
                    lambda si: self._destroy(si, each, progress, earlier.get(vm.name), deadline, swept)
                )

        with ThreadPoolExecutor(len(input.vms), thread_name_prefix="destroy") as pool:
            # Each thread runs in a copy of the activity's context (heartbeats, cancellation).
            running = {
                vm.name: pool.submit(contextvars.copy_context().run, one, vm, batch.item(vm.name))
                for vm in input.vms
            }
            for future in running.values():
                future.add_done_callback(lambda _: batch.wake())
            batch.beat_until(lambda: all(f.done() for f in running.values()), BATCH_BEAT_SECONDS)
        errors = [e for e in (f.exception() for f in running.values()) if e is not None]
        if errors:
            raise next((e for e in errors if isinstance(e, ApplicationError) and e.non_retryable), errors[0])
        return DestroyVmsResult(destroyed=sorted(name for name, f in running.items() if f.result()))

    def _read_recorded(self, si: Any, input: DestroyVmsInput) -> dict[str, ClusterVm]:
        """The batch's VMs as one request reads them, by reference: those that still
        name their node's instance UUID and carry the cluster's markers, with their
        power state (the others are left to a check of their own)."""
        read = properties.read_many(si, [vms.vm_by_ref(si, vm.ref) for vm in input.vms], DESTROY_PATHS)
        checked = {}
        for vm in input.vms:
            props = read.get(vm.ref)
            if not props or props.get("config.instanceUuid") != vm.instance_uuid:
                continue
            if not self._marked(props, input.cluster):
                continue
            powered_on = props.get("runtime.powerState") == vim.VirtualMachine.PowerState.poweredOn
            checked[vm.ref] = vm.model_copy(update={"powered_on": powered_on})
        return checked

    def _destroy(
        self,
        si: Any,
        input: DestroyVmInput,
        progress: Progress,
        earlier: VCenterProgress | None,
        deadline: Deadline,
        swept: ClusterVm | None = None,
    ) -> bool:
        """One VM's power-off and destroy; False if it was gone already. ``swept``:
        the VM as a sweep of this delete just found it (its markers checked, its
        power state read), acted on without reading it again unless an earlier
        attempt's task of it is to be waited for first."""
        if earlier_task(POWER_OFF, earlier) or earlier_task(DESTROY, earlier):
            swept = None  # its state changes with that task: read it after
        self._finish_earlier(si, POWER_OFF, progress, deadline, earlier)
        self._finish_earlier(si, DESTROY, progress, deadline, earlier)
        if swept is not None:
            vm, powered_on = vms.vm_by_ref(si, swept.ref), swept.powered_on
        else:
            vm, props = self._vm_to_destroy(si, input, progress, deadline)
            if vm is None or not props:
                return False
            self._refuse_unless_marked(vm, props, input)
            powered_on = props.get("runtime.powerState") == vim.VirtualMachine.PowerState.poweredOn
        with activity.shield_thread_cancel_exception():
            try:
                if powered_on:
                    off = lambda: vms.start_power_off(vm)  # noqa: E731
                    self._run_task(si, off, "power_off", POWER_OFF, progress, deadline)
                self._run_task(si, lambda: vms.start_destroy(vm), "destroy", DESTROY, progress, deadline)
            except vmodl.fault.ManagedObjectNotFound as gone:
                # Another destroy of this VM (a give-up destroy and a delete at
                # once) finished first: it is gone, which is what was asked.
                if getattr(gone.obj, "_moId", None) != vm._moId:
                    raise
                log.info("vm.already_destroyed", cluster=input.cluster, node=input.name, vm=vm._moId)
                return False
        crashpoints.reach("destroy.finished")
        log.info("vm.destroyed", cluster=input.cluster, node=input.name, vm=vm._moId)
        return True

    def _marked(self, props: dict[str, Any], cluster: str) -> bool:
        """Whether a VM read with :data:`DESTROY_PATHS` carries the cluster's markers
        of this installation."""
        extra = properties.extra_config_entries(props)
        owner = guestinfo.owner_markers(self.installation_id, cluster)
        return all(extra.get(key) == value for key, value in owner.items())

    def _refuse_unless_marked(self, vm: Any, props: dict[str, Any], input: DestroyVmInput) -> None:
        if not self._marked(props, input.cluster):
            raise PermanentError(
                f"refusing to destroy {input.name} ({vm._moId}): it is not marked as part of "
                f"cluster {input.cluster!r} of installation {self.installation_id!r}"
            )

    def _vm_to_destroy(
        self, si: Any, input: DestroyVmInput, progress: Progress, deadline: Deadline
    ) -> tuple[Any | None, dict[str, Any]]:
        """The VM and its marker and power state. A reference from a sweep that just
        found the VM is read directly (one request) and trusted only if it still
        names the node's instance UUID; else the VM is looked up by that UUID."""
        if input.vm_ref and input.instance_uuid:
            vm = vms.vm_by_ref(si, input.vm_ref)
            props = properties.read(si, vm, DESTROY_PATHS)
            if props.get("config.instanceUuid") == input.instance_uuid:
                return vm, props
        vm = None
        if input.instance_uuid:
            datacenter = inventory.find_path(si, input.datacenter) if input.datacenter else None
            vm = vms.find_by_instance_uuid(si, datacenter, input.instance_uuid)
            if vm is None and input.placement is not None:
                vm = self._stop_clone_in_flight(si, input, progress, deadline)
        if vm is None and input.vm_ref:
            vm = vms.vm_by_ref(si, input.vm_ref)
        return vm, (properties.read(si, vm, DESTROY_PATHS) if vm else {})

    def _finish_earlier(
        self,
        si: Any,
        method: str,
        progress: Progress,
        deadline: Deadline,
        earlier: VCenterProgress | None,
    ) -> None:
        """Wait for a task of ``method`` that an earlier attempt started (as its
        progress, ``earlier``, names it), whatever its outcome: the caller then looks
        at vCenter's state instead of repeating it."""
        task_id = earlier_task(method, earlier)
        if task_id is None:
            return
        progress.at(VCenterStep.TASK, task_id, method)
        log.info("vcenter.earlier_task_resumed", task=task_id, method=method)
        with activity.shield_thread_cancel_exception():
            try:
                task = tasks.task_by_id(si, task_id)
                wait_for_task(si, task, timeout=deadline.left(), on_wake=progress, result=False)
            except vmodl.MethodFault as fault:  # failed, or vCenter no longer lists it
                log.info("vcenter.earlier_task_ended", task=task_id, method=method, error=describe(fault))
        progress.at(VCenterStep.LOOKING)

    def _stop_clone_in_flight(
        self, si: Any, input: DestroyVmInput, progress: Progress, deadline: Deadline
    ) -> Any | None:
        """Cancel a clone of the node that is still running in vCenter and wait for it
        to end; returns the VM if it got made anyway."""
        assert input.placement is not None and input.instance_uuid is not None
        placement = inventory.resolve(si, input.placement)
        task = tasks.find_clone(si, placement, input.name, since=datetime.now(UTC) - CLONE_LOOKBACK)
        if task is None:
            return None
        state = properties.read(si, task, ["info.state"]).get("info.state")
        if state in (vim.TaskInfo.State.queued, vim.TaskInfo.State.running):
            log.info("vm.clone_cancelled", node=input.name, task=task._moId)
            with activity.shield_thread_cancel_exception():
                _cancel_clone(si, task, progress, timeout=deadline.left())
        return vms.find_by_instance_uuid(si, placement.datacenter, input.instance_uuid)


@dataclass(frozen=True)
class Clone:
    """What a node's clone is made of."""

    identity: NodeIdentity
    placement: VSpherePlacement
    cpus: int
    memory_mb: int
    bootstrap: NodeBootstrapSettings
    token_ttl: timedelta
    power_on: bool


def _ip_timeout(name: str, seconds: int) -> ApplicationError:
    return ApplicationError(
        f"VMware Tools reported no IP address for {name} within {seconds}s: check that the "
        "template runs open-vm-tools and that the network hands out addresses",
        type=ErrorType.IP_TIMEOUT,
        non_retryable=True,
    )


def _cancel_clone(si: Any, task: Any, progress: Progress, timeout: float) -> None:
    """Cancel a clone in vCenter and wait (up to ``timeout``) for it to end, however
    it ends (its fault is the cancellation, or why it failed anyway).

    Raises:
        TimeoutError: it had not ended within ``timeout``.
    """
    progress.at(VCenterStep.CANCELLING, task._moId, tasks.CLONE)
    tasks.cancel(task)
    with contextlib.suppress(vmodl.MethodFault):
        wait_for_task(si, task, timeout=timeout, on_wake=progress, result=False)


def earlier_task(method: str, earlier: VCenterProgress | None) -> str | None:
    """The task of ``method`` an earlier attempt's progress (its last heartbeat's,
    or its part of a batch's) named."""
    if earlier is None or earlier.task is None:
        return None
    if earlier.step not in (VCenterStep.TASK, VCenterStep.CANCELLING):
        return None
    if earlier.method not in (None, method):  # None: an older worker's clone heartbeat
        return None
    return earlier.task
