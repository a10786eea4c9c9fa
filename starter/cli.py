"""``pke-vsphere``: create clusters and watch them.

pke-vsphere create -f cluster.yaml [--wait]
pke-vsphere status NAME [--watch]
pke-vsphere list
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from temporalio.client import Client
from temporalio.service import RPCError

from models.spec import validation_problems
from models.state import ClusterPhase, ClusterStatus, NodePhase
from runtime import temporal
from settings import TemporalSettings, load
from starter import clusters
from workflows import ids

console = Console()
_PHASE_STYLE = {NodePhase.READY: "green", NodePhase.FAILED: "bold red"}


def render(status: ClusterStatus) -> Group:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("NODE", "ROLE", "PHASE", "VM", "IP", "UPDATED", "ERROR"):
        table.add_column(column, overflow="fold")
    for node in status.nodes:
        table.add_row(
            node.name,
            node.identity.kind.value,
            Text(node.phase.value, style=_PHASE_STYLE.get(node.phase, "yellow")),
            node.vm_ref or "",
            node.ip or "",
            node.updated_at.strftime("%H:%M:%S") if node.updated_at else "",
            node.last_error or "",
        )
    ready = sum(n.phase is NodePhase.READY for n in status.nodes)
    failed = len(status.failed_nodes)
    head = Text.assemble(
        (f"cluster {status.name}: ", "bold"),
        (status.phase.value, "green" if status.phase is ClusterPhase.READY else "yellow"),
        f"  {ready}/{len(status.nodes)} nodes ready",
        (f", {failed} failed" if failed else "", "red"),
        f"  api {status.api_endpoint or '-'}",
    )
    parts: list[Text | Table] = [head, table]
    if status.error:
        parts.append(Text(f"error: {status.error}", style="bold red"))
    return Group(*parts)


def _settled(status: ClusterStatus) -> bool:
    return status.phase in (ClusterPhase.READY, ClusterPhase.FAILED)


async def _poll(client: Client, name: str) -> ClusterStatus | None:
    """The cluster's status, or None once its workflow has closed without an answer."""
    try:
        return await clusters.status(client, name)
    except RPCError:
        desc = await client.get_workflow_handle(ids.cluster_workflow_id(name)).describe()
        if desc.status is not None and desc.status.name != "RUNNING":
            return None
        raise


def _transitions(before: ClusterStatus | None, after: ClusterStatus) -> list[str]:
    """One line per node whose phase changed: the progress log when not on a terminal."""
    old = {n.name: n.phase for n in before.nodes} if before else {}
    lines = []
    if before is None or before.phase is not after.phase:
        lines.append(f"cluster {after.name}: {after.phase.value}")
    for node in after.nodes:
        if old.get(node.name) is not node.phase:
            detail = f" ({node.ip})" if node.ip and node.phase is NodePhase.BOOTSTRAPPING else ""
            error = f": {node.last_error}" if node.last_error else ""
            lines.append(f"  {node.name} [{node.identity.kind.value}] {node.phase.value}{detail}{error}")
    return lines


async def watch(client: Client, name: str, interval: float = 1.0) -> ClusterStatus:
    """Show progress until the cluster is Ready or Failed: a live table on a
    terminal, one line per node phase change otherwise."""
    current = await clusters.status(client, name)
    if not console.is_terminal:
        previous: ClusterStatus | None = None
        while True:
            for line in _transitions(previous, current):
                console.print(line, markup=False, highlight=False)
            if _settled(current):
                break
            await asyncio.sleep(interval)
            previous, latest = current, await _poll(client, name)
            if latest is None:
                break
            current = latest
        console.print(render(current))
        return current
    with Live(render(current), console=console, refresh_per_second=4, transient=False) as live:
        while not _settled(current):
            await asyncio.sleep(interval)
            latest = await _poll(client, name)
            if latest is None:
                break
            current = latest
            live.update(render(current))
    return current


async def _create(client: Client, args: argparse.Namespace, task_queue: str) -> int:
    spec = clusters.load_spec(Path(args.file))
    handle = await clusters.create(client, spec, task_queue)
    console.print(f"cluster [bold]{spec.name}[/] creating: workflow {handle.id}")
    if not args.wait:
        console.print(f"follow it with: pke-vsphere status {spec.name} --watch")
        return 0
    final = await watch(client, spec.name)
    return 0 if final.phase is ClusterPhase.READY and not final.failed_nodes else 1


async def _status(client: Client, args: argparse.Namespace) -> int:
    if args.watch:
        final = await watch(client, args.name)
    else:
        final = await clusters.status(client, args.name)
        console.print(render(final))
    return 0 if final.phase is not ClusterPhase.FAILED else 1


async def _list(client: Client) -> int:
    table = Table(show_edge=False)
    table.add_column("CLUSTER")
    table.add_column("WORKFLOW")
    for name, wf_status in await clusters.list_clusters(client):
        table.add_row(name, wf_status.name if wf_status else "?")
    console.print(table)
    return 0


async def run(argv: Sequence[str] | None = None, client: Client | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pke-vsphere", description="PKE clusters on vSphere")
    parser.add_argument("--settings", help="dotenv-style settings file (Temporal address etc.)")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a cluster from a spec file")
    create.add_argument("-f", "--file", required=True, help="cluster spec (YAML or JSON)")
    create.add_argument("--wait", action="store_true", help="show progress until Ready or Failed")
    status = sub.add_parser("status", help="show a cluster's nodes")
    status.add_argument("name")
    status.add_argument("--watch", action="store_true", help="refresh until Ready or Failed")
    sub.add_parser("list", help="list clusters")
    args = parser.parse_args(argv)

    settings = load(TemporalSettings, args.settings)
    try:
        client = client or await temporal.connect(settings)
        if args.command == "create":
            return await _create(client, args, settings.temporal_task_queue)
        if args.command == "status":
            return await _status(client, args)
        return await _list(client)
    except ValidationError as exc:
        console.print(f"[bold red]invalid cluster spec[/] ({exc.error_count()} problem(s)):")
        for problem in validation_problems(exc):
            console.print(f"  {problem}", markup=False)
        return 2
    except (clusters.ClusterExists, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 1
    except RPCError as exc:
        console.print(f"[bold red]Temporal:[/] {exc.message}")
        return 1


def main() -> None:
    sys.exit(asyncio.run(run()))
