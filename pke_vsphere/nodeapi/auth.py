"""Where a node's token is checked.

Two steps. Here, with nothing but the public key: the token's signature,
issuer, audience and expiry, and the node key's form. Then, per call, the
node's own workflow (update ``node_call``) decides whether the node is
bootstrapping, whether the token is of this incarnation, whether the caller holds
the node key the bootstrap is bound to, and counts the answer. No call goes to
the cluster's workflow for this, so a thousand booting nodes do not queue on one
workflow.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta

import structlog
from fastapi import HTTPException, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import (
    Client,
    RPCTimeoutOrCancelledError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import NodeCallGrant, NodeCallRequest, NodeReport
from pke_vsphere.contracts.protocol import (
    NODE_KEY_HEADER,
    NODE_KEY_PATTERN,
    NODE_REQUEST_SECONDS,
    NodeCall,
    Refusal,
    Update,
)
from pke_vsphere.nodeapi.unanswered import SameCall, UnansweredCalls
from pke_vsphere.pki.node_tokens import InvalidNodeToken, NodeClaims, NodeTokenVerifier

log = structlog.get_logger(__name__)

RETRY_AFTER_SECONDS = 5
# The node waits NODE_REQUEST_SECONDS for each answer. Its workflow gets all of that
# but what the route does after the grant (AFTER_GRANT) and a margin for the answer's
# way back and a busy node API (ANSWER_MARGIN); a workflow that has not answered by
# then is reported as unavailable (503), and the node's retry joins the same update.
# (The whole wait, not each RPC: an update's result is polled for in several.)
ANSWER_MARGIN = timedelta(seconds=5)
UPDATE_TIMEOUT = timedelta(seconds=NODE_REQUEST_SECONDS) - ANSWER_MARGIN
AFTER_GRANT = {
    # A master's material query, with its tries (app.py, MATERIAL_ATTEMPTS).
    NodeCall.BOOTSTRAP: timedelta(seconds=8),
}
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pke-vsphere"'}
_NODE_KEY = re.compile(NODE_KEY_PATTERN)
_REFUSALS = {refusal.value: refusal for refusal in Refusal}

# Declare the schemes in the OpenAPI description (components.securitySchemes and
# every /v1 operation); the checks, and the 401 with its challenge, are ours.
bearer_scheme = HTTPBearer(
    scheme_name="NodeToken",
    bearerFormat="JWT",
    description="The node's own token from its cloud-config (EdDSA JWT naming cluster, node and role).",
    auto_error=False,
)
node_key_scheme = APIKeyHeader(
    name=NODE_KEY_HEADER,
    scheme_name="NodeKey",
    description="Random bytes (base64url, 43 to 128 characters) the node drew at boot and sends "
    "with every call: the first call binds the node's bootstrap to it.",
    auto_error=False,
)


@dataclass(frozen=True)
class NodeCaller:
    """A caller whose token verified: who it claims to be, and its node key's hash."""

    claims: NodeClaims
    node_key_sha256: str


def unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=reason, headers=_CHALLENGE)


def unavailable(detail: str = "orchestrator unavailable, retry later") -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


def retry_later(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_409_CONFLICT, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (``bearer_scheme``
    returns None for a missing header or another scheme)."""
    token = credentials.credentials.strip() if credentials else ""
    if not token:
        raise unauthorized("missing bearer token")
    return token


def identify(
    credentials: HTTPAuthorizationCredentials | None,
    node_key: str | None,
    path: str,
    verifier: NodeTokenVerifier,
) -> NodeCaller:
    """The local checks: a token this orchestrator signed, unexpired, and a node key."""
    try:
        claims = verifier.verify(bearer_token(credentials))
    except InvalidNodeToken as exc:
        log.info("nodeapi.token_rejected", reason=str(exc), path=path)
        raise unauthorized(str(exc)) from None
    if node_key is None or not _NODE_KEY.match(node_key):
        log.info("nodeapi.node_key_missing", path=path, cluster=claims.cluster, node=claims.node)
        raise unauthorized(f"missing or malformed {NODE_KEY_HEADER} header")
    structlog.contextvars.bind_contextvars(cluster=claims.cluster, node=claims.node)
    return NodeCaller(claims, hashlib.sha256(node_key.encode()).hexdigest())


async def authorize(
    client: Client,
    unanswered: UnansweredCalls,
    caller: NodeCaller,
    call: NodeCall,
    report: NodeReport | None = None,
) -> NodeCallGrant:
    """Ask the node's workflow whether this call may be served (and count it). A
    retry of a call whose answer never reached the node joins that call's update
    (``unanswered``) instead of making another.

    Raises:
        HTTPException: 401 for every refusal of the token, 409 for "not yet" and
            "too soon", 403 and 422 for what the node's role does not ask or
            report, 503 when Temporal or the node's workflow cannot answer.
    """
    claims = caller.claims
    workflow_id = ids.node_workflow_id(claims.cluster, claims.node)
    handle = client.get_workflow_handle(workflow_id)
    request = NodeCallRequest(
        call=call,
        cluster_uid=claims.cluster_uid,
        instance_uuid=claims.jti,
        kind=claims.kind,
        node_key_sha256=caller.node_key_sha256,
        report=report,
    )
    same = SameCall.of(workflow_id, request)
    update_id, again = unanswered.update_id(same)
    if again:
        log.info("nodeapi.call_retried", call=call.value, update_id=update_id)
    wait = update_timeout(call)
    try:
        async with asyncio.timeout(wait.total_seconds()):
            grant: NodeCallGrant = await handle.execute_update(
                Update.NODE_CALL, request, id=update_id, result_type=NodeCallGrant, rpc_timeout=wait
            )
    except WorkflowUpdateFailedError as exc:
        unanswered.answered(same)
        raise _refused(call, exc) from None
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            unanswered.answered(same)
            # No such workflow, or it has ended: the node is not bootstrapping.
            log.info("nodeapi.call_refused", call=call.value, reason="node workflow closed or unknown")
            raise unauthorized("this node is not bootstrapping") from None
        log.warning("nodeapi.temporal_error", status=str(exc.status), error=exc.message)
        raise unavailable() from None
    except (RPCTimeoutOrCancelledError, WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError) as exc:
        error = str(exc) or f"no answer within {wait.total_seconds():.0f}s"
        log.warning("nodeapi.temporal_error", error=error)
        raise unavailable() from None
    unanswered.answered(same)
    log.info("nodeapi.call_granted", call=call.value, served=grant.served)
    return grant


def update_timeout(call: NodeCall) -> timedelta:
    """How long the node API waits for the node's workflow to answer ``call``."""
    return max(UPDATE_TIMEOUT - AFTER_GRANT.get(call, timedelta()), timedelta(seconds=1))


def _refused(call: NodeCall, exc: WorkflowUpdateFailedError) -> HTTPException:
    cause = exc.cause
    refusal = _REFUSALS.get(cause.type or "") if isinstance(cause, ApplicationError) else None
    if refusal is None:
        # The workflow could not produce the answer (e.g. the cluster's API was down
        # when a join token was to be installed): the node asks again later.
        log.warning("nodeapi.call_failed", call=call.value, error=str(cause))
        return unavailable(f"the {call.value} answer is unavailable right now")
    assert isinstance(cause, ApplicationError)
    log.info("nodeapi.call_refused", call=call.value, refusal=refusal.value)
    if refusal.retry_later:
        return retry_later(cause.message)
    if refusal is Refusal.NOT_FOR_ROLE:
        return HTTPException(status.HTTP_403_FORBIDDEN, cause.message)
    if refusal is Refusal.REPORT_NOT_FOR_ROLE:
        return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, cause.message)
    return unauthorized(cause.message)
