"""VM operations: find a node's VM by its instance UUID, clone it from the
template, set its hardware, power it on, and wait for VMware Tools to report
its address. Each operation is safe to repeat."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyVmomi import VmomiSupport, vim

from pke_vsphere.contracts.messages import PlacementRefs
from pke_vsphere.vsphere import properties
from pke_vsphere.vsphere.errors import PermanentError
from pke_vsphere.vsphere.inventory import Placement
from pke_vsphere.vsphere.waits import wait_for_properties

VM_FACTS = [
    "name",
    "config.instanceUuid",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.hardware.numCoresPerSocket",
    "runtime.powerState",
    "guest.ipAddress",
]


@dataclass(frozen=True)
class VmFacts:
    ref: str
    name: str
    instance_uuid: str | None
    cpus: int | None
    cores_per_socket: int | None
    memory_mb: int | None
    power_state: str | None

    @property
    def powered_on(self) -> bool:
        return bool(self.power_state == vim.VirtualMachine.PowerState.poweredOn)


def vm_by_ref(si: Any, ref: str) -> Any:
    return vim.VirtualMachine(ref, si._stub)


def facts(si: Any, vm: Any) -> VmFacts:
    props = properties.read(si, vm, VM_FACTS)
    if not props:
        raise PermanentError(f"VM {vm._moId} no longer exists")
    return VmFacts(
        ref=vm._moId,
        name=props.get("name", ""),
        instance_uuid=props.get("config.instanceUuid"),
        cpus=props.get("config.hardware.numCPU"),
        cores_per_socket=props.get("config.hardware.numCoresPerSocket"),
        memory_mb=props.get("config.hardware.memoryMB"),
        power_state=str(props.get("runtime.powerState")),
    )


def find_by_instance_uuid(si: Any, datacenter: Any, instance_uuid: str) -> Any | None:
    return si.content.searchIndex.FindByUuid(
        datacenter=datacenter, uuid=instance_uuid, vmSearch=True, instanceUuid=True
    )


def find_in_folder(si: Any, folder: Any, name: str) -> Any | None:
    return si.content.searchIndex.FindChild(folder, name)


def network_backing(refs: PlacementRefs, network: Any) -> Any:
    """A NIC's backing for the spec's standard or distributed port group."""
    if refs.network_type == "DistributedVirtualPortgroup":
        return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
            port=vim.dvs.PortConnection(portgroupKey=refs.portgroup_key, switchUuid=refs.switch_uuid)
        )
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=refs.network_name, network=network)


def _nic_change(refs: PlacementRefs, network: Any) -> list[Any]:
    """Connect the clone's first NIC (the template's, same key and type) to the network."""
    if refs.nic_key is None or refs.nic_type is None:
        raise PermanentError("vsphere.network: the template has no network adapter to connect")
    # The device as the template has it, as far as an edit needs: its key, type and
    # label; what is not set stays as the template has it.
    nic = VmomiSupport.GetVmodlType(refs.nic_type)(
        key=refs.nic_key, deviceInfo=vim.Description(label=refs.nic_label or "", summary="")
    )
    nic.backing = network_backing(refs, network)
    nic.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
        startConnected=True, allowGuestControl=True, connected=True
    )
    return [vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic)]


def _recommend_datastore(si: Any, placement: Placement, clone_spec: Any, name: str) -> Any:
    """Ask Storage DRS which datastore of the datastore cluster to use."""
    pod = placement.datastore_cluster
    storage_spec = vim.storageDrs.StoragePlacementSpec(
        type="clone",
        cloneName=name,
        folder=placement.folder,
        vm=placement.template,
        cloneSpec=clone_spec,
        podSelectionSpec=vim.storageDrs.PodSelectionSpec(
            storagePod=pod,
            initialVmConfig=[vim.storageDrs.PodSelectionSpec.VmPodConfig(storagePod=pod)],
        ),
    )
    result = si.content.storageResourceManager.RecommendDatastores(storageSpec=storage_spec)
    for rec in result.recommendations or []:
        for action in rec.action or []:
            destination = getattr(action, "destination", None)
            if isinstance(destination, vim.Datastore):
                return destination
    raise PermanentError(
        "vsphere.datastore_cluster: Storage DRS recommended no datastore "
        "(is the datastore cluster full or empty?)"
    )


def cores_per_socket(cpus: int, template_cores: int | None) -> int:
    """Cores per socket for ``cpus``: the template's when ``cpus`` is a multiple of
    it, else the largest divisor they share (vCenter refuses a CPU count that is
    not a multiple of the cores per socket)."""
    return math.gcd(cpus, max(1, template_cores or 1))


def start_clone(
    si: Any,
    placement: Placement,
    refs: PlacementRefs,
    *,
    name: str,
    instance_uuid: str,
    cpus: int,
    memory_mb: int,
    extra_config: Mapping[str, str],
    power_on: bool,
) -> Any:
    """Start cloning the template (``power_on``: vCenter powers the clone on as the
    last part of the same task); returns the vCenter task."""
    config = vim.vm.ConfigSpec(
        instanceUuid=instance_uuid,
        numCPUs=cpus,
        numCoresPerSocket=cores_per_socket(cpus, refs.template_cores),
        memoryMB=memory_mb,
        extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in extra_config.items()],
    )
    location = vim.vm.RelocateSpec(pool=placement.pool)
    if placement.network is not None:
        location.deviceChange = _nic_change(refs, placement.network)
    spec = vim.vm.CloneSpec(location=location, config=config, powerOn=power_on, template=False)
    location.datastore = placement.datastore or _recommend_datastore(si, placement, spec, name)
    return placement.template.CloneVM_Task(folder=placement.folder, name=name, spec=spec)


def start_reconfigure(vm: Any, *, cpus: int, cores: int, memory_mb: int) -> Any:
    spec = vim.vm.ConfigSpec(numCPUs=cpus, numCoresPerSocket=cores, memoryMB=memory_mb)
    return vm.ReconfigVM_Task(spec=spec)


def start_set_extra_config(vm: Any, values: dict[str, str]) -> Any:
    """Set extraConfig keys of a VM (on or off: guestinfo changes reach a running guest)."""
    options = [vim.option.OptionValue(key=key, value=value) for key, value in values.items()]
    return vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(extraConfig=options))


def _usable_ip(value: str) -> bool:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return False
    return ip.version == 4 and not ip.is_link_local and not ip.is_unspecified


def pick_ip(
    guest_net: list[Any] | None,
    ip_address: str | None,
    network: str | None = None,
    nic_key: int | None = None,
) -> str | None:
    """The node's address: the usable IPv4 of the NIC on ``network`` (the spec's port
    group), or else of the NIC with device key ``nic_key`` (the VM's first). VMware
    Tools lists interfaces in the guest's order, which need not be the VM's, so
    the first one listed is never taken for the node's. Only when Tools names no
    NIC at all, the primary address. Link-local and IPv6 addresses and NICs
    VMware does not own (a container bridge reports deviceConfigId -1) are
    ignored."""
    nics = [n for n in guest_net or [] if getattr(n, "deviceConfigId", 0) is None or n.deviceConfigId >= 0]
    if network is not None:
        nics = [n for n in nics if getattr(n, "network", None) == network]
    elif nic_key is not None:
        nics = [n for n in nics if n.deviceConfigId == nic_key]
    for nic in nics:
        for addr in nic.ipAddress or []:
            if _usable_ip(addr):
                return str(addr)
    if not guest_net and ip_address and _usable_ip(ip_address):
        return ip_address
    return None


def portgroup_name(path: str | None) -> str | None:
    """The port group's name (what VMware Tools reports) from the spec's inventory path."""
    return path.strip("/").rsplit("/", 1)[-1] if path else None


def first_nic_key(si: Any, vm: Any) -> int | None:
    """The device key of the VM's first network adapter, in its device order."""
    devices = properties.read(si, vm, ["config.hardware.device"]).get("config.hardware.device") or []
    return next((d.key for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)), None)


def wait_for_ip(
    si: Any,
    vm: Any,
    *,
    timeout: float,
    on_wake: Callable[[], None],
    network: str | None = None,
    nic_key: int | None = None,
) -> str:
    """The node's address (see ``pick_ip``): on ``network``, or without one on the VM's
    first NIC (``nic_key``, the template's; None: read from the VM)."""
    if network is None and nic_key is None:
        nic_key = first_nic_key(si, vm)
    return wait_for_properties(
        si, vm, list(IP_PATHS), ip_answer(network, nic_key), timeout=timeout, on_wake=on_wake, what=IP_WHAT
    )


IP_PATHS = ("guest.net", "guest.ipAddress")
IP_WHAT = "IP address from VMware Tools"


def ip_answer(network: str | None, nic_key: int | None) -> Callable[[dict[str, Any]], str | None]:
    """What a wait on :data:`IP_PATHS` is done with: the node's address (see ``pick_ip``)."""
    return lambda p: pick_ip(p.get("guest.net"), p.get("guest.ipAddress"), network, nic_key)


def marked_vms(
    si: Any, datacenter: Any | None, markers: Mapping[str, str], also: Sequence[str] = ()
) -> list[tuple[Any, dict[str, Any]]]:
    """Every VM in the datacenter (None: in vCenter) whose extraConfig carries all of
    ``markers``, with those and the ``also`` entries in ``props["extra"]``. Found by
    marker, not by name or from memory, so VMs a crashed run left behind are found
    too; only the marker entries are read, not each VM's whole extraConfig."""
    vm_folder = properties.read(si, datacenter, ["vmFolder"])["vmFolder"] if datacenter else None
    keys = properties.extra_config_paths(dict.fromkeys([*markers, *also]))
    found = []
    for vm, props in properties.find_all(
        si,
        vim.VirtualMachine,
        ["name", "config.instanceUuid", "runtime.powerState", *keys],
        root=vm_folder,
    ):
        extra = properties.extra_config_entries(props)
        if all(extra.get(k) == v for k, v in markers.items()):
            props["extra"] = extra
            found.append((vm, props))
    return found


def start_power_off(vm: Any) -> Any:
    return vm.PowerOffVM_Task()


def start_destroy(vm: Any) -> Any:
    return vm.Destroy_Task()
