"""The README's recommended Temporal settings, applied to the dev servers of the
test suite and of ``make bench``.

``deploy/temporal/dynamicconfig.yaml`` is the one source: the production-like
server of ``docker-compose.temporal.yml`` reads it, and :func:`dev_server_args`
turns it into the ``--dynamic-config-value KEY=VALUE`` arguments that
``temporal server start-dev`` takes, so the tests run under the limits a
1000-node installation runs under (``WorkflowEnvironment.start_local`` takes
them as ``dev_server_extra_args``).

The dev server takes one value per key and no constraints, so values limited to
a namespace or a task queue stay out, with one exception: the ``pke-vsphere``
queue's partition counts when they are 1. A dev server runs one installation's
queues and Temporal's own, which are single-partition already, so one partition
for every queue is what the file asks for; a count above 1 would re-partition
Temporal's own queues too and stays out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pke_vsphere.config import TASK_QUEUE

ROOT = Path(__file__).resolve().parent.parent
DYNAMIC_CONFIG = ROOT / "deploy" / "temporal" / "dynamicconfig.yaml"


def load(path: Path = DYNAMIC_CONFIG) -> dict[str, list[dict[str, Any]]]:
    """The dynamic configuration file, checked for the form Temporal reads: every
    key maps to a list of ``{value, constraints}`` entries.

    Args:
        path: the file; the repository's by default.

    Raises:
        ValueError: the file is not of that form.
    """
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of keys to lists of values")
    for key, entries in data.items():
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{path}: {key}: expected a non-empty list of values")
        for entry in entries:
            if not isinstance(entry, dict) or "value" not in entry or set(entry) - {"value", "constraints"}:
                raise ValueError(f"{path}: {key}: each entry has a value and optional constraints")
    return data


def unconstrained(path: Path = DYNAMIC_CONFIG) -> dict[str, Any]:
    """Each key's value that applies everywhere (has no constraints).

    Args:
        path: the file; the repository's by default.

    Raises:
        ValueError: a key has more than one such value.
    """
    values: dict[str, Any] = {}
    for key, entries in load(path).items():
        for entry in entries:
            if entry.get("constraints"):
                continue
            if key in values:
                raise ValueError(f"{path}: {key}: more than one value without constraints")
            values[key] = entry["value"]
    return values


PARTITION_KEYS = ("matching.numTaskqueueReadPartitions", "matching.numTaskqueueWritePartitions")


def single_partitions(path: Path = DYNAMIC_CONFIG) -> dict[str, int]:
    """The project queue's partition counts that are 1, which a dev server may apply
    to every queue (see the module's docstring).

    Args:
        path: the file; the repository's by default.
    """
    values: dict[str, int] = {}
    entries = load(path)
    for key in PARTITION_KEYS:
        for entry in entries.get(key, []):
            constraints = entry.get("constraints") or {}
            if constraints == {"taskQueueName": TASK_QUEUE} and entry["value"] == 1:
                values[key] = 1
    return values


def dev_server_args(path: Path = DYNAMIC_CONFIG) -> list[str]:
    """``--dynamic-config-value KEY=VALUE`` arguments (values as JSON) for
    ``temporal server start-dev``: one pair per key of the file that applies
    everywhere, and the project queue's single partitions.

    Args:
        path: the file; the repository's by default.

    Raises:
        ValueError: as :func:`unconstrained` does.
    """
    args: list[str] = []
    for key, value in {**unconstrained(path), **single_partitions(path)}.items():
        args += ["--dynamic-config-value", f"{key}={json.dumps(value)}"]
    return args
