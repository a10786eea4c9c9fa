"""The few etcd v3 calls the orchestrator makes, through etcd's JSON gateway
(``/v3/kv/...`` on the client port; keys and values are base64): is a member
healthy, how many keys lie under a prefix, delete them, write one.

A cluster's data lives under its prefix (kube-apiserver's ``--etcd-prefix``):
``PREFIX/pods/...``. The range ``[PREFIX/, PREFIX0)`` holds exactly those keys
(``0`` follows ``/``), so ``/a`` never touches ``/ab``.
"""

from __future__ import annotations

import base64
import ssl
from typing import Any

import httpx

TIMEOUT_SECONDS = 5.0


class EtcdUnavailable(Exception):
    """An endpoint could not be reached, refused the client, or is unhealthy."""


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def prefix_range(prefix: str) -> dict[str, str]:
    return {"key": _b64(prefix + "/"), "range_end": _b64(prefix + "0")}


class EtcdGateway:
    """One etcd endpoint (``https://host:port``), with a client certificate."""

    def __init__(self, endpoint: str, context: ssl.SSLContext, timeout: float = TIMEOUT_SECONDS) -> None:
        self.endpoint = endpoint
        self._http = httpx.Client(base_url=endpoint, verify=context, timeout=timeout)

    def __enter__(self) -> EtcdGateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, json=body)
        except ssl.SSLError as exc:
            raise EtcdUnavailable(f"TLS: {exc.reason or exc}") from None
        except httpx.ConnectError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLError):
                raise EtcdUnavailable(f"TLS: {cause.reason or cause}") from None
            raise EtcdUnavailable(f"cannot connect ({exc})") from None
        except httpx.HTTPError as exc:
            raise EtcdUnavailable(f"{type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise EtcdUnavailable(f"{path} answered HTTP {response.status_code}: {response.text[:200]}")
        result: dict[str, Any] = response.json()
        return result

    def check_health(self) -> None:
        health = self._call("GET", "/health")
        if str(health.get("health")) != "true":
            raise EtcdUnavailable(f"unhealthy ({health.get('reason') or health})")

    def count(self, prefix: str) -> int:
        body = {**prefix_range(prefix), "count_only": True}
        return int(self._call("POST", "/v3/kv/range", body).get("count", 0))

    def keys(self, prefix: str) -> list[str]:
        body = {**prefix_range(prefix), "keys_only": True}
        kvs = self._call("POST", "/v3/kv/range", body).get("kvs", [])
        return [base64.b64decode(kv["key"]).decode() for kv in kvs]

    def delete(self, prefix: str) -> int:
        return int(self._call("POST", "/v3/kv/deleterange", prefix_range(prefix)).get("deleted", 0))

    def put(self, key: str, value: str) -> None:
        self._call("POST", "/v3/kv/put", {"key": _b64(key), "value": _b64(value)})
