"""The real ``worker.py`` in its own process, for tests that kill it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import pytest

from pke_vsphere.runtime import crashpoints
from tests.conftest import INSTALLATION_ID, Stack
from tests.harness import ROOT


def write_settings(
    stack: Stack, path: Path, key_file: Path, payload_keys: Path, task_queue: str, extra: str = ""
) -> Path:
    target = stack.client.service_client.config.target_host
    path.write_text(
        f"PKE_VSPHERE_TEMPORAL_ADDRESS={target}\n"
        f"PKE_VSPHERE_TEMPORAL_TASK_QUEUE={task_queue}\n"
        f"PKE_VSPHERE_VCENTER_URL={stack.sim.url}\n"
        f"PKE_VSPHERE_VCENTER_USERNAME={stack.sim.username}\n"
        "PKE_VSPHERE_VCENTER_INSECURE=true\n"
        f"PKE_VSPHERE_INSTALLATION_ID={INSTALLATION_ID}\n"
        f"PKE_VSPHERE_VCENTER_PASSWORD={stack.sim.password}\n"
        f"PKE_VSPHERE_NODE_API_URL={stack.node_api_url}\n"
        f"PKE_VSPHERE_NODE_TOKEN_KEY_FILE={key_file}\n"
        f"PKE_VSPHERE_PAYLOAD_KEYS_FILE={payload_keys}\n" + extra
    )
    return path


class WorkerProcess:
    """One worker process at a time on its own task queue; ``start(crash_at=...)``
    arms a crash point (see runtime/crashpoints.py) in that process only."""

    def __init__(
        self,
        stack: Stack,
        key_file: Path,
        payload_keys: Path,
        workdir: Path,
        task_queue: str | None = None,
        settings: dict[str, str] | None = None,
        role: str | None = None,
    ) -> None:
        self.task_queue = task_queue or f"proc-{uuid.uuid4()}"
        self.role = role
        extra = "".join(f"{key}={value}\n" for key, value in (settings or {}).items())
        self.settings = write_settings(
            stack, workdir / "worker.env", key_file, payload_keys, self.task_queue, extra
        )
        self.log = workdir / "worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, crash_at: str | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if k != crashpoints.ENV}
        if crash_at:
            env[crashpoints.ENV] = crash_at
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(ROOT / "worker.py"),
                    "--settings",
                    str(self.settings),
                    *(["--role", self.role] if self.role else []),
                ],
                stdout=out,
                stderr=out,
                cwd=ROOT,
                env=env,
            )

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    async def wait_crashed(self, within: float) -> None:
        """Wait for the armed crash point to kill the process."""
        assert self.process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.process.poll() is None:
            if loop.time() > deadline:
                raise AssertionError(f"the worker did not reach its crash point in {within}s:\n{self.tail()}")
            await asyncio.sleep(0.1)
        assert self.process.returncode == -signal.SIGKILL, f"exit {self.process.returncode}:\n{self.tail()}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def new_worker(stack: Stack, key_file: Path, payload_keys: Path, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Makes worker processes (``new_worker(label, task_queue=..., settings=..., role=...)``),
    each in its own directory; all are stopped after the test."""
    made: list[WorkerProcess] = []

    def make(label: str, **kwargs: object) -> WorkerProcess:
        workdir = tmp_path / label.replace("@", "-")
        workdir.mkdir()
        worker = WorkerProcess(stack, key_file, payload_keys, workdir, **kwargs)  # type: ignore[arg-type]
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.stop()


async def run_all(cases: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run the cases side by side; report every failure, not just the first."""
    results = await asyncio.gather(*(case() for case in cases), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        raise AssertionError("\n\n".join(_explain(f) for f in failures))


def _explain(error: BaseException) -> str:
    """The error and its causes (a workflow failure's reason is in its cause)."""
    parts = []
    current: BaseException | None = error
    while current is not None:
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__
    return " <- ".join(parts)
