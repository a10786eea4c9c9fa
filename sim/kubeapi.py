"""A stand-in Kubernetes API server, served by the simulated leader.

A stand-in because no real API server can run here. It serves HTTPS with a
certificate signed by the cluster CA the leader fetched from the node API, on
the leader's address and the VIP, on the control plane's port, and requires a client
certificate signed by that CA. It implements only what the orchestrator's
real client (lightkube) uses, in the shapes the real API answers with:

- ``GET /healthz``, ``/readyz``, ``/livez``
- ``GET /api/v1/nodes``, ``GET|PATCH|DELETE /api/v1/nodes/{name}`` (PATCH
  applies ``spec.unschedulable``)
- ``GET /api/v1/pods?fieldSelector=spec.nodeName=NAME`` and
  ``GET /api/v1/namespaces/{ns}/pods``
- ``POST /api/v1/namespaces/{ns}/pods/{name}/eviction`` (429 for pods a
  test marks as protected by a PodDisruptionBudget)
- ``GET|POST /api/v1/namespaces/kube-system/secrets`` and
  ``DELETE /api/v1/namespaces/kube-system/secrets/{name}`` (bootstrap tokens)

Every call is recorded with its time so tests can assert the order of a drain.
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from pke_vsphere.pki import authority


@dataclass
class Call:
    at: float
    verb: str
    resource: str
    name: str


@dataclass
class ClusterObjects:
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # "ns/name" -> pod
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets_created: list[dict[str, Any]] = field(default_factory=list)  # every one, deleted or not
    protected: set[str] = field(default_factory=set)  # "ns/name" a PDB holds
    calls: list[Call] = field(default_factory=list)
    # What the leader applied after install (add-ons), by (kind, "ns/name").
    applied: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    installed: list[str] = field(default_factory=list)  # release manifests the leader applied


def _status(code: int, reason: str, message: str) -> JSONResponse:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip
    return JSONResponse(body, status_code=code)


def _list(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}


def create_app(objects: ClusterObjects) -> FastAPI:
    app = FastAPI(title="stand-in Kubernetes API")

    def record(verb: str, resource: str, name: str) -> None:
        objects.calls.append(Call(time.time(), verb, resource, name))

    @app.get("/healthz")
    @app.get("/readyz")
    @app.get("/livez")
    async def healthz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/api/v1/nodes")
    async def list_nodes() -> dict[str, Any]:
        return _list("NodeList", list(objects.nodes.values()))

    @app.get("/api/v1/nodes/{name}", response_model=None)
    async def get_node(name: str) -> dict[str, Any] | JSONResponse:
        node = objects.nodes.get(name)
        return node if node else _status(404, "NotFound", f'nodes "{name}" not found')

    @app.patch("/api/v1/nodes/{name}", response_model=None)
    async def patch_node(name: str, request: Request) -> dict[str, Any] | JSONResponse:
        node = objects.nodes.get(name)
        if node is None:
            return _status(404, "NotFound", f'nodes "{name}" not found')
        patch = await request.json()
        if "unschedulable" in patch.get("spec", {}):
            node["spec"]["unschedulable"] = bool(patch["spec"]["unschedulable"])
            record("cordon", "nodes", name)
        return node

    @app.delete("/api/v1/nodes/{name}", response_model=None)
    async def delete_node(name: str) -> dict[str, Any] | JSONResponse:
        node = objects.nodes.pop(name, None)
        if node is None:
            return _status(404, "NotFound", f'nodes "{name}" not found')
        for key in [k for k, p in objects.pods.items() if p["spec"]["nodeName"] == name]:
            del objects.pods[key]
        record("delete", "nodes", name)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}

    def pods_matching(field_selector: str | None, namespace: str | None) -> list[dict[str, Any]]:
        node = None
        if field_selector:
            key, _, value = field_selector.partition("=")
            if key != "spec.nodeName":
                raise HTTPException(400, f"field selector {key} is not supported by this stand-in")
            node = value
        return [
            p
            for p in objects.pods.values()
            if (node is None or p["spec"]["nodeName"] == node)
            and (namespace is None or p["metadata"]["namespace"] == namespace)
        ]

    @app.get("/api/v1/pods")
    async def list_pods(fieldSelector: str | None = None) -> dict[str, Any]:
        return _list("PodList", pods_matching(fieldSelector, None))

    @app.get("/api/v1/namespaces/{namespace}/pods")
    async def list_namespaced_pods(namespace: str, fieldSelector: str | None = None) -> dict[str, Any]:
        return _list("PodList", pods_matching(fieldSelector, namespace))

    @app.post("/api/v1/namespaces/{namespace}/pods/{name}/eviction", response_model=None)
    async def evict(namespace: str, name: str, request: Request) -> dict[str, Any] | JSONResponse:
        key = f"{namespace}/{name}"
        if key not in objects.pods:
            return _status(404, "NotFound", f'pods "{name}" not found')
        if key in objects.protected:
            record("eviction-refused", "pods", key)
            return _status(
                429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget."
            )
        del objects.pods[key]
        record("evict", "pods", key)
        body: dict[str, Any] = await request.json()
        return JSONResponse(body, status_code=201)

    @app.get("/api/v1/namespaces/kube-system/secrets")
    async def list_secrets() -> dict[str, Any]:
        return _list("SecretList", list(objects.secrets.values()))

    @app.post("/api/v1/namespaces/kube-system/secrets", response_model=None)
    async def create_secret(request: Request) -> JSONResponse:
        secret = await request.json()
        name = secret["metadata"]["name"]
        if name in objects.secrets:
            return _status(409, "AlreadyExists", f'secrets "{name}" already exists')
        secret["metadata"]["namespace"] = "kube-system"
        objects.secrets[name] = secret
        objects.secrets_created.append(secret)
        record("create", "secrets", name)
        return JSONResponse(secret, status_code=201)

    @app.delete("/api/v1/namespaces/kube-system/secrets/{name}", response_model=None)
    async def delete_secret(name: str) -> dict[str, Any] | JSONResponse:
        secret = objects.secrets.pop(name, None)
        if secret is None:
            return _status(404, "NotFound", f'secrets "{name}" not found')
        record("delete", "secrets", name)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}

    return app


class StandInKubeAPI:
    """One cluster's stand-in API, served on every address it is given."""

    def __init__(self, ca_cert_pem: str, ca_key_pem: str) -> None:
        self.objects = ClusterObjects()
        self._ca_cert_pem = ca_cert_pem
        self._ca = authority.load(ca_cert_pem, ca_key_pem)
        self._dir = tempfile.TemporaryDirectory(prefix="pke-standin-api-")
        self._servers: dict[tuple[str, int], tuple[uvicorn.Server, asyncio.Task[None]]] = {}
        self._app = create_app(self.objects)

    @property
    def addresses(self) -> list[str]:
        """Every ``host:port`` it serves on."""
        return [f"{host}:{port}" for host, port in self._servers]

    def apply(self, manifest: str) -> list[tuple[str, str]]:
        """``kubectl apply -f -`` of the leader's add-on manifests, in process: each
        document goes through lightkube's models (unknown kinds as generic
        resources), as a real client would send it; returns what was stored."""
        from lightkube import codecs

        from pke_vsphere.render.addons import metallb

        metallb.register_models()
        stored = []
        for obj in codecs.load_all_yaml(manifest, create_resources_for_crds=True):
            data = obj.to_dict()
            meta = data["metadata"]
            key = (data["kind"], f"{meta.get('namespace', '')}/{meta['name']}")
            self.objects.applied[key] = data
            self.objects.calls.append(Call(time.time(), "apply", data["kind"], meta["name"]))
            stored.append(key)
        return stored

    async def serve(self, host: str, port: int) -> None:
        """Serve on ``host:port`` (idempotent), with a certificate naming every address."""
        if (host, port) in self._servers:
            return
        hosts = list(dict.fromkeys([*(h for h, _ in self._servers), host]))
        leaf = authority.issue(
            self._ca,
            "kube-apiserver",
            dns_names=("kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ip_addresses=tuple(hosts),
            server=True,
        )
        cert, key = Path(self._dir.name, f"{host}-{port}.crt"), Path(self._dir.name, f"{host}-{port}.key")
        ca = Path(self._dir.name, "ca.crt")
        cert.write_text(leaf.cert_pem())
        key.write_text(leaf.key_pem())
        ca.write_text(self._ca_cert_pem)
        config = uvicorn.Config(
            self._app,
            host=host,
            port=port,
            ssl_certfile=str(cert),
            ssl_keyfile=str(key),
            ssl_ca_certs=str(ca),
            ssl_cert_reqs=ssl.CERT_REQUIRED,
            log_config=None,
            access_log=False,
            lifespan="off",
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()  # raises the bind error
                raise RuntimeError(f"stand-in API on {host}:{port} stopped at start")
            await asyncio.sleep(0.02)
        self._servers[(host, port)] = (server, task)

    async def stop(self) -> None:
        for server, _ in self._servers.values():
            server.should_exit = True
        await asyncio.gather(*(task for _, task in self._servers.values()), return_exceptions=True)
        self._servers.clear()
        self._dir.cleanup()

    # --- what nodes do on their own ---------------------------------------------------
    def register_node(self, name: str, pool: str, kind: str, pods: int) -> None:
        """What a kubelet does on join: a Node object; workers also get some pods."""
        self.objects.nodes[name] = {
            "kind": "Node",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "labels": {"node.pke-vsphere.io/pool": pool, "pke-vsphere/kind": kind},
            },
            "spec": {"unschedulable": False},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
        for i in range(1, pods + 1):
            pod_name = f"app-{name}-{i}"
            self.objects.pods[f"default/{pod_name}"] = {
                "kind": "Pod",
                "apiVersion": "v1",
                "metadata": {"name": pod_name, "namespace": "default"},
                "spec": {"nodeName": name, "containers": [{"name": "app", "image": "app:1"}]},
            }

    def set_ready(self, name: str, ready: bool) -> None:
        """What the node controller does when a kubelet stops or resumes reporting."""
        node = self.objects.nodes.get(name)
        if node is not None:
            node["status"]["conditions"] = [{"type": "Ready", "status": "True" if ready else "Unknown"}]

    def accepts_token(self, token: str, now: datetime | None = None) -> bool:
        """Whether kubeadm would accept this bootstrap token: its Secret exists and is unexpired."""
        token_id, _, secret = token.partition(".")
        stored = self.objects.secrets.get(f"bootstrap-token-{token_id}")
        if stored is None:
            return False
        data = stored.get("stringData", {})
        expires = datetime.strptime(data.get("expiration", ""), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        return bool(data.get("token-secret") == secret and expires > (now or datetime.now(UTC)))
