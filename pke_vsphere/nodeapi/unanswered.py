"""Node calls whose answer has not reached their node yet.

A call the node API stopped waiting for (it answered 503 after ``UPDATE_TIMEOUT``)
is still an update in Temporal, and its node asks again a few seconds later.
Sent with the same update id, that retry is attached to the update already there,
or answered from it once it has finished, instead of being a second update: it
adds no history and no workflow task, and spends none of the node's repeats. At
a thousand booting nodes, retries that each made a new update were what kept an
overloaded worker behind.

Two calls are the same call when they come for the same node workflow, of the
same kind, with the same token (its instance) and node key, and the same report.
Only the node API knows the id it drew (random, never derived from the
request), and it gives it only to a caller with the same token and node key, so
no other caller can get another's answer this way. An id is forgotten once its
call is answered (a refusal is an answer: the next call is asked afresh), after
``TTL``, or, past ``LIMIT`` unanswered calls, oldest first. Per node API process:
a retry that reaches another replica is a new update, as before.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from pke_vsphere.contracts.messages import NodeCallRequest

TTL_SECONDS = 600.0
"""Longer than a node retries one call (60 tries, 5 to 10 s apart)."""
LIMIT = 20_000


@dataclass(frozen=True)
class SameCall:
    workflow_id: str
    call: str
    instance_uuid: str
    node_key_sha256: str
    report: str | None

    @classmethod
    def of(cls, workflow_id: str, request: NodeCallRequest) -> SameCall:
        return cls(
            workflow_id=workflow_id,
            call=request.call.value,
            instance_uuid=request.instance_uuid,
            node_key_sha256=request.node_key_sha256,
            report=request.report.model_dump_json() if request.report is not None else None,
        )


class UnansweredCalls:
    def __init__(self, ttl_seconds: float = TTL_SECONDS, limit: int = LIMIT) -> None:
        self._ttl = ttl_seconds
        self._limit = limit
        self._ids: OrderedDict[SameCall, tuple[str, float]] = OrderedDict()

    def update_id(self, call: SameCall) -> tuple[str, bool]:
        """The update id for this call, and whether an earlier try of it is
        unanswered (so the update is joined rather than made)."""
        now = time.monotonic()
        self._forget_older_than(now - self._ttl)
        known = self._ids.get(call)
        if known is not None:
            return known[0], True
        update_id = f"{call.call}-{uuid.uuid4().hex}"
        self._ids[call] = (update_id, now)
        while len(self._ids) > self._limit:
            self._ids.popitem(last=False)
        return update_id, False

    def answered(self, call: SameCall) -> None:
        self._ids.pop(call, None)

    def __len__(self) -> int:
        return len(self._ids)

    def _forget_older_than(self, cutoff: float) -> None:
        while self._ids:
            _, (_, drawn) = next(iter(self._ids.items()))
            if drawn >= cutoff:
                return
            self._ids.popitem(last=False)
