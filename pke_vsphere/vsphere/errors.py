"""vCenter faults, sorted once into permanent (retrying cannot help: a person has
to fix something) and transient (everything else: retry with backoff)."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager

from pyVmomi import vim, vmodl
from temporalio.exceptions import ApplicationError, CancelledError


class VSphereError(Exception):
    """Base of this package's errors."""


class PermanentError(VSphereError):
    """Retrying cannot help; the message says what to fix."""


class TransientError(VSphereError):
    """A fault that may pass: retry with backoff."""


class CloneTimeout(PermanentError):
    """A clone outlived its step and was cancelled in vCenter."""


# Faults whose cause a person has to fix, with what to tell them.
_PERMANENT: tuple[tuple[type[BaseException], str], ...] = (
    (vim.fault.InvalidLogin, "vCenter rejected the user name or password"),
    (vim.fault.NoPermission, "the vCenter account lacks a privilege"),
    (vim.fault.NoDiskSpace, "the datastore is full"),
    (
        vim.fault.FileAlreadyExists,
        "the VM's files already exist on the datastore (a VM removed from the inventory "
        "but not deleted from disk?): delete them or free the name",
    ),
    (vim.fault.InvalidDatastore, "the datastore cannot be used"),
    (vim.fault.DuplicateName, "an object with that name already exists"),
    (vim.fault.InvalidName, "vCenter rejected a name"),
    (vmodl.fault.InvalidArgument, "vCenter rejected an argument"),
    (vmodl.fault.NotSupported, "vCenter does not support the operation"),
    (vmodl.fault.InvalidRequest, "vCenter rejected the request"),
    (vmodl.fault.ManagedObjectNotFound, "a vCenter object no longer exists"),
    (ssl.SSLCertVerificationError, "vCenter's TLS certificate did not verify"),
)


def describe(exc: BaseException) -> str:
    """One line naming the fault and vCenter's own message, if any."""
    msg = getattr(exc, "msg", None) or str(exc)
    # A fault's own fields say which property, datastore or file it is about.
    details = [
        f"{label} {value}"
        for label, value in (
            ("property", getattr(exc, "invalidProperty", None)),
            ("datastore", getattr(exc, "datastore", None)),
            ("file", getattr(exc, "file", None)),
        )
        if value and isinstance(value, str)
    ]
    detail = f" ({', '.join(details)})" if details else ""
    if isinstance(exc, vmodl.MethodFault) and msg.startswith("("):  # pyvmomi's dump of the fault
        msg = ""
    name = type(exc).__name__.rsplit(".", 1)[-1]  # pyvmomi's are "vim.fault.NoDiskSpace"
    return f"{name}{detail}: {msg}".strip().rstrip(":")


def classify(exc: BaseException) -> VSphereError:
    if isinstance(exc, VSphereError):
        return exc
    if isinstance(exc, vim.fault.NotAuthenticated):  # a NoPermission subclass, but it passes
        return TransientError(f"vCenter session expired: {describe(exc)}")
    for kind, advice in _PERMANENT:
        if isinstance(exc, kind):
            return PermanentError(f"{advice}: {describe(exc)}")
    # Everything else may pass (dropped connections, TaskInProgress, InvalidState,
    # timeouts, unknown faults): retry, bounded by the step's deadline.
    return TransientError(describe(exc))


@contextmanager
def as_activity_errors(action: str) -> Iterator[None]:
    """Turn vCenter faults into Temporal ``ApplicationError``s: permanent ones
    are non-retryable, so the workflow gets a clear reason at once."""
    try:
        yield
    except (ApplicationError, CancelledError):
        raise
    except Exception as exc:
        err = classify(exc)
        raise ApplicationError(
            f"{action}: {err}",
            type=type(err).__name__,
            non_retryable=isinstance(err, PermanentError),
        ) from exc
