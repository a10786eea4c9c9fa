"""The worker's pool of activity threads, whose threads are started off the event loop.

The SDK runs each synchronous activity with ``loop.run_in_executor``, so a plain
``ThreadPoolExecutor`` starts a new thread inside ``submit``, on the worker's
event loop, and ``Thread.start`` waits there until the new thread has run. With a
thousand threads already taking turns at the GIL that wait was about 6 ms a
thread: at 3 + 997, 6 s of the event loop (where every workflow task runs) went
to starting the ``provision_vm`` threads. Here ``submit`` only queues the work
and asks a starter thread of the pool's own to add a thread if none is idle.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor


class ActivityExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` (same limits, same queue) whose ``submit`` never
    starts a thread itself."""

    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers, thread_name_prefix)
        self._wanted = threading.Semaphore(0)
        self._stopping = False
        self._starter = threading.Thread(
            target=self._start_threads, name=f"{thread_name_prefix or 'pool'}-starter", daemon=True
        )
        self._starter.start()

    def _adjust_thread_count(self) -> None:
        """(Called by ``submit``.) One more item queued: let the starter see to it."""
        self._wanted.release()

    def _start_threads(self) -> None:
        # The only caller of the base class's adjustment, so it runs one at a time;
        # that uses an idle thread if one is left, else starts one up to the limit.
        while True:
            self._wanted.acquire()
            if self._stopping:
                return
            try:
                super()._adjust_thread_count()
            except RuntimeError:  # the interpreter is exiting: no new threads
                return

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._stopping = True
        self._wanted.release()
        self._starter.join()
        # An item queued after the starter's last look still needs a thread.
        if not self._threads and not self._work_queue.empty():
            super()._adjust_thread_count()
        super().shutdown(wait, cancel_futures=cancel_futures)
