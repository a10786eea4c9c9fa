"""Retry vCenter's read-only calls when the connection fails under them.

A load balancer in front of vCenter drops connections and answers 503 now and
then. A read (a property fetch, an inventory lookup, a property-collector wait)
can simply be sent again; a call that changes something (a clone, a power-on)
is not retried here: its activity is, and finds what the first attempt did
before doing anything (see activities/vms.py).
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)

# SOAP methods that read and change nothing (``Fetch`` is pyvmomi's property accessor).
READ_ONLY = frozenset(
    {
        "Fetch",
        "RetrieveServiceContent",
        "RetrieveProperties",
        "RetrievePropertiesEx",
        "ContinueRetrievePropertiesEx",
        "WaitForUpdatesEx",
        "FindByInventoryPath",
        "FindByUuid",
        "FindAllByUuid",
        "FindChild",
        "FindByIp",
        "FindByDnsName",
        "QueryEvents",
        "RecommendDatastores",
        "CurrentTime",
    }
)
ATTEMPTS = 4
FIRST_PAUSE = 0.25  # seconds, doubled after each failure

# What a dropped connection or a proxy's error page looks like to pyvmomi.
TRANSPORT_ERRORS = (ConnectionError, http.client.HTTPException, TimeoutError)


def retry_reads(stub: Any, sleep: Callable[[float], None] = time.sleep) -> None:
    """Wrap the stub's ``InvokeMethod`` (every call and property fetch goes through it)."""
    invoke = stub.InvokeMethod

    def invoke_method(mo: Any, info: Any, args: Any, *rest: Any) -> Any:
        method = getattr(info, "wsdlName", "")
        if method not in READ_ONLY:
            return invoke(mo, info, args, *rest)
        pause = FIRST_PAUSE
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return invoke(mo, info, args, *rest)
            except TRANSPORT_ERRORS as exc:
                if attempt == ATTEMPTS:
                    raise
                log.info("vcenter.read_retried", method=method, attempt=attempt, error=repr(exc))
                sleep(pause)
                pause *= 2
        raise AssertionError("unreachable")

    stub.InvokeMethod = invoke_method
