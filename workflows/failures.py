"""What a person should read of a failure."""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ChildWorkflowError, FailureError


def failure_reason(err: BaseException) -> str:
    """The innermost message of a child or activity failure."""
    while isinstance(err, ChildWorkflowError | ActivityError) and err.cause is not None:
        err = err.cause
    return err.message if isinstance(err, FailureError) else str(err)
