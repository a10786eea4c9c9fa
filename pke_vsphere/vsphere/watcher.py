"""Where the worker waits on vCenter: one PropertyCollector per session for every
task and VM anyone waits on.

A private collector and filter per wait cost five requests of their own
(create the collector and the filter, wait, destroy both) and a session object
each. Here the session keeps one collector with one filter on a ``ListView``;
a wait adds its object to the view and removes it when done, and one thread
runs the ``WaitForUpdatesEx`` loop for all of them, in rounds of at most
``POLL_SECONDS``. Adds and removes that pile up during a round go to vCenter in
one ``ModifyListView`` before the next. (Interrupting a round for a new wait
with ``CancelWaitForUpdates`` lost updates in the simulator: objects it had
just entered into the filter were never reported. A short round is simpler and
costs one request a second per session, whatever the number of waits.) A wait
that has had no answer for ``REREAD_SECONDS`` reads its object once itself.

Only the properties in ``WATCHED`` are watched; :func:`waits.wait_for_properties`
sends any other wait to a private collector. The view and the collector belong
to the login session: when vCenter no longer knows them (the session expired
and the connection logged in again) the loop makes new ones and every wait
starts over from the objects' current state.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pyVmomi import vim, vmodl

from pke_vsphere.vsphere import properties

log = structlog.get_logger(__name__)

# Properties the shared filter carries, by managed object type.
# A task's state only: its result or fault is read once it ended (waits.py).
WATCHED: dict[type, tuple[str, ...]] = {
    vim.Task: ("info.state",),
    vim.VirtualMachine: ("guest.net", "guest.ipAddress"),
}
# The longest a round of the loop waits for changes; a new wait joins at the next.
POLL_SECONDS = 1
# How often a waiter wakes to heartbeat when nothing changes, unless its
# ``on_wake`` says otherwise with a ``wake_seconds`` attribute (an activity's
# progress does: activities/progress.py).
WAKE_SECONDS = 3.0
# A waiter without an answer reads its object's properties itself this often: an
# update the loop missed (a round lost to a connection error) costs seconds, not the step.
REREAD_SECONDS = 30.0
# Objects watched once that the collector may still report; past this many, the
# loop starts over with a new collector (a long-running worker's memory stays flat).
MAX_SEEN = 50_000


@dataclass(eq=False)
class _Waiter:
    obj: Any
    done: Callable[[dict[str, Any]], Any]
    event: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    notify: Callable[[], None] | None = None
    """Called (on the loop's thread) once ``event`` is set: a coroutine's wake-up."""

    def answer(self, result: Any = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.event.set()
        if self.notify is not None:
            self.notify()

    def outcome(self) -> Any:
        """The answer: the result, or the error raised."""
        if self.error is not None:
            raise self.error
        return self.result


def watches(obj: Any, paths: Sequence[str]) -> bool:
    """Whether a wait on ``paths`` of ``obj`` can go through the shared watcher."""
    watched = next((p for kind, p in WATCHED.items() if isinstance(obj, kind)), ())
    return bool(paths) and set(paths) <= set(watched)


class Watcher:
    """The shared collector of one vCenter session (see the module's docstring)."""

    def __init__(self, si: Any) -> None:
        self._si = si
        self._lock = threading.Condition()
        self._waiters: dict[str, set[_Waiter]] = {}
        self._objects: dict[str, Any] = {}
        self._state: dict[str, dict[str, Any]] = {}
        self._seen: set[str] = set()
        self._to_add: dict[str, Any] = {}
        self._to_remove: dict[str, Any] = {}
        self._thread: threading.Thread | None = None
        self._collector: Any = None
        self._view: Any = None
        self._closed = False
        self.rounds = 0

    # --- the waiters' side -----------------------------------------------------
    def wait(
        self,
        obj: Any,
        done: Callable[[dict[str, Any]], Any],
        *,
        timeout: float,
        on_wake: Callable[[], None],
        what: str,
    ) -> Any:
        """Block until ``done(properties)`` is not None and return it.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        waiter = _Waiter(obj, done)
        every = float(getattr(on_wake, "wake_seconds", WAKE_SECONDS))
        self._register(waiter)
        deadline = time.monotonic() + timeout
        reread = time.monotonic() + REREAD_SECONDS
        try:
            while not waiter.event.wait(min(every, max(0.0, deadline - time.monotonic()))):
                on_wake()
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"no {what} within {timeout:.0f}s")
                if time.monotonic() >= reread:  # an update missed would otherwise be waited for in vain
                    self._reread(waiter)
                    reread = time.monotonic() + REREAD_SECONDS
            on_wake()
            return waiter.outcome()
        finally:
            self._unregister(waiter)

    async def wait_async(
        self,
        obj: Any,
        done: Callable[[dict[str, Any]], Any],
        *,
        within: float,
        on_wake: Callable[[], None],
        what: str,
        in_thread: Callable[[Callable[[], None]], Awaitable[None]],
    ) -> Any:
        """:meth:`wait` (``within`` its timeout) for a coroutine: no thread waits.
        ``in_thread`` runs the calls to vCenter the wait itself makes (its first
        read, a re-read) off the loop, to their end even if the wait is cancelled.

        Raises:
            TimeoutError: ``within`` seconds passed first.
        """
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def notify() -> None:
            loop.call_soon_threadsafe(woken.set)

        waiter = _Waiter(obj, done, notify=notify)
        every = float(getattr(on_wake, "wake_seconds", WAKE_SECONDS))
        deadline = loop.time() + within
        reread = loop.time() + REREAD_SECONDS
        try:
            await in_thread(lambda: self._register(waiter))
            while not waiter.event.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), min(every, max(0.0, deadline - loop.time())))
                woken.clear()
                if waiter.event.is_set():
                    break
                on_wake()
                if loop.time() >= deadline:
                    raise TimeoutError(f"no {what} within {within:.0f}s")
                if loop.time() >= reread:
                    await in_thread(lambda: self._reread(waiter))
                    reread = loop.time() + REREAD_SECONDS
            on_wake()
            return waiter.outcome()
        finally:
            self._unregister(waiter)

    def _reread(self, waiter: _Waiter) -> None:
        """Read the waited object once (an update the loop missed would otherwise be
        waited for in vain)."""
        self._ensure_loop()
        if self._seed(waiter.obj) and waiter.event.is_set():
            log.info("vcenter.watcher_reread_answered", obj=waiter.obj._moId)

    def _register(self, waiter: _Waiter) -> None:
        key = waiter.obj._moId
        with self._lock:
            known = key in self._objects
            # An object watched before (a retry waiting again on a task) may get no
            # "enter" from the view again: the simulator keeps it in the filter.
            seed = not known and key in self._seen
            self._waiters.setdefault(key, set()).add(waiter)
            if not known:
                self._objects[key] = waiter.obj
                self._seen.add(key)
                self._to_remove.pop(key, None)
                self._to_add[key] = waiter.obj
            elif key in self._state:
                self._offer(waiter, self._state[key])
            self._ensure_loop()
            self._lock.notify_all()
        if seed:
            self._seed(waiter.obj)

    def _ensure_loop(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="vcenter-watcher", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the next wait or re-read starts a new loop
            log.warning("vcenter.watcher_stopped", error=repr(exc))
            self._restart()
            raise

    def _seed(self, obj: Any) -> bool:
        """Read the object's watched properties once, as the view's "enter" would;
        False if it is no longer watched or gone."""
        paths = next(p for kind, p in WATCHED.items() if isinstance(obj, kind))
        seen = properties.read(self._si, obj, paths)
        if not seen:  # every watched object has these set: it is gone
            self._fail(obj._moId, vmodl.fault.ManagedObjectNotFound(obj=obj))
            return False
        with self._lock:
            key = obj._moId
            if key not in self._objects:
                return False
            state = self._state[key] = {**self._state.get(key, {}), **seen}
            for waiter in list(self._waiters.get(key, ())):
                self._offer(waiter, state)
        return True

    def _unregister(self, waiter: _Waiter) -> None:
        key = waiter.obj._moId
        with self._lock:
            waiters = self._waiters.get(key, set())
            waiters.discard(waiter)
            if waiters:
                return
            self._waiters.pop(key, None)
            obj = self._objects.pop(key, None)
            self._state.pop(key, None)
            if self._to_add.pop(key, None) is None and obj is not None:
                self._to_remove[key] = obj

    @staticmethod
    def _offer(waiter: _Waiter, state: dict[str, Any]) -> None:
        if waiter.event.is_set():
            return
        try:
            result = waiter.done(state)
        except Exception as exc:  # done() raising is the waiter's answer
            waiter.answer(error=exc)
            return
        if result is not None:
            waiter.answer(result)

    # --- the loop ----------------------------------------------------------------
    def _loop(self) -> None:
        version = ""
        while True:
            with self._lock:
                while not self._closed and not self._objects and not self._to_remove:
                    if not self._lock.wait(timeout=60):
                        self._thread = None
                        self._teardown()
                        self._seen = set()
                        return
                if self._closed:  # the session logs out: it frees the collector and view
                    self._thread = None
                    return
                adds, removes = list(self._to_add.values()), list(self._to_remove.values())
                self._to_add.clear()
                self._to_remove.clear()
            if len(self._seen) > MAX_SEEN:  # a fresh collector forgets them all
                self._restart()
            try:
                if self._collector is None:
                    self._setup()
                    version = ""
                if adds or removes:
                    # vCenter answers the objects it does not know; the simulator faults.
                    for obj in self._view.ModifyListView(add=adds, remove=removes) or []:
                        self._fail(obj._moId, vmodl.fault.ManagedObjectNotFound(obj=obj))
                options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=POLL_SECONDS)
                update = self._collector.WaitForUpdatesEx(version, options)
                self.rounds += 1
            except vmodl.fault.ManagedObjectNotFound as exc:
                missing = getattr(exc.obj, "_moId", None)
                if missing in self._objects:  # a waited object is gone: its waiters learn why
                    self._fail(missing, exc)
                else:
                    log.info("vcenter.watcher_restarted", reason="the session's collector or view is gone")
                self._restart()
                continue
            except Exception as exc:  # a connection problem the retries gave up on
                log.warning("vcenter.watcher_failed", error=str(exc))
                self._restart()
                time.sleep(1)
                continue
            if update is None:
                continue
            version = update.version
            self._apply(update)

    def _fail(self, key: str, error: BaseException) -> None:
        """End every wait on ``key`` with ``error`` and stop watching it."""
        with self._lock:
            for waiter in self._waiters.get(key, ()):
                if not waiter.event.is_set():
                    waiter.answer(error=error)
            self._objects.pop(key, None)
            self._state.pop(key, None)
            self._to_add.pop(key, None)

    def _setup(self) -> None:
        """A collector with one filter over the list view of every waited object."""
        content = self._si.content
        with self._lock:
            objects = list(self._objects.values())
            self._to_add.clear()
            self._to_remove.clear()
        self._view = content.viewManager.CreateListView(obj=objects)
        collector = content.propertyCollector.CreatePropertyCollector()
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[
                vmodl.query.PropertyCollector.ObjectSpec(
                    obj=self._view,
                    skip=True,
                    selectSet=[
                        vmodl.query.PropertyCollector.TraversalSpec(
                            name="view", path="view", skip=False, type=vim.view.ListView
                        )
                    ],
                )
            ],
            propSet=[
                vmodl.query.PropertyCollector.PropertySpec(type=kind, pathSet=list(paths))
                for kind, paths in WATCHED.items()
            ],
        )
        collector.CreateFilter(spec, partialUpdates=False)
        self._collector = collector

    def _restart(self) -> None:
        """Forget the session's objects and every state seen; the next round makes
        new ones with every waited object, whose first update is its whole state."""
        self._teardown()
        with self._lock:
            self._state.clear()
            self._seen = set(self._objects)

    def _teardown(self) -> None:
        collector, view = self._collector, self._view
        self._collector = self._view = None
        for destroy in (getattr(collector, "Destroy", None), getattr(view, "DestroyView", None)):
            if destroy is None:
                continue
            try:
                destroy()
            except Exception as exc:  # the session may be gone; nothing to free then
                log.debug("vcenter.watcher_teardown_failed", error=str(exc))

    def _apply(self, update: Any) -> None:
        with self._lock:
            for filter_update in update.filterSet or []:
                for change in filter_update.objectSet or []:
                    key = change.obj._moId
                    if change.kind == "leave":
                        self._state.pop(key, None)
                        continue
                    if key not in self._objects:
                        continue  # done with (a view may keep reporting it)
                    state = self._state.setdefault(key, {})
                    for prop in change.changeSet or []:
                        state[prop.name] = prop.val if prop.op != "remove" else None
                    for waiter in list(self._waiters.get(key, ())):
                        self._offer(waiter, state)

    def watching(self) -> list[str]:
        """The references of the objects waited on now."""
        with self._lock:
            return sorted(self._objects)

    def close(self) -> None:
        """Stop the loop at the end of its round (at logout). The collector and the
        view are the session's: the logout that follows frees them with it, so
        they are not destroyed first (two more requests at shutdown, made while
        the loop's round may still be in flight)."""
        with self._lock:
            self._closed = True
            self._collector = self._view = None
            self._lock.notify_all()
