"""What a person should read of a failure."""

from __future__ import annotations

from pydantic import ValidationError
from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
    TimeoutError,
)

with workflow.unsafe.imports_passed_through():
    from pke_vsphere.contracts.messages import NodeVm


def failure_reason(err: BaseException) -> str:
    """The innermost message of a child or activity failure. A timeout that ended
    the retries (Temporal's "not enough time to schedule next retry") gives way to
    the last attempt's own failure, when it carries one."""
    while isinstance(err, ChildWorkflowError | ActivityError | TimeoutError) and err.cause is not None:
        err = err.cause
    return err.message if isinstance(err, FailureError) else str(err)


def failed_node_vm(err: ChildWorkflowError) -> NodeVm | None:
    """The VM a node workflow's failure names (a failure past its VM step), if any."""
    cause = err.cause
    if not isinstance(cause, ApplicationError) or not cause.details:
        return None
    try:
        return NodeVm.model_validate(cause.details[0])
    except ValidationError:
        return None
