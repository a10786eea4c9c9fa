"""Retry vCenter's read-only calls when the connection fails under them or the
session expired.

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
from pyVmomi import vim

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
# Reads whose answer says "session expired" only in each object's missing set.
PROPERTY_READS = frozenset({"RetrievePropertiesEx", "ContinueRetrievePropertiesEx", "RetrieveProperties"})
# Calls that make or drop objects of the session itself (views, collectors,
# filters), not of vCenter's inventory: answered "session expired", they were not
# carried out and are sent again after the new login.
SESSION_LOCAL = frozenset(
    {
        "CreateContainerView",
        "CreateListView",
        "DestroyView",
        "CreatePropertyCollector",
        "CreateFilter",
        "DestroyPropertyFilter",
        "DestroyPropertyCollector",
    }
)
# Calls that log in or out: never answered by logging in again.
SESSION_METHODS = frozenset({"Login", "Logout", "LoginByToken", "LoginExtensionByCertificate"})
ATTEMPTS = 4
FIRST_PAUSE = 0.25  # seconds, doubled after each failure

# What a dropped connection or a proxy's error page looks like to pyvmomi.
TRANSPORT_ERRORS = (ConnectionError, http.client.HTTPException, TimeoutError)


def _expired(result: Any) -> bool:
    """A property read that an expired session answers with every property missing."""
    objects = getattr(result, "objects", None) or (result if isinstance(result, list) else [])
    return any(
        isinstance(missing.fault, vim.fault.NotAuthenticated)
        for oc in objects
        for missing in getattr(oc, "missingSet", None) or []
    )


def retry_reads(
    stub: Any,
    relogin: Callable[[int], None] | None = None,
    generation: Callable[[], int] = lambda: 0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Wrap the stub's ``InvokeMethod`` (every call and property fetch goes through it).

    A read is sent again after a dropped connection or a 503, and after logging in
    again when the session expired. A write is sent once: when it fails for an
    expired session, the session is renewed and the fault raised, so that the
    activity's retry looks at vCenter first.
    """
    invoke = stub.InvokeMethod

    def invoke_method(mo: Any, info: Any, args: Any, *rest: Any) -> Any:
        method = getattr(info, "wsdlName", "")
        read_only = method in READ_ONLY
        renewed = relogin is None or method in SESSION_METHODS
        pause = FIRST_PAUSE
        attempt = 0
        while True:
            attempt += 1
            seen = generation()
            try:
                result = invoke(mo, info, args, *rest)
            except vim.fault.NotAuthenticated:
                if renewed:
                    raise
                assert relogin is not None
                relogin(seen)
                renewed = True
                if not (read_only or method in SESSION_LOCAL):
                    raise
                continue
            except TRANSPORT_ERRORS as exc:
                if not read_only or attempt >= ATTEMPTS:
                    raise
                log.info("vcenter.read_retried", method=method, attempt=attempt, error=repr(exc))
                sleep(pause)
                pause *= 2
                continue
            if method in PROPERTY_READS and not renewed and _expired(result):
                assert relogin is not None
                relogin(seen)
                renewed = True
                continue
            return result

    stub.InvokeMethod = invoke_method
