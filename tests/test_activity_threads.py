"""The worker's activity thread pool starts its threads off the submitting thread
(the worker's event loop), and otherwise behaves as a thread pool must."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

import worker as worker_module
from pke_vsphere.runtime.threads import ActivityExecutor


def test_submit_never_starts_a_thread_and_every_item_runs_within_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    starters: list[int] = []
    start = threading.Thread.start

    def recording_start(self: threading.Thread, *args: Any, **kwargs: Any) -> None:
        starters.append(threading.get_ident())
        start(self, *args, **kwargs)

    executor = ActivityExecutor(8, thread_name_prefix="test")
    monkeypatch.setattr(threading.Thread, "start", recording_start)
    release = threading.Event()
    running, most = 0, 0
    lock = threading.Lock()

    def work(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(10)
        with lock:
            running -= 1
        return i * i

    futures = [executor.submit(work, i) for i in range(12)]
    deadline = time.monotonic() + 10
    while most < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert most == 8, "every thread up to the limit was started"
    assert threading.get_ident() not in starters and len(starters) == 8
    release.set()
    assert [f.result(10) for f in futures] == [i * i for i in range(12)]
    assert most == 8
    executor.shutdown()
    assert not executor._starter.is_alive()


def test_idle_threads_are_reused_and_shutdown_finishes_queued_work() -> None:
    executor = ActivityExecutor(4)
    for _ in range(20):  # one at a time: one thread does them all
        assert executor.submit(lambda: threading.current_thread().name).result(10)
    assert len(executor._threads) == 1
    slow = [executor.submit(time.sleep, 0.05) for _ in range(10)]
    executor.shutdown(wait=True)
    assert all(f.done() and f.exception() is None for f in slow)
    with pytest.raises(RuntimeError):
        executor.submit(print)


def test_the_worker_runs_its_thread_activities_in_such_a_pool() -> None:
    executor = worker_module.activity_executor()
    try:
        assert isinstance(executor, ActivityExecutor)
        assert executor._max_workers == worker_module.MAX_CONCURRENT_ACTIVITIES
    finally:
        executor.shutdown()
