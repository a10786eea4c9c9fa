"""Waiting on vCenter without polling: ``WaitForUpdatesEx`` with a short maximum
wait so the caller can heartbeat between updates. Waits on tasks and VM
addresses go through the session's one shared collector (vsphere/watcher.py);
others (and callers with a bare ServiceInstance, like the simulator's set-up)
get a private PropertyCollector and filter, always destroyed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

from pyVmomi import vim, vmodl

from pke_vsphere.vsphere import properties, watcher
from pke_vsphere.vsphere.errors import TransientError

T = TypeVar("T")
POLL_SECONDS = 5


def wait_for_properties(
    si: Any,
    obj: Any,
    paths: Sequence[str],
    done: Callable[[dict[str, Any]], T | None],
    *,
    timeout: float,
    on_wake: Callable[[], None] = lambda: None,
    what: str = "update",
) -> T:
    """Wait until ``done(properties)`` returns something other than None, and return it.
    Through the session's shared collector (vsphere/watcher.py) when it watches
    these properties; else through a private one.

    Raises:
        TimeoutError: ``timeout`` seconds passed first.
    """
    shared = getattr(si, "watcher", None)
    if shared is not None and watcher.watches(obj, paths):
        answer: T = shared.wait(obj, done, timeout=timeout, on_wake=on_wake, what=what)
        return answer
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=obj, skip=False)],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(obj), pathSet=list(paths))],
    )
    deadline = time.monotonic() + timeout
    state: dict[str, Any] = {}
    collector = _Collector(si, spec)
    version = ""
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {what} within {timeout:.0f}s")
            options = vmodl.query.PropertyCollector.WaitOptions(
                maxWaitSeconds=max(1, min(POLL_SECONDS, int(remaining)))
            )
            try:
                update = collector.pc.WaitForUpdatesEx(version, options)
            except vmodl.fault.ManagedObjectNotFound as exc:
                if getattr(exc.obj, "_moId", None) == getattr(obj, "_moId", None):
                    raise
                # The collector belonged to a session that expired: the new session
                # gets a new one, whose first update is the whole state again.
                collector = _Collector(si, spec)
                version = ""
                continue
            on_wake()
            if update is None:
                continue
            version = update.version
            for fs in update.filterSet or []:
                for oc in fs.objectSet or []:
                    for change in oc.changeSet or []:
                        state[change.name] = change.val if change.op != "remove" else None
            result = done(state)
            if result is not None:
                return result
    finally:
        collector.destroy()


class _Collector:
    """A private PropertyCollector and its one filter."""

    def __init__(self, si: Any, spec: Any) -> None:
        self.pc = si.content.propertyCollector.CreatePropertyCollector()
        self.filter = self.pc.CreateFilter(spec, partialUpdates=False)

    def destroy(self) -> None:
        try:
            self.filter.Destroy()
            self.pc.Destroy()
        except Exception:  # noqa: S110 - the session may already be gone; nothing to clean then
            pass


def wait_for_task(
    si: Any,
    task: Any,
    *,
    timeout: float,
    on_wake: Callable[[], None] = lambda: None,
    result: bool = True,
) -> Any:
    """Wait for a vCenter task and return its result (``result=False``: None, for
    tasks whose result nobody reads); raise its fault if it failed.

    Through the session's shared collector only the task's state is watched, and its
    result (or fault) is read once it ended: every property in the shared filter is
    parsed on every change of every task, and the parsing is the worker's busiest
    work in a delete (two tasks per VM, each reported when it enters the filter and
    when it ends)."""
    shared = getattr(si, "watcher", None)
    if shared is not None and watcher.watches(task, [TASK_STATE]):
        state = shared.wait(
            task, lambda props: _ended(props.get(TASK_STATE)), timeout=timeout, on_wake=on_wake, what=WHAT
        )
        if state == vim.TaskInfo.State.success:
            return properties.read(si, task, [TASK_RESULT]).get(TASK_RESULT) if result else None
        _raise(properties.read(si, task, [TASK_ERROR]).get(TASK_ERROR))

    def finished(props: dict[str, Any]) -> tuple[str, Any] | None:
        state = props.get(TASK_STATE)
        if state == vim.TaskInfo.State.success:
            return ("ok", props.get(TASK_RESULT))
        if state == vim.TaskInfo.State.error:
            return ("error", props.get(TASK_ERROR))
        return None

    outcome, value = wait_for_properties(
        si, task, [TASK_STATE, TASK_RESULT, TASK_ERROR], finished, timeout=timeout, on_wake=on_wake, what=WHAT
    )
    if outcome == "error":
        _raise(value)
    return value if result else None


TASK_STATE, TASK_RESULT, TASK_ERROR = "info.state", "info.result", "info.error"
WHAT = "task completion"


def _ended(state: Any) -> Any | None:
    return state if state in (vim.TaskInfo.State.success, vim.TaskInfo.State.error) else None


def _raise(fault: Any) -> NoReturn:
    if isinstance(fault, BaseException):
        raise fault
    raise TransientError(f"vCenter task failed: {fault or 'vCenter no longer says why'}")
