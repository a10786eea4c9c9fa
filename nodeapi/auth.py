"""Where a node's token is checked: signature, audience, expiry, and that the
node still belongs to the cluster incarnation the token names."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from fastapi import HTTPException, Request, status
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from models.messages import NodeLookup, NodeLookupResult
from models.state import NodeState
from pki.node_tokens import InvalidNodeToken, NodeClaims, NodeTokenVerifier
from workflows import ids
from workflows.cluster import NODE_QUERY

log = structlog.get_logger(__name__)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="pke-vsphere"'}


@dataclass(frozen=True)
class AuthenticatedNode:
    claims: NodeClaims
    state: NodeState


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=reason, headers=_CHALLENGE)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("missing bearer token")
    return token.strip()


async def authenticate(request: Request, client: Client, verifier: NodeTokenVerifier) -> AuthenticatedNode:
    try:
        claims = verifier.verify(bearer_token(request))
    except InvalidNodeToken as exc:
        log.info("nodeapi.token_rejected", reason=str(exc), path=request.url.path)
        raise _unauthorized(str(exc)) from None
    handle = client.get_workflow_handle(ids.cluster_workflow_id(claims.cluster))
    try:
        found = await handle.query(NODE_QUERY, NodeLookup(node=claims.node), result_type=NodeLookupResult)
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise _unauthorized("cluster unknown") from None
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "orchestrator unavailable") from None
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
