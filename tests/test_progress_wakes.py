"""How often an activity's waits wake to heartbeat follows its heartbeat timeout."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from types import SimpleNamespace

import pytest
from temporalio.testing import ActivityEnvironment

from activities.progress import WAKE_BOUNDS, Progress
from pke_vsphere.contracts.messages import VCenterStep
from pke_vsphere.contracts.state import NodePhase


@pytest.mark.parametrize(
    ("heartbeat_seconds", "wake"),
    [(30, 5.0), (12, 2.0), (10, 10 / 6), (3, 1.0), (300, 5.0)],
)
def test_waits_wake_a_sixth_of_the_heartbeat_timeout_apart_within_bounds(
    heartbeat_seconds: int, wake: float
) -> None:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=heartbeat_seconds))
    seen = env.run(lambda: Progress().wake_seconds)
    assert seen == pytest.approx(wake)
    assert WAKE_BOUNDS[0] <= seen <= WAKE_BOUNDS[1]
    # An unchanged heartbeat is due every half of the timeout: a wake never lets it
    # slip past the timeout itself.
    assert heartbeat_seconds / 2 + seen < heartbeat_seconds or heartbeat_seconds <= 2 * WAKE_BOUNDS[0]


def test_a_change_a_retry_needs_goes_at_once_one_it_does_not_with_the_next_heartbeat_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A clone's task id is heartbeated as it starts (a retry resumes that task);
    the move to waiting for the address waits for the next heartbeat that is due
    anyway (half the heartbeat timeout after the last), and goes then."""
    clock = [1000.0]
    # Only this module's clock: other threads of the session read the real one.
    monkeypatch.setattr("activities.progress.time", SimpleNamespace(monotonic=lambda: clock[0]))
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=30))
    sent: list[dict[str, object]] = []
    env.on_heartbeat = lambda *details: sent.append(details[0])

    def steps() -> None:
        progress = Progress(phase=NodePhase.CLONING)
        progress.at(VCenterStep.TASK, "task-1", "CloneVM_Task")
        clock[0] += 5
        progress.enter(NodePhase.WAITING_FOR_IP, VCenterStep.WAITING, urgent=False)
        progress()  # a wait's wake 5 s later: not due yet
        clock[0] += 5
        progress()
        clock[0] += 5  # 15 s after the last: due, and it carries the new phase
        progress()
        progress.at(VCenterStep.TASK, "task-2", "ReconfigVM_Task", urgent=False)
        clock[0] += 1
        progress.at(VCenterStep.QUEUED)  # urgent again

    env.run(steps)
    assert [(d["step"], d.get("task"), d.get("phase")) for d in sent] == [
        ("task", "task-1", "Cloning"),
        ("waiting", None, "WaitingForIP"),
        ("queued", None, "WaitingForIP"),
    ], sent
