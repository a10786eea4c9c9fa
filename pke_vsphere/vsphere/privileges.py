"""The vCenter privileges pke-vsphere's account needs, where it needs them, and
the check preflight runs so that a missing one is named before anything exists
(rather than surfacing as NoPermission at a clone or a power-on).

The README's "Minimal vCenter role" lists the same privileges.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pke_vsphere.vsphere import properties
from pke_vsphere.vsphere.inventory import Placement

# Where -> privileges on that object (a role granted there, or inherited from above).
REQUIRED: Mapping[str, tuple[str, ...]] = {
    "datacenter": ("System.View", "System.Read"),
    "template": ("VirtualMachine.Provisioning.Clone", "VirtualMachine.Provisioning.DeployTemplate"),
    "folder": (
        # Cloned VMs inherit the folder's permissions: everything done to them.
        "VirtualMachine.Inventory.CreateFromExisting",
        "VirtualMachine.Inventory.Delete",
        "VirtualMachine.Config.CPUCount",
        "VirtualMachine.Config.Memory",
        "VirtualMachine.Config.AdvancedConfig",
        "VirtualMachine.Config.EditDevice",
        "VirtualMachine.Interact.PowerOn",
        "VirtualMachine.Interact.PowerOff",
    ),
    "resource pool": ("Resource.AssignVMToPool",),
    "datastore": ("Datastore.AllocateSpace",),
    "datastore cluster": ("Datastore.AllocateSpace",),
    "network": ("Network.Assign",),
    "vCenter": ("Global.CancelTask",),  # a clone past its deadline is cancelled
}

# The spec field that names each object, for the error message.
FIELDS: Mapping[str, str] = {
    "datacenter": "vsphere.datacenter",
    "template": "vsphere.template",
    "folder": "vsphere.folder",
    "resource pool": "vsphere.compute_cluster/resource_pool",
    "datastore": "vsphere.datastore",
    "datastore cluster": "vsphere.datastore_cluster",
    "network": "vsphere.network",
    "vCenter": "the vCenter root",
}


def _objects(si: Any, placement: Placement) -> dict[str, Any]:
    found = {
        "datacenter": placement.datacenter,
        "template": placement.template,
        "folder": placement.folder,
        "resource pool": placement.pool,
        "datastore": placement.datastore,
        "datastore cluster": placement.datastore_cluster,
        "network": placement.network,
        "vCenter": si.content.rootFolder,
    }
    return {where: obj for where, obj in found.items() if obj is not None}


def missing(si: Any, placement: Placement) -> list[str]:
    """One line per object on which the session's user lacks a privilege, naming them."""
    objects = _objects(si, placement)
    wanted = sorted({p for where in objects for p in REQUIRED[where]})
    session = properties.read(si, si.content.sessionManager, ["currentSession"]).get("currentSession")
    if session is None:
        return ["the vCenter session has no current user to check privileges for"]
    answers = si.content.authorizationManager.HasPrivilegeOnEntities(
        entity=list(objects.values()), sessionId=session.key, privId=wanted
    )
    granted = {
        answer.entity._moId: {p.privId for p in answer.privAvailability or [] if p.isGranted}
        for answer in answers or []
    }
    problems = []
    for where, obj in objects.items():
        lacking = [p for p in REQUIRED[where] if p not in granted.get(obj._moId, set())]
        if lacking:
            problems.append(
                f"{FIELDS[where]}: the vCenter account lacks {', '.join(lacking)} on the {where} "
                "(see the README's minimal vCenter role)"
            )
    return problems
