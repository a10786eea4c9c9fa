"""vCenter tasks beyond waiting for one: finding a node's clone that an earlier
attempt started (when its task id never reached Temporal), and cancelling a
task that outlived its step.

vCenter posts a ``VmBeingClonedEvent`` (destination name and folder) the moment
a clone starts, in the event chain of the clone's task; the task itself is in
the TaskManager's recent tasks while it runs and for ten minutes after. Both
are vCenter's own records, so they survive a crash of the worker that started
the clone.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Any

from pyVmomi import vim, vmodl

from pke_vsphere.vsphere import properties
from pke_vsphere.vsphere.inventory import Placement

CLONE = "CloneVM_Task"
MAX_EVENTS = 1000  # what vCenter returns at most for one query


def task_by_id(si: Any, task_id: str) -> Any:
    return vim.Task(task_id, si._stub)


def find_clone(si: Any, placement: Placement, name: str, since: datetime) -> Any | None:
    """The newest clone task to ``name`` in the placement's folder started since
    ``since`` that vCenter still lists, or None."""
    spec = vim.event.EventFilterSpec(
        eventTypeId=["VmBeingClonedEvent"],
        entity=vim.event.EventFilterSpec.ByEntity(entity=placement.template, recursion="self"),
        time=vim.event.EventFilterSpec.ByTime(beginTime=since),
        maxCount=MAX_EVENTS,  # the latest matching ones (the simulator's default is 10)
    )
    chains = {
        event.chainId
        for event in si.content.eventManager.QueryEvents(spec) or []
        if event.destName == name
        and event.destFolder is not None
        and event.destFolder.folder._moId == placement.folder._moId
        and event.createdTime >= since
    }
    if not chains:
        return None
    recent = properties.read(si, si.content.taskManager, ["recentTask"]).get("recentTask") or []
    infos = properties.read_many(si, recent, ["info.eventChainId", "info.queueTime"])
    matching = [
        (props["info.queueTime"], task._moId)
        for task in recent
        if (props := infos.get(task._moId)) and props.get("info.eventChainId") in chains
    ]
    return task_by_id(si, max(matching)[1]) if matching else None


def cancel(task: Any) -> None:
    """Ask vCenter to cancel the task; one that has already ended is left as it is."""
    ended = (vim.fault.InvalidState, vmodl.fault.NotSupported, vmodl.fault.ManagedObjectNotFound)
    with contextlib.suppress(*ended):
        task.CancelTask()
