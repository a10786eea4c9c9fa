"""What a person should read of a failure: its innermost message, and the VM a
failed node workflow names. Read by the cluster workflow (of a child) and by
the activity that awaits node workflows (of a workflow the client watched)."""

from __future__ import annotations

from pydantic import ValidationError
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    FailureError,
    TimeoutError,
)

from pke_vsphere.contracts.messages import NodeVm


def failure_reason(err: BaseException) -> str:
    """The innermost message of a child or activity failure. A timeout that ended
    the retries (Temporal's "not enough time to schedule next retry") gives way to
    the last attempt's own failure, when it carries one."""
    while isinstance(err, ChildWorkflowError | ActivityError | TimeoutError) and err.cause is not None:
        err = err.cause
    return err.message if isinstance(err, FailureError) else str(err)


def failed_node_vm(cause: BaseException | None) -> NodeVm | None:
    """The VM a node workflow's failure names (a failure past its VM step), if any:
    ``cause`` is the failure the workflow ended with."""
    if not isinstance(cause, ApplicationError) or not cause.details:
        return None
    try:
        return NodeVm.model_validate(cause.details[0])
    except ValidationError:
        return None
