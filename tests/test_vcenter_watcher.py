"""The session's shared property collector (vsphere/watcher.py) against the real
simulator, its requests counted by a proxy in front of it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from pydantic import SecretStr
from pyVmomi import vim, vmodl

from pke_vsphere.config import VCenterSettings
from pke_vsphere.vsphere import properties
from pke_vsphere.vsphere.session import VCenterSession
from pke_vsphere.vsphere.waits import wait_for_task
from sim import vcenter
from sim.faultproxy import FaultProxy, FaultRates
from tests.harness import STATE_DIR

pytestmark = pytest.mark.processes  # a simulator of its own


@dataclass
class Counted:
    sim: vcenter.Simulator
    proxy: FaultProxy
    session: VCenterSession

    def requests(self, method: str) -> int:
        return self.proxy.stats.requests[method]


@pytest.fixture
async def counted() -> AsyncIterator[Counted]:
    """A simulator whose sessions expire after 2 s idle, its reconfigures taking 1 s."""
    sim = vcenter.start(STATE_DIR, session_idle_timeout="2s", task_seconds={"ReconfigVM_Task": 1.0})
    try:
        async with FaultProxy(sim.url, FaultRates()) as proxy:
            settings = VCenterSettings(
                vcenter_url=proxy.url,
                vcenter_username=sim.username,
                vcenter_password=SecretStr(sim.password),
                vcenter_insecure=True,  # the simulator serves plain HTTP on loopback
                installation_id="tests",
            )
            session = VCenterSession(settings)
            yield Counted(sim, proxy, session)
            await asyncio.to_thread(session.close)
    finally:
        sim.stop()


def _vms(si: Any) -> list[Any]:
    return [
        vm for vm, props in properties.find_all(si, vim.VirtualMachine, ["name"]) if "_VM" in props["name"]
    ]


def _reconfigure(si: Any, vm: Any, note: str) -> Any:
    return vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(annotation=note))


async def test_twenty_waits_at_once_share_one_collector_and_one_filter(counted: Counted) -> None:
    si = await asyncio.to_thread(counted.session.service_instance)
    vms = await asyncio.to_thread(_vms, si)
    assert vms
    tasks = [await asyncio.to_thread(_reconfigure, si, vms[i % len(vms)], f"n{i}") for i in range(20)]
    waits_before = counted.requests("WaitForUpdatesEx")

    with ThreadPoolExecutor(20) as pool:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        results = await asyncio.gather(
            *(loop.run_in_executor(pool, partial(wait_for_task, si, t, timeout=30)) for t in tasks)
        )
        elapsed = time.monotonic() - started

    assert len(results) == 20
    assert elapsed < 10, elapsed  # 1 s tasks, seen as they end (in rounds of 1 s)
    assert counted.requests("CreatePropertyCollector") == 1
    assert counted.requests("CreateFilter") == 1
    assert counted.requests("CreateListView") == 1
    assert counted.requests("DestroyPropertyCollector") == 0  # kept for the next waits
    # Far fewer rounds than the twenty private collectors' two waits each.
    assert counted.requests("WaitForUpdatesEx") - waits_before <= 15


async def test_a_wait_on_a_task_vcenter_does_not_know_fails_and_the_others_go_on(counted: Counted) -> None:
    si = await asyncio.to_thread(counted.session.service_instance)
    vm = (await asyncio.to_thread(_vms, si))[0]
    with pytest.raises(vmodl.fault.ManagedObjectNotFound):
        await asyncio.to_thread(wait_for_task, si, vim.Task("task-999999", si._stub), timeout=10)
    task = await asyncio.to_thread(_reconfigure, si, vm, "after")
    await asyncio.to_thread(wait_for_task, si, task, timeout=10)


async def test_a_wait_past_its_timeout_ends_and_stops_watching(counted: Counted) -> None:
    si = await asyncio.to_thread(counted.session.service_instance)
    vm = (await asyncio.to_thread(_vms, si))[0]
    counted.sim.set_task_seconds("ReconfigVM_Task", 20)
    task = await asyncio.to_thread(_reconfigure, si, vm, "slow")
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no task completion within 1s"):
        await asyncio.to_thread(wait_for_task, si, task, timeout=1)
    assert time.monotonic() - started < 5
    assert not si.watcher.watching()  # nothing left to watch


async def test_after_the_session_expired_the_watcher_starts_over_with_a_new_collector(
    counted: Counted,
) -> None:
    si = await asyncio.to_thread(counted.session.service_instance)
    vm = (await asyncio.to_thread(_vms, si))[0]
    await asyncio.to_thread(
        wait_for_task, si, await asyncio.to_thread(_reconfigure, si, vm, "one"), timeout=10
    )
    await asyncio.sleep(9)  # idle past the simulator's 2 s: the session and its collector are gone
    await asyncio.to_thread(_vms, si)  # a read logs in again (a write would be refused unsent)
    task = await asyncio.to_thread(_reconfigure, si, vm, "two")
    await asyncio.to_thread(wait_for_task, si, task, timeout=20)
    assert counted.session.logins == 2
    assert counted.requests("CreatePropertyCollector") == 2


async def test_a_second_wait_on_a_task_that_ended_is_answered_at_once(counted: Counted) -> None:
    """A retry waits again on the task its heartbeat names, after an earlier wait on
    it ended: the simulator sends no second "enter" for it, so the state is read."""
    si = await asyncio.to_thread(counted.session.service_instance)
    vm = (await asyncio.to_thread(_vms, si))[0]
    task = await asyncio.to_thread(_reconfigure, si, vm, "again")
    await asyncio.to_thread(wait_for_task, si, task, timeout=10)
    for _ in range(2):  # right after (its removal not yet sent) and after a round
        started = time.monotonic()
        await asyncio.to_thread(wait_for_task, si, task, timeout=10)
        assert time.monotonic() - started < 2
        await asyncio.sleep(1)


async def test_a_newer_wait_on_a_collector_cancels_the_one_in_progress_and_gets_the_update(
    counted: Counted,
) -> None:
    """As on vCenter, one WaitForUpdatesEx per collector is in progress: a second
    cancels the first (RequestCanceled), and the change goes to the second. (Debian's
    simulator let both wait, each taking the other's updates: the patch
    property-collector-waits.diff.)"""
    await asyncio.to_thread(_newer_wait_cancels_the_older, counted.sim)


def _newer_wait_cancels_the_older(sim: vcenter.Simulator) -> None:
    si = sim.connect()
    vm = _vms(si)[0]
    collector = si.content.propertyCollector.CreatePropertyCollector()
    # The simulator sends no update of config.annotation after a reconfigure.
    name = vmodl.query.PropertyCollector.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])
    objects = [vmodl.query.PropertyCollector.ObjectSpec(obj=vm, skip=False)]
    collector.CreateFilter(vmodl.query.PropertyCollector.FilterSpec(objectSet=objects, propSet=[name]), False)
    version = collector.WaitForUpdatesEx(
        "", vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=0)
    ).version
    results: dict[str, Any] = {}

    def wait(name: str) -> None:
        options = vmodl.query.PropertyCollector.WaitOptions(maxWaitSeconds=15)
        try:
            results[name] = collector.WaitForUpdatesEx(version, options)
        except vmodl.fault.RequestCanceled as canceled:
            results[name] = canceled

    first = threading.Thread(target=wait, args=("first",))
    first.start()
    time.sleep(1)
    second = threading.Thread(target=wait, args=("second",))
    second.start()
    first.join(timeout=5)
    assert isinstance(results.get("first"), vmodl.fault.RequestCanceled)
    vm.Rename_Task("renamed-for-the-newer-wait")
    second.join(timeout=15)
    changes = [c for f in results["second"].filterSet for o in f.objectSet for c in o.changeSet]
    assert [(c.name, c.val) for c in changes] == [("name", "renamed-for-the-newer-wait")]


class _Beats:
    """An ``on_wake`` that asks to be called every ``wake_seconds``, and counts."""

    def __init__(self, wake_seconds: float) -> None:
        self.wake_seconds = wake_seconds
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def test_a_wait_wakes_as_often_as_its_progress_asks(counted: Counted) -> None:
    """A wait's wakes are for heartbeats: as often as the activity's progress says
    (activities/progress.py: a part of its heartbeat timeout), not on a fixed clock."""
    si = await asyncio.to_thread(counted.session.service_instance)
    vm = (await asyncio.to_thread(_vms, si))[0]
    often, seldom = _Beats(0.1), _Beats(60.0)
    # Tasks of 1 s: the first wakes about ten times, the second not before it ends.
    for beats in (often, seldom):
        task = await asyncio.to_thread(_reconfigure, si, vm, "wakes")
        await asyncio.to_thread(partial(wait_for_task, si, task, timeout=30, on_wake=beats))
    assert often.calls >= 5
    assert seldom.calls == 1  # once, as the wait ends


async def test_closing_the_session_leaves_its_collector_to_the_logout_and_stops_the_loop(
    counted: Counted,
) -> None:
    """At a worker's shutdown the session logs out at once, even with the loop's
    round in flight: the logout, not a Destroy behind that round, frees the
    session's collector and view (objects of a session, which go with it, in
    vCenter as in the simulator's per-session registry)."""
    si = await asyncio.to_thread(counted.session.service_instance)
    vm = (await asyncio.to_thread(_vms, si))[0]
    await asyncio.to_thread(wait_for_task, si, await asyncio.to_thread(_reconfigure, si, vm, "n"), timeout=10)
    watcher = si.watcher
    collector, view = watcher._collector, watcher._view
    assert collector is not None and view is not None
    loop_thread = watcher._thread
    # A wait in flight keeps the loop in its rounds while the session closes.
    counted.sim.set_task_seconds("ReconfigVM_Task", 20)
    slow = await asyncio.to_thread(_reconfigure, si, vm, "slow")
    waiting = asyncio.ensure_future(asyncio.to_thread(wait_for_task, si, slow, timeout=3))
    await asyncio.sleep(1.5)
    before = {m: counted.requests(m) for m in ("DestroyPropertyCollector", "DestroyView", "Logout")}

    await asyncio.to_thread(counted.session.close)

    after = {m: counted.requests(m) - n for m, n in before.items()}
    assert after == {"DestroyPropertyCollector": 0, "DestroyView": 0, "Logout": 1}
    with pytest.raises(TimeoutError):  # the wait itself still ends at its own timeout
        await waiting
    assert loop_thread is not None
    await asyncio.to_thread(loop_thread.join, 5)
    assert not loop_thread.is_alive()


async def test_coroutines_wait_on_the_collector_without_a_thread_each(counted: Counted) -> None:
    """provision_vm waits for an address as a coroutine: ten waits at once, their
    calls to vCenter in a pool of two threads, hold no thread while they wait."""
    si = await asyncio.to_thread(counted.session.service_instance)
    vms = await asyncio.to_thread(_vms, si)
    tasks = [await asyncio.to_thread(_reconfigure, si, vms[i % len(vms)], f"c{i}") for i in range(10)]
    loop = asyncio.get_running_loop()
    before = threading.active_count()
    during: list[int] = []
    with ThreadPoolExecutor(2) as pool:

        async def in_thread(call: Any) -> None:
            await loop.run_in_executor(pool, call)

        def state(props: dict[str, Any]) -> Any:
            during.append(threading.active_count())
            ended = props.get("info.state") in (vim.TaskInfo.State.success, vim.TaskInfo.State.error)
            return props["info.state"] if ended else None

        states = await asyncio.gather(
            *(
                si.watcher.wait_async(
                    task, state, within=20, on_wake=lambda: None, what="task", in_thread=in_thread
                )
                for task in tasks
            )
        )
    assert states == [vim.TaskInfo.State.success] * 10
    # The pool's two threads and the collector's loop, whatever the number of waits.
    assert during and max(during) <= before + 3
    assert not si.watcher.watching()
