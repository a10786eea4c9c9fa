"""Calls to the vCenter task slots every worker of an installation shares
(workflows/vcenter_slots.py).

A worker leases slots for all of its activities at once: one update says how
many it holds and how many more it wants, so a thousand queued clones are a
few calls per worker, not a thousand open updates.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field

LONG_POLL = timedelta(seconds=4)
"""A lease that asks for more waits at most this long for free slots before it
answers with what it has."""

MAX_SLOTS = 512
"""The largest cap the slots accept (``PKE_VSPHERE_VCENTER_MAX_CONCURRENT_TASKS``)."""


class SlotLease(BaseModel):
    """Update ``lease_slots``: a worker's slots, renewed, given back or asked for."""

    worker: str = Field(min_length=1, max_length=256)
    """The asking worker process (unique per process start)."""
    ask: int = Field(ge=0)
    """Counts the worker's calls: a call that a later one overtook (its answer was
    given up on) grants nothing."""
    holding: int = Field(ge=0, le=MAX_SLOTS)
    """The slots the worker holds now, by its own count: this replaces the
    workflow's (slots it gives back, or a grant whose answer never reached it)."""
    wanting: int = Field(ge=0, le=MAX_SLOTS)
    """How many more it wants: its activities queued for a slot."""
    capacity: int = Field(ge=1, le=MAX_SLOTS)
    """The cap as the asking worker has it configured (the latest call's wins)."""
    lease_seconds: int = Field(ge=1, le=3600)
    """The worker's slots are freed this long after its last call: a worker that
    dies gives them back then."""


class SlotLeaseGrant(BaseModel):
    granted: int
    """Slots added by this call (0: none free within the long poll; ask again)."""
    holding: int
    """The worker's slots after this call."""
    in_use: int
    """Slots held by all workers after this call."""


class WorkerSlots(BaseModel):
    holding: int
    until: datetime
    """When the slots are freed if the worker does not call again."""
    ask: int


class SlotsState(BaseModel):
    """What the slots workflow carries across continue-as-new, and its query."""

    capacity: int = 8
    workers: dict[str, WorkerSlots] = Field(default_factory=dict)
    most_in_use: int = 0
