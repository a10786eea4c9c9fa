"""What a fault-injection run found, checked and (for ``make reliability``) recorded.

A run is good when the operation finished and vCenter holds exactly the VMs of
the cluster's Ready nodes: none twice (duplicates: a name cloned or present
more than once), none extra (orphans: a VM with the cluster's marker that no
Ready node owns, such as one left behind by a node that was given up) and none
missing. ``PKE_VSPHERE_RELIABILITY_LOG`` names a JSON-lines file to append each
run's record to; ``scripts/reliability_report.py`` sums them up.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pke_vsphere.contracts.state import ClusterPhase, ClusterStatus, NodePhase
from sim.vcenter import Simulator
from tests.harness import clone_counts, vms_of_cluster

if TYPE_CHECKING:
    from tests.conftest import Stack

LOG_ENV = "PKE_VSPHERE_RELIABILITY_LOG"


@dataclass
class Run:
    fault: str
    operation: str
    point: str
    cluster: str
    started: float = field(default_factory=time.monotonic)
    seconds: float = 0.0
    finished: bool = False
    injected: int = 1  # faults injected in this run (a kill is one)
    duplicates: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.finished and not (self.duplicates or self.orphans or self.missing)

    def check(self, sim: Simulator, status: ClusterStatus | None) -> Run:
        """Compare vCenter with the cluster's status (None: the cluster was deleted)."""
        self.seconds = round(time.monotonic() - self.started, 1)
        ready = [n for n in status.nodes if n.phase is NodePhase.READY] if status else []
        expected = {n.name: n.identity.instance_uuid for n in ready}
        found = vms_of_cluster(sim, self.cluster)
        clones = clone_counts(sim)
        names = {key.split("#dup-")[0] for key in found}
        self.duplicates = sorted(
            {key.split("#dup-")[0] for key in found if "#dup-" in key}
            | {name for name in expected if clones[name] > 1}
        )
        self.orphans = sorted(
            name
            for name, props in found.items()
            if name not in expected or props.get("config.instanceUuid") != expected[name]
        )
        self.missing = sorted(set(expected) - names)
        return self

    def record(self) -> None:
        path = os.environ.get(LOG_ENV)
        if not path:
            return
        line = {**asdict(self), "ok": self.ok}
        del line["started"]
        with Path(path).open("a") as out:
            out.write(json.dumps(line) + "\n")

    def describe(self) -> str:
        return (
            f"{self.operation} killed at {self.point} ({self.cluster}): finished={self.finished} "
            f"duplicates={self.duplicates} orphans={self.orphans} missing={self.missing}"
        )


def assert_ready_and_exact(stack: Stack, run: Run, status: ClusterStatus, size: int) -> None:
    """The run's cluster is Ready with ``size`` Ready nodes and exactly their VMs."""
    run.finished = status.phase is ClusterPhase.READY
    run.check(stack.sim, status).record()
    assert status.phase is ClusterPhase.READY, f"{run.describe()}: {status.error}"
    assert all(n.phase is NodePhase.READY for n in status.nodes), run.describe()
    assert len(status.nodes) == size, run.describe()
    assert run.ok, run.describe()
