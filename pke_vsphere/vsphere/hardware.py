"""What a VM of a given virtual hardware version can have: preflight checks the
template's version against the pools' CPUs and memory, so that a pool the
template cannot carry is refused before anything is cloned.

Figures from VMware's "Hardware features available with virtual machine
compatibility settings" (maximum virtual CPUs and memory per version).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    cpus: int
    memory_mb: int


# vmx-N -> limits; a version in between or newer takes the nearest lower entry.
_LIMITS: dict[int, Limits] = {
    7: Limits(8, 255 * 1024),
    8: Limits(32, 1011 * 1024),
    9: Limits(64, 1011 * 1024),
    10: Limits(64, 1011 * 1024),
    11: Limits(128, 4080 * 1024),
    13: Limits(128, 6128 * 1024),
    15: Limits(256, 6128 * 1024),
    17: Limits(768, 24 * 1024 * 1024),
}


def limits(version: str) -> Limits | None:
    """The limits of ``vmx-N``; None for a version this table does not know."""
    try:
        number = int(version.removeprefix("vmx-"))
    except ValueError:
        return None
    known = [v for v in _LIMITS if v <= number]
    return _LIMITS[max(known)] if known else None


def problems(version: str, pools: list[tuple[int, int, int]]) -> list[str]:
    """A line per pool whose CPUs or memory the template's version cannot carry
    (``pools``: index in the spec, CPUs, MiB)."""
    found = limits(version)
    if found is None:
        return []
    out = []
    for index, cpus, memory_mb in pools:
        if cpus > found.cpus:
            out.append(
                f"pools.{index}.cpus: {cpus} CPUs exceed the {found.cpus} that the template's "
                f"hardware version {version} allows; upgrade the template's compatibility"
            )
        if memory_mb > found.memory_mb:
            out.append(
                f"pools.{index}.memory_mb: {memory_mb} MiB exceed the {found.memory_mb} that the "
                f"template's hardware version {version} allows; upgrade the template's compatibility"
            )
    return out
