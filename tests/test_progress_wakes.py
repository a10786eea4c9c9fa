"""How often an activity's waits wake to heartbeat follows its heartbeat timeout."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from temporalio.testing import ActivityEnvironment

from activities.progress import WAKE_BOUNDS, Progress


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
