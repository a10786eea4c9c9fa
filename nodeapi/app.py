"""Routes of the node API (``/v1/nodes/self/...``); ``self`` is the node the
bearer token names, so a token can only ever act for its own node."""

from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from bootstrap import keepalived
from models.messages import (
    BootstrapMaterial,
    BootstrapMaterialRequest,
    JoinInfo,
    JoinRequest,
    NodeReport,
    NodeReportKind,
)
from models.pki import ClusterPKI
from models.state import NodeKind
from nodeapi.auth import AuthenticatedNode, authenticate
from pki.node_tokens import NodeTokenVerifier
from workflows import ids
from workflows.cluster import BOOTSTRAP_QUERY, JOIN_UPDATE
from workflows.node import REPORT_SIGNAL

log = structlog.get_logger(__name__)
RETRY_AFTER_SECONDS = 5


class MasterBootstrap(BaseModel):
    """What a master receives: the cluster's CAs and keys, and keepalived's configuration."""

    pki: ClusterPKI
    api_endpoint: str | None
    keepalived_conf: str | None


class Accepted(BaseModel):
    accepted: bool = True


def create_app(client: Client, verifier: NodeTokenVerifier) -> FastAPI:
    app = FastAPI(
        title="pke-vsphere node API",
        version="1",
        description="Called by booting nodes with their own bearer token.",
    )

    async def current_node(request: Request) -> AuthenticatedNode:
        structlog.contextvars.clear_contextvars()
        return await authenticate(request, client, verifier)

    Node = Annotated[AuthenticatedNode, Depends(current_node)]

    def cluster(node: AuthenticatedNode) -> WorkflowHandle[Any, Any]:
        return client.get_workflow_handle(ids.cluster_workflow_id(node.claims.cluster))

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/nodes/self/bootstrap", response_model=MasterBootstrap)
    async def bootstrap(node: Node) -> JSONResponse:
        if node.claims.kind is NodeKind.WORKER:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "only masters receive the cluster's CAs")
        try:
            material = await cluster(node).query(
                BOOTSTRAP_QUERY,
                BootstrapMaterialRequest(node=node.claims.node),
                result_type=BootstrapMaterial,
            )
        except RPCError as exc:
            raise _unavailable(exc) from None
        conf = None
        if material.vip:
            conf = keepalived.render(
                cluster=node.claims.cluster,
                vip=material.vip,
                interface=material.vrrp_interface,
                router=material.vrrp_router_id,
                node_priority=material.vrrp_priority,
                password=material.pki.vrrp_password.get_secret_value(),
            )
        log.info("nodeapi.bootstrap_served")
        body = MasterBootstrap(pki=material.pki, api_endpoint=material.api_endpoint, keepalived_conf=conf)
        return JSONResponse(body.model_dump(mode="json"), headers={"Cache-Control": "no-store"})

    @app.get("/v1/nodes/self/join", response_model=JoinInfo)
    async def join(node: Node) -> JSONResponse:
        if node.claims.kind is NodeKind.LEADER:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "the leader does not join")
        try:
            info = await cluster(node).execute_update(
                JOIN_UPDATE, JoinRequest(node=node.claims.node), result_type=JoinInfo
            )
        except WorkflowUpdateFailedError as exc:
            cause = exc.cause
            kind = cause.type if isinstance(cause, ApplicationError) else None
            message = cause.message if isinstance(cause, ApplicationError) else str(cause)
            if kind == "NotYet":
                return JSONResponse(
                    {"detail": message, "retry_after": RETRY_AFTER_SECONDS},
                    status_code=status.HTTP_409_CONFLICT,
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                )
            if kind in ("UnknownNode", "NotAJoiner"):
                raise HTTPException(status.HTTP_403_FORBIDDEN, message) from None
            # The orchestrator could not produce a token (e.g. the API server is down).
            log.warning("nodeapi.join_failed", error=message)
            return JSONResponse(
                {"detail": "join information is unavailable right now", "retry_after": RETRY_AFTER_SECONDS},
                status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        except RPCError as exc:
            raise _unavailable(exc) from None
        log.info("nodeapi.join_served", expires_at=info.expires_at.isoformat())
        return JSONResponse(info.model_dump(mode="json"), headers={"Cache-Control": "no-store"})

    @app.post("/v1/nodes/self/report", response_model=Accepted, status_code=status.HTTP_202_ACCEPTED)
    async def report(report: NodeReport, node: Node) -> Accepted:
        allowed = {
            NodeKind.LEADER: {NodeReportKind.READY, NodeReportKind.FAILED},
            NodeKind.MASTER: {NodeReportKind.JOINED, NodeReportKind.FAILED},
            NodeKind.WORKER: {NodeReportKind.JOINED, NodeReportKind.FAILED},
        }[node.claims.kind]
        if report.kind not in allowed:
            raise HTTPException(
                422,
                f"a {node.claims.kind.value} reports one of: {', '.join(sorted(allowed))}",
            )
        handle = client.get_workflow_handle(ids.node_workflow_id(node.claims.cluster, node.claims.node))
        try:
            await handle.signal(REPORT_SIGNAL, report)
        except RPCError as exc:
            if exc.status is RPCStatusCode.NOT_FOUND:
                raise HTTPException(
                    status.HTTP_409_CONFLICT, "this node is no longer bootstrapping"
                ) from None
            raise _unavailable(exc) from None
        log.info("nodeapi.report", kind=report.kind.value)
        return Accepted()

    return app


def _unavailable(exc: RPCError) -> HTTPException:
    log.warning("nodeapi.temporal_error", status=str(exc.status), error=exc.message)
    return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "orchestrator unavailable, retry later")
