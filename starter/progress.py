"""Showing a cluster: the node table, and progress while something runs (a live
table on a terminal, one line per change otherwise, for logs and CI)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Mapping
from datetime import timedelta

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text
from temporalio.client import Client, WorkflowQueryFailedError
from temporalio.service import RPCError

from pke_vsphere.contracts.messages import VCenterProgress
from pke_vsphere.contracts.state import ClusterPhase, ClusterServices, ClusterStatus, NodePhase
from starter import clusters, node_detail

# Pipes and CI logs get long lines rather than tables folded at 80 columns.
console = Console(width=None if sys.stdout.isatty() else 200)
_PHASE_STYLE = {NodePhase.READY: "green", NodePhase.FAILED: "bold red"}


def render(status: ClusterStatus, vcenter: Mapping[str, VCenterProgress] | None = None) -> Group:
    """The cluster as a table; ``vcenter`` adds what nodes in vCenter steps are doing."""
    vcenter = vcenter or {}
    table = Table(show_edge=False, pad_edge=False)
    for column in ("NODE", "ROLE", "PHASE", "VM", "IP", "UPDATED", "ERROR"):
        table.add_column(column, overflow="fold")
    for node in status.nodes:
        table.add_row(
            node.name,
            node.identity.kind.value,
            Text(_phase(node.phase, vcenter.get(node.name)), style=_PHASE_STYLE.get(node.phase, "yellow")),
            node.vm_ref or "",
            node.ip or "",
            node.updated_at.strftime("%H:%M:%S") if node.updated_at else "",
            node.last_error or "",
        )
    ready = sum(n.phase is NodePhase.READY for n in status.nodes)
    failed = len(status.failed_nodes)
    pools = ", ".join(f"{name}={size}" for name, size in status.pools.items())
    head = Text.assemble(
        (f"cluster {status.name}: ", "bold"),
        (status.phase.value, "green" if status.phase is ClusterPhase.READY else "yellow"),
        f"  {ready}/{len(status.nodes)} nodes ready",
        (f", {failed} failed" if failed else "", "red"),
        f"  api {status.api_endpoint or '-'}  pools {pools or '-'}",
        (f"  running: {status.operation}" if status.operation else "", "cyan"),
    )
    parts: list[Text | Table] = [head]
    if status.services is not None:
        parts.append(services_line(status.services))
    parts.append(table)
    if status.last_reconcile and status.last_reconcile.drift:
        report = status.last_reconcile
        parts.append(
            Text(
                f"last reconcile {report.at:%H:%M:%S} ({report.reason}): "
                + "; ".join(f"{d.kind} {d.name}" for d in report.drift)
                + " -> "
                + "; ".join(report.actions),
                style="magenta",
            )
        )
    if status.error:
        parts.append(Text(f"error: {status.error}", style="bold red"))
    return Group(*parts)


def _phase(phase: NodePhase, progress: VCenterProgress | None) -> str:
    detail = node_detail.describe(progress) if progress else ""
    return f"{phase.value} ({detail})" if detail else phase.value


def services_line(services: ClusterServices) -> Text:
    """What the cluster provides in place of a cloud's: the control plane on the
    first line, then one line per service (a terminal would cut one long line)."""
    first = f"{services.topology or 'dedicated'} control plane; endpoint {services.api_endpoint or '-'}"
    items = []
    if services.etcd_endpoints:
        items.append(f"etcd {', '.join(services.etcd_endpoints)} (prefix {services.etcd_prefix})")
    if services.vip:
        items.append(f"VIP {services.vip} (keepalived, VRRP router id {services.vrrp_router_id})")
    if services.dns_name:
        items.append(f"DNS name {services.dns_name}")
    if services.load_balancer_addresses:
        items.append(f"load balancers {', '.join(services.load_balancer_addresses)} (MetalLB)")
    if services.cloud_provider == "external":
        items.append("nodes initialized by the vSphere cloud provider (CPI)")
    elif services.cloud_provider:
        items.append(f"in-tree cloud provider {services.cloud_provider} (deprecated)")
    if services.storage_class:
        default = " (default)" if services.storage_class_default else ""
        items.append(f"StorageClass {services.storage_class}{default} (vSphere CSI)")
    indent = "\n" + " " * len("  services: ")
    return Text("  services: " + indent.join([first, *items]), style="dim")


def settled(status: ClusterStatus) -> bool:
    return status.phase in (ClusterPhase.READY, ClusterPhase.FAILED, ClusterPhase.DELETED)


def transitions(before: ClusterStatus | None, after: ClusterStatus) -> list[str]:
    """One line per change of the cluster's phase, its operation, or a node's phase."""
    lines = []
    if before is None or before.phase is not after.phase:
        lines.append(f"cluster {after.name}: {after.phase.value}")
    if after.operation and (before is None or before.operation != after.operation):
        lines.append(f"cluster {after.name}: running {after.operation}")
    old = {n.name: n.phase for n in before.nodes} if before else {}
    for node in after.nodes:
        if old.get(node.name) is not node.phase:
            detail = f" ({node.ip})" if node.ip and node.phase is NodePhase.BOOTSTRAPPING else ""
            error = f": {node.last_error}" if node.last_error else ""
            lines.append(f"  {node.name} [{node.identity.kind.value}] {node.phase.value}{detail}{error}")
    for name in old.keys() - {n.name for n in after.nodes}:
        lines.append(f"  {name} removed")
    return lines


# How long one status query may take while watching, and the waits between
# attempts when Temporal or the cluster's worker does not answer.
POLL_TIMEOUT = timedelta(seconds=5)
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 15.0


async def _poll(client: Client, name: str, say: Callable[[str], None]) -> ClusterStatus | None:
    """The cluster's status, or None once its workflow has ended (or is gone).

    An answer that fails for another reason (Temporal restarting, no worker polling,
    a query refused while the workflow starts or is busy) is transient: say so and
    ask again, waiting longer each time, up to BACKOFF_MAX seconds."""
    delay = BACKOFF_FIRST
    while True:
        try:
            return await clusters.status(client, name, rpc_timeout=POLL_TIMEOUT)
        except clusters.NoSuchCluster:
            return None
        except (RPCError, WorkflowQueryFailedError) as exc:
            problem = exc
        try:
            if await clusters.closed(client, name):
                return None
        except RPCError as exc:
            problem = exc
        say(f"status of {name} unavailable ({_first_line(problem)}); retrying in {delay:.0f} s")
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:160]


async def watch(
    client: Client,
    name: str,
    until: Callable[[ClusterStatus], bool] = settled,
    interval: float = 1.0,
) -> ClusterStatus | None:
    """Show progress until ``until(status)`` holds or the cluster's workflow has ended.
    Status that cannot be had for a while is reported and asked for again."""

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, style="yellow")

    current = await _poll(client, name, say)
    if current is None:
        return None
    if not console.is_terminal:
        previous: ClusterStatus | None = None
        while True:
            for line in transitions(previous, current):
                console.print(line, markup=False, highlight=False)
            if until(current):
                break
            await asyncio.sleep(interval)
            latest = await _poll(client, name, say)
            if latest is None:
                break
            previous, current = current, latest
        console.print(render(current))
        return current
    with Live(render(current), console=console, refresh_per_second=4) as live:
        while not until(current):
            await asyncio.sleep(interval)
            latest = await _poll(client, name, live.console.print)
            if latest is None:
                break
            current = latest
            live.update(render(*await node_detail.refine(client, current)))
    return current
