"""Find the objects a cluster spec names: datacenter, template, folder,
resource pool, datastore or datastore cluster, and network. Every missing
object is reported at once, with its full inventory path."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyVmomi import vim

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
