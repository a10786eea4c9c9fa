"""Routes of the node API (``/v1/nodes/self/...``); ``self`` is the node the
bearer token names, so a token can only ever act for its own node.

The OpenAPI description (``/openapi.json``, ``/docs``) declares the bearer
scheme on every ``/v1`` operation and every status code a route answers with;
``tests/test_node_api_fuzz.py`` runs schemathesis against it."""

import asyncio
import time
from typing import Annotated, Any

import structlog
from fastapi import Depends, FastAPI, HTTPException, Request, Security, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field
from temporalio.client import Client, RPCTimeoutOrCancelledError, WorkflowQueryFailedError
from temporalio.service import RPCError

from pke_vsphere.config.credentials import EtcdCredentials, StorageCredentials
from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import (
    BootstrapMaterial,
    BootstrapMaterialRequest,
    JoinInfo,
    NodeReport,
)
from pke_vsphere.contracts.pki import ClusterPKI, ExternalEtcdClient
from pke_vsphere.contracts.protocol import NodeCall, Query
from pke_vsphere.etcd import material as etcd_material
from pke_vsphere.etcd import users as etcd_users
from pke_vsphere.nodeapi.auth import (
    RETRY_AFTER_SECONDS,
    NodeCaller,
    authorize,
    bearer_scheme,
    identify,
    node_key_scheme,
    unavailable,
)
from pke_vsphere.nodeapi.unanswered import UnansweredCalls
from pke_vsphere.pki.node_tokens import NodeTokenVerifier
from pke_vsphere.render import keepalived
from pke_vsphere.render.addons import bundle as addon_bundle
from pke_vsphere.render.addons.bundle import AddonBundle

log = structlog.get_logger(__name__)

# Tries of a master's material query, 0.5, 1, 2 and 4 s apart, before a 503: the
# call is granted (and counted) already, and a cluster workflow whose task failed
# or timed out (the query's FAILED_PRECONDITION) answers again once Temporal
# retries the task, within seconds.
MATERIAL_ATTEMPTS = 5


class MasterBootstrap(BaseModel):
    """What a master receives: the cluster's CAs and keys, keepalived's configuration
    and, with an external etcd, its endpoints and client certificate."""

    pki: ClusterPKI
    api_endpoint: str | None
    vip: str | None = None
    keepalived_conf: str | None
    external_etcd: ExternalEtcdClient | None = None
    node_address: str | None = None
    """This node's address as VMware Tools reported it on the cluster network's NIC:
    the one to run Kubernetes (and keepalived) on."""


class Accepted(BaseModel):
    accepted: bool = True


class Health(BaseModel):
    status: str = "ok"


class Problem(BaseModel):
    """Why a request was refused."""

    detail: str
    retry_after: int | None = Field(
        default=None, description="Seconds to wait before asking again (also the Retry-After header)."
    )


class FieldProblem(BaseModel):
    """One problem of a request body, as pydantic names it."""

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationProblem(BaseModel):
    """A body that is not a valid request (``detail`` lists each problem), or a
    report its node's role may not send (``detail`` says which it may)."""

    detail: str | list[FieldProblem]


_NO_STORE = {
    "Cache-Control": {"description": "`no-store`: the body holds secrets", "schema": {"type": "string"}}
}
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait before asking again", "schema": {"type": "integer"}}
}
_UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    status.HTTP_401_UNAUTHORIZED: {
        "model": Problem,
        "description": "Missing, malformed, expired or foreign token; a missing node key, or "
        "another node key than the one this node's bootstrap is bound to; a node that is not "
        "bootstrapping (it reported, was given up, removed or replaced, or its cluster is gone); "
        "or an answer already served as often as it is served.",
        "headers": {
            "WWW-Authenticate": {
                "description": "the bearer challenge",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    },
}
_UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    status.HTTP_503_SERVICE_UNAVAILABLE: {
        "model": Problem,
        "description": "The orchestrator (Temporal) cannot answer right now; retry later.",
        "headers": _RETRY_AFTER,
    },
}


def _retry_later(status_code: int, detail: str) -> JSONResponse:
    return JSONResponse(
        Problem(detail=detail, retry_after=RETRY_AFTER_SECONDS).model_dump(mode="json"),
        status_code=status_code,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _returned_secrets_are_not_write_only(schema: dict[str, Any]) -> dict[str, Any]:
    """The node API takes no secret in any request, and the key material it sends
    masters is in its responses: pydantic's ``writeOnly`` on those fields would
    describe them as never returned, so it is dropped from the description."""
    for component in schema.get("components", {}).get("schemas", {}).values():
        for prop in component.get("properties", {}).values():
            prop.pop("writeOnly", None)
    return schema


def _external_etcd(
    cluster: str, material: BootstrapMaterial, credentials: EtcdCredentials
) -> ExternalEtcdClient | None:
    """The etcd endpoints and a new client certificate of the cluster's own etcd
    user (limited to its prefix), for this master alone."""
    etcd = material.external_etcd
    if etcd is None or material.etcd_prefix is None:
        return None
    user = etcd_users.cluster_user(cluster, material.cluster_uid)
    certificate = etcd_material.cluster_certificate(credentials, etcd.credential, user)
    return ExternalEtcdClient(endpoints=etcd.endpoints, prefix=material.etcd_prefix, certificate=certificate)


def create_app(
    client: Client,
    verifier: NodeTokenVerifier,
    credentials: StorageCredentials | None = None,
    etcd_credentials: EtcdCredentials | None = None,
) -> FastAPI:
    storage_accounts = credentials or StorageCredentials()
    unanswered = UnansweredCalls()
    etcd_accounts = etcd_credentials or EtcdCredentials()
    app = FastAPI(
        title="pke-vsphere node API",
        version="1",
        description="Called by booting nodes with their own bearer token and node key. Every `/v1` "
        "call acts for the node the token names (`self`), and only while that node bootstraps: "
        "from its VM's power-on until its report. Each answer is served once to the node key "
        "that made the node's first call, and again at most twice (network retries). A token of "
        "another node, cluster or incarnation, an expired one, or one whose node is done gets 401 "
        "and changes nothing.",
    )

    @app.middleware("http")
    async def access_log(request: Request, call_next: Any) -> Any:
        """One line per request: its route (never a token), status and duration, for
        operators and for ``make bench``'s latency figures."""
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        log.info(
            "nodeapi.request",
            method=request.method,
            route=getattr(route, "path", "unmatched"),
            status=response.status_code,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return response

    async def current_node(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
        node_key: Annotated[str | None, Security(node_key_scheme)],
    ) -> NodeCaller:
        structlog.contextvars.clear_contextvars()
        return identify(credentials, node_key, request.url.path, verifier)

    Node = Annotated[NodeCaller, Depends(current_node)]

    async def master_material(node: NodeCaller, node_address: str) -> BootstrapMaterial | JSONResponse:
        """The cluster's material for this master, or the 409 the cluster's refusal
        becomes (it is being deleted since the call was granted): its reason, not a 500."""
        handle = client.get_workflow_handle(ids.cluster_workflow_id(node.claims.cluster))
        # The call is granted (and counted) already: a busy cluster workflow is asked
        # again here rather than spending one of the node's few repeats.
        for attempt in range(1, MATERIAL_ATTEMPTS + 1):
            try:
                material: BootstrapMaterial = await handle.query(
                    Query.BOOTSTRAP_MATERIAL,
                    BootstrapMaterialRequest(node=node.claims.node),
                    result_type=BootstrapMaterial,
                )
                break
            except WorkflowQueryFailedError as exc:
                return _retry_later(status.HTTP_409_CONFLICT, exc.message)
            except (RPCError, RPCTimeoutOrCancelledError) as exc:
                if attempt == MATERIAL_ATTEMPTS:
                    raise _unavailable(exc) from None
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        if material.cluster_uid and material.cluster_uid != node.claims.cluster_uid:
            return _retry_later(status.HTTP_409_CONFLICT, "the cluster was re-created")
        return material.model_copy(update={"node_address": node_address})

    @app.get("/healthz", response_model=Health, summary="Liveness; needs no token")
    async def healthz() -> Health:
        return Health()

    @app.get(
        "/v1/nodes/self/bootstrap",
        response_model=MasterBootstrap,
        summary="A master's CAs, keys and keepalived configuration",
        responses={
            status.HTTP_200_OK: {"headers": _NO_STORE},
            **_UNAUTHORIZED,
            status.HTTP_403_FORBIDDEN: {"model": Problem, "description": "Workers never get the CAs."},
            status.HTTP_409_CONFLICT: {
                "model": Problem,
                "description": "Not now: VMware Tools has not reported the node's address, a repeat "
                "came right after an answer, the cluster is being deleted, or its external etcd's "
                "credential is unusable; `detail` says which.",
                "headers": _RETRY_AFTER,
            },
            **_UNAVAILABLE,
        },
    )
    async def bootstrap(node: Node) -> JSONResponse:
        grant = await authorize(client, unanswered, node, NodeCall.BOOTSTRAP)
        material = await master_material(node, grant.node_address)
        if isinstance(material, JSONResponse):
            return material
        conf = None
        if material.vip:
            assert material.vrrp_router_id is not None  # chosen at preflight for every VIP
            conf = keepalived.render(
                cluster=node.claims.cluster,
                vip=material.vip,
                interface=material.vrrp_interface,
                router=material.vrrp_router_id,
                node_priority=material.vrrp_priority,
                api_port=material.api_port,
                password=material.pki.vrrp_password.get_secret_value(),
            )
        try:
            etcd = _external_etcd(node.claims.cluster, material, etcd_accounts)
        except etcd_material.EtcdCredentialError as exc:
            # The node learns which credential; the details (file names) stay in this log.
            log.warning("nodeapi.etcd_credential_unusable", problem=str(exc))
            assert material.external_etcd is not None
            return _retry_later(
                status.HTTP_409_CONFLICT,
                f"the orchestrator cannot use etcd credential {material.external_etcd.credential!r} now",
            )
        log.info("nodeapi.bootstrap_served", external_etcd=etcd is not None)
        body = MasterBootstrap(
            pki=material.pki,
            api_endpoint=material.api_endpoint,
            vip=material.vip,
            keepalived_conf=conf,
            external_etcd=etcd,
            node_address=material.node_address,
        )
        return JSONResponse(body.model_dump(mode="json"), headers={"Cache-Control": "no-store"})

    @app.get(
        "/v1/nodes/self/addons",
        response_model=AddonBundle,
        summary="What the leader applies after install: the cloud provider's Secret and ConfigMap, "
        "MetalLB's configuration, the CSI Secret and StorageClass",
        responses={
            status.HTTP_200_OK: {"headers": _NO_STORE},
            **_UNAUTHORIZED,
            status.HTTP_403_FORBIDDEN: {"model": Problem, "description": "Only the leader applies add-ons."},
            status.HTTP_409_CONFLICT: {
                "model": Problem,
                "description": "The cluster cannot hand out its add-ons now; `detail` says why.",
                "headers": _RETRY_AFTER,
            },
            **_UNAVAILABLE,
        },
    )
    async def addons(node: Node) -> JSONResponse:
        grant = await authorize(client, unanswered, node, NodeCall.ADDONS)
        material = await master_material(node, grant.node_address)
        if isinstance(material, JSONResponse):
            return material
        try:
            bundle = addon_bundle.build(node.claims.cluster, material, storage_accounts)
        except addon_bundle.MissingCredential as exc:
            return _retry_later(status.HTTP_409_CONFLICT, str(exc))
        log.info("nodeapi.addons_served", addons=[a.name for a in bundle.addons])
        return JSONResponse(bundle.model_dump(mode="json"), headers={"Cache-Control": "no-store"})

    @app.get(
        "/v1/nodes/self/join",
        response_model=JoinInfo,
        summary="How a follower master or a worker joins: bootstrap token, CA hash, API endpoint",
        responses={
            status.HTTP_200_OK: {"headers": _NO_STORE},
            **_UNAUTHORIZED,
            status.HTTP_403_FORBIDDEN: {
                "model": Problem,
                "description": "The leader does not join.",
            },
            status.HTTP_409_CONFLICT: {
                "model": Problem,
                "description": "Not yet (VMware Tools has not reported the node's address), or a repeat "
                "right after an answer; retry after `Retry-After` seconds.",
                "headers": _RETRY_AFTER,
            },
            **_UNAVAILABLE,
        },
    )
    async def join(node: Node) -> JSONResponse:
        grant = await authorize(client, unanswered, node, NodeCall.JOIN)
        info = grant.join
        if info is None:  # a node workflow always sends it with a join grant
            raise unavailable("join information is unavailable right now")
        log.info("nodeapi.join_served", expires_at=info.expires_at.isoformat(), served=grant.served)
        return JSONResponse(info.model_dump(mode="json"), headers={"Cache-Control": "no-store"})

    @app.post(
        "/v1/nodes/self/report",
        response_model=Accepted,
        status_code=status.HTTP_202_ACCEPTED,
        summary="The node's own progress: ready (leader), joined (others) or failed",
        responses={
            status.HTTP_400_BAD_REQUEST: {
                "model": Problem,
                "description": "The body cannot be read at all (e.g. not UTF-8); like a body that is "
                "not JSON (422), it is refused before the token is looked at.",
            },
            **_UNAUTHORIZED,
            status.HTTP_409_CONFLICT: {
                "model": Problem,
                "description": "Not yet: VMware Tools has not reported the node's address; retry.",
                "headers": _RETRY_AFTER,
            },
            status.HTTP_422_UNPROCESSABLE_CONTENT: {
                "model": ValidationProblem,
                "description": "Not a valid report, or a kind the node's role does not send.",
            },
            **_UNAVAILABLE,
        },
    )
    async def report(report: NodeReport, node: Node) -> Accepted:
        await authorize(client, unanswered, node, NodeCall.REPORT, report)
        log.info("nodeapi.report", kind=report.kind.value)
        return Accepted()

    app.openapi_schema = _returned_secrets_are_not_write_only(app.openapi())
    return app


def _unavailable(exc: Exception) -> HTTPException:
    status_code = exc.status if isinstance(exc, RPCError) else None
    log.warning("nodeapi.temporal_error", status=str(status_code), error=str(exc))
    return unavailable()
