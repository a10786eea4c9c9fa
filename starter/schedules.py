"""Scheduled scaling: Temporal Schedules that start ScaleClusterWorkflow.

A schedule's id is ``pke-scale.<cluster>.<pool>.<suffix>`` (see workflows/ids.py),
so a cluster's schedules are found, and deleted with it, without a registry.
Overlapping runs are skipped: a scale still running when the next is due wins.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.service import RPCError, RPCStatusCode

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.commands import ScaleClusterInput
from pke_vsphere.contracts.protocol import WorkflowType


class ScheduleExists(Exception):
    """A schedule with this id exists already."""


@dataclass(frozen=True)
class ScaleSchedule:
    id: str
    cluster: str
    pool: str
    size: int
    cron: str
    timezone: str
    paused: bool
    next_runs: list[datetime]


def default_suffix(size: int, cron: str, timezone: str) -> str:
    digest = hashlib.sha256(f"{cron}|{timezone}".encode()).hexdigest()[:8]
    return f"{size}-{digest}"


async def add(
    client: Client,
    *,
    cluster: str,
    pool: str,
    size: int,
    cron: str,
    timezone: str,
    task_queue: str,
    suffix: str | None = None,
) -> str:
    request = ScaleClusterInput(cluster=cluster, pool=pool, size=size)
    schedule_id = ids.schedule_id(cluster, pool, suffix or default_suffix(size, cron, timezone))
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            WorkflowType.SCALE,
            request.model_dump(mode="json"),
            id=f"pke-scale-{cluster}-{pool}-scheduled",
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(cron_expressions=[cron], time_zone_name=timezone),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        state=ScheduleState(note=f"scale {cluster}/{pool} to {size}"),
    )
    try:
        await client.create_schedule(schedule_id, schedule, memo={"cron": cron})
    except ScheduleAlreadyRunningError:
        raise ScheduleExists(f"schedule {schedule_id} already exists") from None
    return schedule_id


async def list_schedules(client: Client, cluster: str | None = None) -> list[ScaleSchedule]:
    found = []
    async for entry in await client.list_schedules():
        if not entry.id.startswith(ids.SCHEDULE_PREFIX):
            continue
        if cluster is not None and not ids.schedule_belongs_to(entry.id, cluster):
            continue
        try:
            desc = await client.get_schedule_handle(entry.id).describe()
        except RPCError as err:
            # The list is eventually consistent: a schedule deleted since it was listed is gone.
            if err.status is RPCStatusCode.NOT_FOUND:
                continue
            raise
        action = desc.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        raw = await client.data_converter.decode(action.args) if action.args else []
        request = ScaleClusterInput.model_validate(raw[0] if raw else {})
        spec = desc.schedule.spec
        # Temporal turns cron expressions into calendars; the memo keeps what was typed.
        memo = await desc.memo()
        found.append(
            ScaleSchedule(
                id=entry.id,
                cluster=request.cluster,
                pool=request.pool,
                size=request.size,
                cron=str(memo.get("cron", ", ".join(spec.cron_expressions))),
                timezone=spec.time_zone_name or "UTC",
                paused=desc.schedule.state.paused,
                next_runs=list(desc.info.next_action_times[:3]),
            )
        )
    return sorted(found, key=lambda s: s.id)


async def pause(client: Client, schedule_id: str, note: str = "paused with pke-vsphere") -> None:
    await client.get_schedule_handle(schedule_id).pause(note=note)


async def unpause(client: Client, schedule_id: str, note: str = "unpaused with pke-vsphere") -> None:
    await client.get_schedule_handle(schedule_id).unpause(note=note)


async def delete(client: Client, schedule_id: str) -> None:
    await client.get_schedule_handle(schedule_id).delete()


async def trigger(client: Client, schedule_id: str) -> None:
    await client.get_schedule_handle(schedule_id).trigger()
