"""Find the objects a cluster spec names: datacenter, template, folder,
resource pool, datastore or datastore cluster, and network. Every missing
object is reported at once, with its full inventory path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

from pke_vsphere.contracts.messages import PlacementRefs
from pke_vsphere.contracts.spec import VSpherePlacement
from pke_vsphere.vsphere import properties
from pke_vsphere.vsphere.errors import PermanentError


@dataclass(frozen=True)
class Placement:
    """The resolved managed objects of a :class:`VSpherePlacement`."""

    datacenter: Any
    template: Any
    folder: Any
    pool: Any
    datastore: Any | None
    datastore_cluster: Any | None
    network: Any | None


def find_path(si: Any, path: str) -> Any | None:
    return si.content.searchIndex.FindByInventoryPath(path)


def resolve(si: Any, spec: VSpherePlacement) -> Placement:
    """Look up every object; raise one PermanentError listing all that are missing."""
    problems: list[str] = []
    dc_path = spec.datacenter.strip("/")
    datacenter = find_path(si, dc_path)
    if not isinstance(datacenter, vim.Datacenter):
        raise PermanentError(f"vsphere.datacenter: no datacenter at {dc_path!r}")

    def lookup(field: str, path: str, kind: type | tuple[type, ...]) -> Any | None:
        full = f"{dc_path}/{path.strip('/')}"
        obj = find_path(si, full)
        if obj is None:
            problems.append(f"vsphere.{field}: nothing at {full!r}")
            return None
        if not isinstance(obj, kind):
            problems.append(f"vsphere.{field}: {full!r} is a {type(obj).__name__}, not what is needed")
            return None
        return obj

    template = lookup("template", f"vm/{spec.template}", vim.VirtualMachine)
    folder = lookup("folder", f"vm/{spec.folder}", vim.Folder)
    pool = None
    if spec.compute_cluster is not None:
        cluster = lookup("compute_cluster", f"host/{spec.compute_cluster}", vim.ComputeResource)
        if cluster is not None:
            pool = properties.read(si, cluster, ["resourcePool"]).get("resourcePool")
    else:
        pool = lookup("resource_pool", f"host/{spec.resource_pool}", vim.ResourcePool)
    datastore = datastore_cluster = network = None
    if spec.datastore is not None:
        datastore = lookup("datastore", f"datastore/{spec.datastore}", vim.Datastore)
    else:
        datastore_cluster = lookup("datastore_cluster", f"datastore/{spec.datastore_cluster}", vim.StoragePod)
    if spec.network is not None:
        network = lookup("network", f"network/{spec.network}", vim.Network)
    if template is not None:
        is_template = properties.read(si, template, ["config.template"]).get("config.template")
        if not is_template:
            problems.append(f"vsphere.template: {spec.template!r} is a VM, not a template")
    if problems:
        raise PermanentError("; ".join(problems))
    return Placement(datacenter, template, folder, pool, datastore, datastore_cluster, network)


def refs(si: Any, placement: Placement) -> PlacementRefs:
    """The references of a resolved placement, with what a clone needs of the
    template (one read) and of the network (one or two)."""
    template = properties.read(
        si, placement.template, ["config.hardware.numCoresPerSocket", "config.hardware.device"]
    )
    devices = template.get("config.hardware.device") or []
    nic = next((d for d in devices if isinstance(d, vim.vm.device.VirtualEthernetCard)), None)
    found = PlacementRefs(
        datacenter=placement.datacenter._moId,
        template=placement.template._moId,
        folder=placement.folder._moId,
        pool=placement.pool._moId,
        datastore=placement.datastore._moId if placement.datastore is not None else None,
        datastore_cluster=(
            placement.datastore_cluster._moId if placement.datastore_cluster is not None else None
        ),
        template_cores=template.get("config.hardware.numCoresPerSocket"),
        nic_key=nic.key if nic is not None else None,
        nic_type=type(nic).__name__ if nic is not None else None,
        nic_label=nic.deviceInfo.label if nic is not None and nic.deviceInfo else None,
    )
    network = placement.network
    if network is None:
        return found
    if isinstance(network, vim.dvs.DistributedVirtualPortgroup):
        group = properties.read(si, network, ["key", "config.distributedVirtualSwitch"])
        switch = properties.read(si, group["config.distributedVirtualSwitch"], ["uuid"])
        return found.model_copy(
            update={
                "network": network._moId,
                "network_type": "DistributedVirtualPortgroup",
                "portgroup_key": group["key"],
                "switch_uuid": switch["uuid"],
            }
        )
    name = properties.read(si, network, ["name"])["name"]
    return found.model_copy(
        update={"network": network._moId, "network_type": "Network", "network_name": name}
    )


def from_refs(si: Any, refs: PlacementRefs) -> Placement:
    """The placement's objects by reference, without a call to vCenter."""

    def obj(kind: Any, ref: str | None) -> Any | None:
        return kind(ref, si._stub) if ref is not None else None

    network_kind = (
        vim.dvs.DistributedVirtualPortgroup
        if refs.network_type == "DistributedVirtualPortgroup"
        else vim.Network
    )
    return Placement(
        datacenter=obj(vim.Datacenter, refs.datacenter),
        template=obj(vim.VirtualMachine, refs.template),
        folder=obj(vim.Folder, refs.folder),
        pool=obj(vim.ResourcePool, refs.pool),
        datastore=obj(vim.Datastore, refs.datastore),
        datastore_cluster=obj(vim.StoragePod, refs.datastore_cluster),
        network=obj(network_kind, refs.network),
    )
