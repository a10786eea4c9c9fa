"""Calls to the vCenter task slots every worker of an installation shares
(workflows/vcenter_slots.py)."""

from __future__ import annotations

from datetime import datetime, timedelta

from pydantic import BaseModel, Field

LONG_POLL = timedelta(seconds=4)
"""An acquire waits at most this long before answering "not yet" (the asking
activity heartbeats between its asks, so this stays under its heartbeat timeout)."""


class SlotRequest(BaseModel):
    """Update ``acquire_slot``: one vCenter task wants to start."""

    holder: str = Field(min_length=1, max_length=512)
    """Who asks: the activity (workflow id and activity id), the same for all its
    attempts, so a retry after a crash takes over its predecessor's slot."""
    capacity: int = Field(ge=1, le=256)
    """The cap as the asking worker has it configured (the latest asker's wins)."""
    lease_seconds: int = Field(ge=1, le=7 * 24 * 3600)
    """How long the slot is held at most if it is never released (the holder's
    step deadline): a holder that dies and is never retried frees it then."""


class SlotGrant(BaseModel):
    granted: bool
    """False: no slot within the long poll; ask again."""
    in_use: int
    """Slots held after this answer."""


class SlotRelease(BaseModel):
    """Signal ``release_slot``: the holder's task ended."""

    holder: str


class SlotsState(BaseModel):
    """What the slots workflow carries across continue-as-new."""

    capacity: int = 8
    leases: dict[str, datetime] = Field(default_factory=dict)
    """Holder -> when its slot is freed if it is never released."""
    most_in_use: int = 0
