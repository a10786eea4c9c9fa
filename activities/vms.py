"""VM activities: the only place where a cluster's VMs are cloned, configured,
powered on and watched for an address.

A node's identity (name and instance UUID) is recorded in workflow history
before ``ensure_vm`` runs, so a retry after a worker crash finds the VM the
first attempt made instead of cloning a second one.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pyVmomi import vim
from temporalio import activity
from temporalio.exceptions import ApplicationError

from bootstrap import cloudinit, guestinfo
from models.messages import (
    ClusterVm,
    ConfigureVmInput,
    DestroyVmInput,
    DestroyVmResult,
    EnsureVmInput,
    EnsureVmResult,
    FindClusterVmsInput,
    FindClusterVmsResult,
    PowerOnInput,
    PowerOnResult,
    WaitForIpInput,
    WaitForIpResult,
)
from pki.node_tokens import NodeTokenSigner
from runtime import crashpoints
from vsphere import inventory, properties, vms
from vsphere.errors import PermanentError, as_activity_errors
from vsphere.session import VCenterSession
from vsphere.waits import wait_for_task

log = structlog.get_logger(__name__)


def _heartbeat(*details: Any) -> None:
    activity.heartbeat(*details)


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
    ) -> None:
        self._session = session
        self._signer = signer
        self._node_api_url = node_api_url
        self._node_token_ttl = node_token_ttl
        self._node_api_ca_pem = node_api_ca_pem
        self._task_slots = threading.BoundedSemaphore(max_concurrent_tasks)

    @property
    def session(self) -> VCenterSession:
        return self._session

    def _run_task(self, si: Any, start: Any, timeout: float, name: str) -> Any:
        """Start a vCenter task under the concurrency cap and wait for it."""
        with self._task_slots:
            task = start()
            _heartbeat({"task": task._moId})
            crashpoints.reach(f"{name}.started")
            return wait_for_task(si, task, timeout=timeout, on_wake=_heartbeat)

    @activity.defn(name="ensure_vm")
    def ensure_vm(self, input: EnsureVmInput) -> EnsureVmResult:
        """Find the node's VM by its instance UUID, or clone it from the template."""
        node = input.identity
        logger = log.bind(cluster=node.cluster, node=node.name, instance_uuid=node.instance_uuid)
        timeout = activity.info().start_to_close_timeout or timedelta(minutes=15)

        def run(si: Any) -> EnsureVmResult:
            placement = inventory.resolve(si, input.placement)
            existing = vms.find_by_instance_uuid(si, placement.datacenter, node.instance_uuid)
            if existing is None:
                existing = self._resume_clone(si, activity.info().heartbeat_details)
            if existing is not None:
                logger.info("vm.found", vm=existing._moId)
                return EnsureVmResult(vm_ref=existing._moId, created=False)
            same_name = vms.find_in_folder(si, placement.folder, node.name)
            if same_name is not None:
                raise PermanentError(
                    f"a VM named {node.name!r} already exists in folder {input.placement.folder!r} "
                    "and is not this node (its instance UUID differs); remove or rename it"
                )
            token = self._signer.sign(node, self._node_token_ttl)
            userdata = cloudinit.render(
                node,
                input.bootstrap,
                node_api_url=self._node_api_url,
                node_token=token,
                node_api_ca_pem=self._node_api_ca_pem,
            )
            logger.info("vm.cloning", template=input.placement.template, folder=input.placement.folder)
            # A clone, once started, is waited for even if the activity is cancelled
            # (a cluster deleted mid-create): the VM must exist before the sweep.
            with activity.shield_thread_cancel_exception():
                vm = self._run_task(
                    si,
                    lambda: vms.start_clone(
                        si,
                        placement,
                        name=node.name,
                        instance_uuid=node.instance_uuid,
                        cpus=input.cpus,
                        memory_mb=input.memory_mb,
                        extra_config=guestinfo.extra_config(node, userdata),
                    ),
                    timeout.total_seconds(),
                    "clone",
                )
            crashpoints.reach("clone.finished")
            logger.info("vm.cloned", vm=vm._moId)
            return EnsureVmResult(vm_ref=vm._moId, created=True)

        with as_activity_errors(f"ensure VM {node.name}"):
            return self._session.run(run)

    @staticmethod
    def _resume_clone(si: Any, details: Any) -> Any | None:
        """If an earlier attempt recorded a clone task, wait for it instead of cloning again."""
        if not details or not isinstance(details[0], dict) or "task" not in details[0]:
            return None
        task = vim.Task(details[0]["task"], si._stub)
        try:
            return wait_for_task(si, task, timeout=600, on_wake=_heartbeat)
        except Exception as exc:
            log.info("vm.earlier_clone_failed", task=details[0]["task"], error=str(exc))
            return None

    @activity.defn(name="configure_vm")
    def configure_vm(self, input: ConfigureVmInput) -> None:
        """Make CPUs and memory match the pool (before power-on)."""

        def run(si: Any) -> None:
            vm = vms.vm_by_ref(si, input.vm_ref)
            current = vms.facts(si, vm)
            if current.cpus == input.cpus and current.memory_mb == input.memory_mb:
                return
            if current.powered_on:
                raise PermanentError(
                    f"VM {input.name} is on with {current.cpus} CPUs/{current.memory_mb} MiB; "
                    f"power it off to apply {input.cpus} CPUs/{input.memory_mb} MiB"
                )
            timeout = (activity.info().start_to_close_timeout or timedelta(minutes=5)).total_seconds()
            self._run_task(
                si,
                lambda: vms.start_reconfigure(vm, cpus=input.cpus, memory_mb=input.memory_mb),
                timeout,
                "reconfigure",
            )
            crashpoints.reach("reconfigure.finished")
            log.info(
                "vm.configured",
                node=input.name,
                vm=input.vm_ref,
                cpus=input.cpus,
                memory_mb=input.memory_mb,
            )

        with as_activity_errors(f"configure VM {input.name}"):
            self._session.run(run)

    @activity.defn(name="power_on_vm")
    def power_on_vm(self, input: PowerOnInput) -> PowerOnResult:
        def run(si: Any) -> PowerOnResult:
            vm = vms.vm_by_ref(si, input.vm_ref)
            if vms.facts(si, vm).powered_on:
                return PowerOnResult(powered_on_at=datetime.now(UTC), already_on=True)
            timeout = (activity.info().start_to_close_timeout or timedelta(minutes=5)).total_seconds()
            self._run_task(si, vm.PowerOnVM_Task, timeout, "power_on")
            log.info("vm.powered_on", node=input.name, vm=input.vm_ref)
            return PowerOnResult(powered_on_at=datetime.now(UTC), already_on=False)

        with as_activity_errors(f"power on VM {input.name}"):
            return self._session.run(run)

    @activity.defn(name="wait_for_vm_ip")
    def wait_for_vm_ip(self, input: WaitForIpInput) -> WaitForIpResult:
        """Wait for VMware Tools to report a usable IPv4 address."""

        def run(si: Any) -> WaitForIpResult:
            vm = vms.vm_by_ref(si, input.vm_ref)
            ip = vms.wait_for_ip(si, vm, timeout=input.timeout_seconds, on_wake=_heartbeat)
            crashpoints.reach("ip.reported")
            log.info("vm.ip_reported", node=input.name, vm=input.vm_ref, ip=ip)
            return WaitForIpResult(ip=ip)

        with as_activity_errors(f"wait for the IP of VM {input.name}"):
            try:
                return self._session.run(run)
            except TimeoutError as exc:
                raise ApplicationError(
                    f"VMware Tools reported no IP address for {input.name} within "
                    f"{input.timeout_seconds}s: check that the template runs open-vm-tools "
                    "and that the network hands out addresses",
                    type="IpTimeout",
                    non_retryable=True,
                ) from exc

    @activity.defn(name="find_cluster_vms")
    def find_cluster_vms(self, input: FindClusterVmsInput) -> FindClusterVmsResult:
        """Every VM in the datacenter marked as belonging to the cluster."""

        def run(si: Any) -> FindClusterVmsResult:
            root = None
            if input.datacenter is not None:
                root = inventory.find_path(si, input.datacenter)
                if root is None:
                    raise PermanentError(f"no datacenter {input.datacenter!r}")
            markers = {
                guestinfo.MARKER_MANAGED_BY: guestinfo.MANAGED_BY,
                guestinfo.MARKER_CLUSTER: input.cluster,
            }
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
                for vm, props in vms.marked_vms(si, root, markers)
            ]
            return FindClusterVmsResult(vms=found)

        with as_activity_errors(f"find the VMs of cluster {input.cluster}"):
            return self._session.run(run)

    @activity.defn(name="destroy_vm")
    def destroy_vm(self, input: DestroyVmInput) -> DestroyVmResult:
        """Power off and destroy a VM, found by reference or instance UUID; a VM that
        is already gone is success. Never touches a VM without the cluster's marker."""
        timeout = (activity.info().start_to_close_timeout or timedelta(minutes=10)).total_seconds()

        def run(si: Any) -> DestroyVmResult:
            vm = None
            if input.instance_uuid:
                datacenter = inventory.find_path(si, input.datacenter) if input.datacenter else None
                vm = vms.find_by_instance_uuid(si, datacenter, input.instance_uuid)
            if vm is None and input.vm_ref:
                vm = vms.vm_by_ref(si, input.vm_ref)
            props = properties.read(si, vm, ["config.extraConfig", "runtime.powerState"]) if vm else {}
            if vm is None or not props:
                return DestroyVmResult(destroyed=False)
            marker = properties.extra_config(props.get("config.extraConfig")).get(guestinfo.MARKER_CLUSTER)
            if marker != input.cluster:
                raise PermanentError(
                    f"refusing to destroy {input.name} ({vm._moId}): it is not marked as part of "
                    f"cluster {input.cluster!r}"
                )
            with activity.shield_thread_cancel_exception():
                if props.get("runtime.powerState") == vim.VirtualMachine.PowerState.poweredOn:
                    self._run_task(si, lambda: vms.start_power_off(vm), timeout, "power_off")
                self._run_task(si, lambda: vms.start_destroy(vm), timeout, "destroy")
            crashpoints.reach("destroy.finished")
            log.info("vm.destroyed", cluster=input.cluster, node=input.name, vm=vm._moId)
            return DestroyVmResult(destroyed=True)

        with as_activity_errors(f"destroy VM {input.name}"):
            return self._session.run(run)
