"""Where a node's token is checked: signature, audience, expiry, and that the
node still belongs to the cluster incarnation the token names."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from fastapi import HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client, RPCTimeoutOrCancelledError, WorkflowQueryFailedError
from temporalio.service import RPCError, RPCStatusCode

from models.messages import NodeLookup, NodeLookupResult
from models.state import NodeState
from pki.node_tokens import InvalidNodeToken, NodeClaims, NodeTokenVerifier
from workflows import ids
from workflows.cluster import NODE_QUERY

log = structlog.get_logger(__name__)

RETRY_AFTER_SECONDS = 5
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pke-vsphere"'}

# Declares the scheme in the OpenAPI description (components.securitySchemes and
# every /v1 operation); the checks, and the 401 with its challenge, are ours.
bearer_scheme = HTTPBearer(
    scheme_name="NodeToken",
    bearerFormat="JWT",
    description="The node's own token from its cloud-config (EdDSA JWT naming cluster, node and role).",
    auto_error=False,
)


@dataclass(frozen=True)
class AuthenticatedNode:
    claims: NodeClaims
    state: NodeState


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=reason, headers=_CHALLENGE)


def unavailable(detail: str = "orchestrator unavailable, retry later") -> HTTPException:
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
    )


def bearer_token(credentials: HTTPAuthorizationCredentials | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (``bearer_scheme``
    returns None for a missing header or another scheme)."""
    token = credentials.credentials.strip() if credentials else ""
    if not token:
        raise _unauthorized("missing bearer token")
    return token


async def authenticate(
    credentials: HTTPAuthorizationCredentials | None, path: str, client: Client, verifier: NodeTokenVerifier
) -> AuthenticatedNode:
    try:
        claims = verifier.verify(bearer_token(credentials))
    except InvalidNodeToken as exc:
        log.info("nodeapi.token_rejected", reason=str(exc), path=path)
        raise _unauthorized(str(exc)) from None
    handle = client.get_workflow_handle(ids.cluster_workflow_id(claims.cluster))
    try:
        found = await handle.query(NODE_QUERY, NodeLookup(node=claims.node), result_type=NodeLookupResult)
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise _unauthorized("cluster unknown") from None
        log.warning("nodeapi.temporal_error", status=str(exc.status), error=exc.message)
        raise unavailable() from None
    except (WorkflowQueryFailedError, RPCTimeoutOrCancelledError) as exc:
        log.warning("nodeapi.temporal_error", error=str(exc))
        raise unavailable() from None
    node = found.node
    if (
        not found.accepting
        or found.cluster_uid != claims.cluster_uid
        or node is None
        or node.identity.instance_uuid != claims.jti
        or node.identity.kind is not claims.kind
    ):
        log.info("nodeapi.token_not_for_cluster", cluster=claims.cluster, node=claims.node)
        raise _unauthorized("token does not belong to a node of this cluster")
    structlog.contextvars.bind_contextvars(cluster=claims.cluster, node=claims.node)
    return AuthenticatedNode(claims, node)
