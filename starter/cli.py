"""``pke-vsphere``: create, scale and delete clusters, schedule scaling, watch.

pke-vsphere create -f cluster.yaml [--wait]
pke-vsphere status NAME [--watch]
pke-vsphere list
pke-vsphere scale NAME --pool POOL --size N [--wait]
pke-vsphere delete NAME [--wait]
pke-vsphere schedule add NAME --pool POOL --size N --cron EXPR [--timezone TZ]
pke-vsphere schedule list [NAME]
pke-vsphere schedule pause|unpause|delete|trigger SCHEDULE_ID
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.table import Table
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from pke_vsphere.config import TemporalSettings, load
from pke_vsphere.contracts.spec import ClusterSpec, validation_problems
from pke_vsphere.contracts.state import ClusterPhase, ClusterStatus
from pke_vsphere.runtime import temporal
from starter import clusters, node_detail, schedules, spec_file
from starter.progress import console, render, watch


def _connect_problem(exc: Exception) -> str:
    """The operating system's words in the SDK's connect error (``Connection refused``), if any."""
    found = re.search(r'message: "([^"]+)"', str(exc))
    return found[1].lower() if found else str(exc)


def _fail(message: str, code: int = 1) -> int:
    """One line, whatever the message held, and a non-zero exit code."""
    console.print(f"error: {' '.join(message.split())}", highlight=False, markup=False, soft_wrap=True)
    return code


async def _create(client: Client, spec: ClusterSpec, args: argparse.Namespace, task_queue: str) -> int:
    handle = await clusters.create(client, spec, task_queue)
    console.print(f"cluster [bold]{spec.name}[/] creating: workflow {handle.id}")
    if not args.wait:
        console.print(f"follow it with: pke-vsphere status {spec.name} --watch")
        return 0
    final = await watch(client, spec.name)
    return 0 if final and final.phase is ClusterPhase.READY and not final.failed_nodes else 1


async def _status(client: Client, args: argparse.Namespace) -> int:
    if args.watch:
        final = await watch(client, args.name)
    else:
        final = await clusters.status(client, args.name)
        console.print(render(*await node_detail.refine(client, final)))
    return 0 if final and final.phase is not ClusterPhase.FAILED else 1


async def _list(client: Client) -> int:
    table = Table(show_edge=False)
    table.add_column("CLUSTER")
    table.add_column("WORKFLOW")
    for name, wf_status in await clusters.list_clusters(client):
        table.add_row(name, wf_status.name if wf_status else "?")
    console.print(table)
    return 0


async def _follow(client: Client, cluster: str, handle: WorkflowHandle[Any, Any], what: str) -> int:
    """Show the cluster while a command workflow runs, then its outcome."""
    result = asyncio.ensure_future(handle.result())
    await watch(client, cluster, until=lambda _: result.done())
    try:
        outcome = await result
    except WorkflowFailureError as exc:
        cause = exc.cause
        return _fail(f"{what} failed: {cause.message if isinstance(cause, ApplicationError) else cause}")
    console.print(f"{what}: done", outcome.model_dump_json(indent=2), highlight=False)
    if getattr(outcome, "etcd_problem", None):  # a delete that had to leave the cluster's etcd keys
        return _fail(f"{what}: {outcome.etcd_problem}")
    return 0


async def _scale(client: Client, args: argparse.Namespace, task_queue: str) -> int:
    status = await clusters.status(client, args.name)
    if args.pool not in status.pools:
        return _fail(f"cluster {args.name} has no pool {args.pool!r} (pools: {', '.join(status.pools)})")
    handle = await clusters.scale(client, args.name, args.pool, args.size, task_queue)
    console.print(f"scaling {args.name}/{args.pool} to {args.size}: workflow {handle.id}")
    if not args.wait:
        return 0
    return await _follow(client, args.name, handle, f"scale {args.name}/{args.pool} to {args.size}")


async def _delete(client: Client, args: argparse.Namespace, task_queue: str) -> int:
    handle = await clusters.delete(client, args.name, task_queue)
    console.print(f"deleting {args.name}: workflow {handle.id}")
    if not args.wait:
        return 0
    return await _follow(client, args.name, handle, f"delete {args.name}")


async def _schedule(client: Client, args: argparse.Namespace, task_queue: str) -> int:
    action = args.schedule_command
    if action == "add":
        status: ClusterStatus = await clusters.status(client, args.name)
        if args.pool not in status.pools:
            return _fail(f"cluster {args.name} has no pool {args.pool!r} (pools: {', '.join(status.pools)})")
        schedule_id = await schedules.add(
            client,
            cluster=args.name,
            pool=args.pool,
            size=args.size,
            cron=args.cron,
            timezone=args.timezone,
            task_queue=task_queue,
            suffix=args.id,
        )
        when = f"'{args.cron}' {args.timezone}"
        console.print(f"schedule {schedule_id}: scale {args.name}/{args.pool} to {args.size} at {when}")
        return 0
    if action == "list":
        table = Table(show_edge=False)
        for column in ("SCHEDULE", "CLUSTER", "POOL", "SIZE", "CRON", "TIMEZONE", "STATE", "NEXT"):
            table.add_column(column)
        for s in await schedules.list_schedules(client, args.name):
            nxt = s.next_runs[0].strftime("%Y-%m-%d %H:%M %Z") if s.next_runs else "-"
            table.add_row(
                s.id,
                s.cluster,
                s.pool,
                str(s.size),
                s.cron,
                s.timezone,
                "paused" if s.paused else "active",
                nxt,
            )
        console.print(table)
        return 0
    operation = {
        "pause": schedules.pause,
        "unpause": schedules.unpause,
        "delete": schedules.delete,
        "trigger": schedules.trigger,
    }[action]
    await operation(client, args.schedule_id)
    console.print(
        f"schedule {args.schedule_id}: {action}d"
        if action != "trigger"
        else f"schedule {args.schedule_id}: triggered"
    )
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="pke-vsphere", description="PKE clusters on vSphere")
    top.add_argument("--settings", help="dotenv-style settings file (Temporal address etc.)")
    sub = top.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a cluster from a spec file")
    create.add_argument("-f", "--file", required=True, help="cluster spec (YAML or JSON)")
    create.add_argument("--wait", action="store_true", help="show progress until Ready or Failed")
    status = sub.add_parser("status", help="show a cluster's nodes")
    status.add_argument("name")
    status.add_argument("--watch", action="store_true", help="refresh until Ready or Failed")
    sub.add_parser("list", help="list clusters")
    scale = sub.add_parser("scale", help="set a pool's size")
    scale.add_argument("name")
    scale.add_argument("--pool", required=True)
    scale.add_argument("--size", required=True, type=int)
    scale.add_argument("--wait", action="store_true", help="show progress until the scale is done")
    delete = sub.add_parser("delete", help="delete a cluster and every VM it has")
    delete.add_argument("name")
    delete.add_argument("--wait", action="store_true", help="show progress until the cluster is gone")
    schedule = sub.add_parser("schedule", help="scheduled scaling")
    ssub = schedule.add_subparsers(dest="schedule_command", required=True)
    add = ssub.add_parser("add", help="scale a pool on a cron schedule")
    add.add_argument("name")
    add.add_argument("--pool", required=True)
    add.add_argument("--size", required=True, type=int)
    add.add_argument("--cron", required=True, help='e.g. "0 8 * * MON-FRI"')
    add.add_argument("--timezone", default="UTC", help="IANA name, e.g. Europe/Budapest (default UTC)")
    add.add_argument("--id", help="suffix of the schedule id (default: derived from size, cron, timezone)")
    lst = ssub.add_parser("list", help="list scaling schedules")
    lst.add_argument("name", nargs="?", help="only this cluster's")
    for action in ("pause", "unpause", "delete", "trigger"):
        one = ssub.add_parser(action, help=f"{action} a schedule")
        one.add_argument("schedule_id")
    return top


async def run(argv: Sequence[str] | None = None, client: Client | None = None) -> int:
    args = parser().parse_args(argv)
    settings = load(TemporalSettings, args.settings)
    queue = settings.temporal_task_queue
    try:
        # A spec file is checked before anything else: its problems need no Temporal.
        spec = spec_file.load(Path(args.file)) if args.command == "create" else None
        if client is None:
            try:
                client = await temporal.connect(settings)
            except RuntimeError as exc:  # the SDK's "Failed client connect: ..."
                return _fail(f"cannot reach Temporal at {settings.temporal_address}: {_connect_problem(exc)}")
        match args.command:
            case "create":
                assert spec is not None
                return await _create(client, spec, args, queue)
            case "status":
                return await _status(client, args)
            case "list":
                return await _list(client)
            case "scale":
                return await _scale(client, args, queue)
            case "delete":
                return await _delete(client, args, queue)
            case _:
                return await _schedule(client, args, queue)
    except spec_file.SpecFileError as exc:
        return _fail(str(exc), 2)
    except ValidationError as exc:
        return _fail(f"invalid input: {'; '.join(validation_problems(exc))}", 2)
    except (clusters.ClusterExists, clusters.NoSuchCluster, schedules.ScheduleExists) as exc:
        return _fail(str(exc))
    except RPCError as exc:
        return _fail(f"Temporal: {exc.message}")


def main() -> None:
    temporal.run_client_process(lambda: asyncio.run(run()))
