"""Read properties through the PropertyCollector: one round trip for many
properties and objects, instead of one request per attribute access (which
the Debian simulator also cannot serve for unset properties)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pyVmomi import vim, vmodl

Props = dict[str, Any]


def _collect(pc: Any, spec: Any) -> list[Any]:
    options = vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=500)
    result = pc.RetrievePropertiesEx([spec], options)
    objects: list[Any] = []
    while result is not None:
        objects.extend(result.objects)
        if not result.token:
            break
        result = pc.ContinueRetrievePropertiesEx(result.token)
    return objects


def _to_props(obj_content: Any) -> Props:
    """The object's properties. A property that could not be read for lack of a
    session or a privilege raises that fault: an expired session answers a read
    with every property missing, and the object must not be taken for deleted."""
    for missing in obj_content.missingSet or []:
        if isinstance(missing.fault, vim.fault.NoPermission):  # NotAuthenticated is one too
            raise missing.fault
    return {prop.name: prop.val for prop in (obj_content.propSet or [])}


def read(si: Any, obj: Any, paths: Sequence[str]) -> Props:
    """Properties of one object; unset properties are absent from the result."""
    return read_many(si, [obj], paths).get(obj._moId, {})


def read_many(si: Any, objs: Iterable[Any], paths: Sequence[str]) -> dict[str, Props]:
    """Properties of several objects; objects that no longer exist are left out
    (vCenter fails the whole call for one deleted object, so it is retried without it)."""
    objs = list(objs)
    while objs:
        try:
            return _read_many(si, objs, paths)
        except vmodl.fault.ManagedObjectNotFound as exc:
            gone = getattr(exc.obj, "_moId", None)
            remaining = [o for o in objs if o._moId != gone]
            if len(remaining) == len(objs):
                raise
            objs = remaining
    return {}


def _read_many(si: Any, objs: list[Any], paths: Sequence[str]) -> dict[str, Props]:
    pc = si.content.propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=o, skip=False) for o in objs],
        propSet=[
            vmodl.query.PropertyCollector.PropertySpec(type=type(o), pathSet=list(paths))
            for o in {type(o): o for o in objs}.values()
        ],
        reportMissingObjectsInResults=False,
    )
    return {oc.obj._moId: _to_props(oc) for oc in _collect(pc, spec)}


def find_all(si: Any, kind: type, paths: Sequence[str], root: Any = None) -> list[tuple[Any, Props]]:
    """Every object of ``kind`` under ``root`` (default: the whole inventory), with properties."""
    content = si.content
    view = content.viewManager.CreateContainerView(root or content.rootFolder, [kind], True)
    try:
        traversal = vmodl.query.PropertyCollector.TraversalSpec(
            name="view", path="view", skip=False, type=vim.view.ContainerView
        )
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[traversal])],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=list(paths))],
        )
        return [(oc.obj, _to_props(oc)) for oc in _collect(content.propertyCollector, spec)]
    finally:
        view.DestroyView()


def extra_config(values: Iterable[Any] | None) -> dict[str, str]:
    """extraConfig as a dict; the last value of a key wins (the simulator appends)."""
    return {opt.key: str(opt.value) for opt in values or []}


EXTRA_CONFIG = "config.extraConfig"


def extra_config_paths(keys: Iterable[str]) -> list[str]:
    """Paths that read single extraConfig entries (``config.extraConfig["key"]``), so a
    read of a VM's markers does not carry its whole guestinfo (its cloud-config among
    it), which a sweep would otherwise fetch and parse for every VM."""
    return [f'{EXTRA_CONFIG}["{key}"]' for key in keys]


def extra_config_entries(props: Props) -> dict[str, str]:
    """The entries read with :func:`extra_config_paths`, as a dict; a key the VM does
    not have is left out of the answer by vCenter, and so out of this."""
    prefix = f"{EXTRA_CONFIG}["
    return {
        opt.key: str(opt.value)
        for path, opt in props.items()
        if path.startswith(prefix) and opt is not None and getattr(opt, "key", None) is not None
    }
