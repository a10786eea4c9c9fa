"""What a person should read of a failure."""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ChildWorkflowError, FailureError, TimeoutError


def failure_reason(err: BaseException) -> str:
    """The innermost message of a child or activity failure. A timeout that ended
    the retries (Temporal's "not enough time to schedule next retry") gives way to
    the last attempt's own failure, when it carries one."""
    while isinstance(err, ChildWorkflowError | ActivityError | TimeoutError) and err.cause is not None:
        err = err.cause
    return err.message if isinstance(err, FailureError) else str(err)
