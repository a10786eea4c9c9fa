"""Preflight: where a cluster's placement and VIP are checked before any VM
exists. Every problem is reported at once, with what to fix, and the error is
final: retrying cannot make a missing template appear."""

from __future__ import annotations

import socket
from typing import Any

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from models.messages import PreflightInput, PreflightResult
from vsphere import inventory
from vsphere.errors import PermanentError, as_activity_errors
from vsphere.session import VCenterSession

log = structlog.get_logger(__name__)
VIP_PROBE_SECONDS = 1.0


def vip_answers(vip: str, port: int) -> bool:
    """Whether something already answers on the VIP (a VIP must be free before keepalived claims it)."""
    try:
        with socket.create_connection((vip, port), timeout=VIP_PROBE_SECONDS):
            return True
    except OSError:
        return False


class PreflightActivities:
    def __init__(self, session: VCenterSession) -> None:
        self._session = session

    @activity.defn(name="preflight")
    def preflight(self, input: PreflightInput) -> PreflightResult:
        problems: list[str] = []

        def placement(si: Any) -> None:
            try:
                inventory.resolve(si, input.placement)
            except PermanentError as exc:
                problems.extend(str(exc).split("; "))

        with as_activity_errors(f"preflight of cluster {input.cluster}"):
            self._session.run(placement)
        if input.vip and vip_answers(input.vip, input.api_port):
            problems.append(
                f"control_plane.vip: {input.vip} already answers on port {input.api_port}; "
                "choose an address no host or other cluster uses"
            )
        if problems:
            log.info("preflight.failed", cluster=input.cluster, problems=problems)
            raise ApplicationError(
                f"preflight found {len(problems)} problem(s): " + "; ".join(problems),
                type="PreflightFailed",
                non_retryable=True,
            )
        checked = ["datacenter", "template", "folder", "compute", "storage"]
        checked += ["network"] if input.placement.network else []
        checked += ["vip"] if input.vip else []
        return PreflightResult(checked=checked)
