"""The few etcd v3 calls the orchestrator makes, through etcd's JSON gateway
(``/v3/kv/...`` on the client port; keys and values are base64): is a member
healthy, how many keys lie under a prefix, read or write one, and the two
transactions that make a prefix a cluster's own: claim it (create its owner key
only if absent) and clear it (only while the owner key still names the cluster).

A cluster's data lives under its prefix (kube-apiserver's ``--etcd-prefix``):
``PREFIX/pods/...``. The range ``[PREFIX/, PREFIX0)`` holds exactly those keys
(``0`` follows ``/``), so ``/a`` never touches ``/ab``.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable
from typing import Any, TypeVar

import httpx

# A dead endpoint costs at most CONNECT_SECONDS; a large range delete may take longer.
CONNECT_SECONDS = 5.0
TIMEOUT_SECONDS = 30.0

T = TypeVar("T")


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
        self._http = httpx.Client(
            base_url=endpoint, verify=context, timeout=httpx.Timeout(timeout, connect=CONNECT_SECONDS)
        )

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

    def get(self, key: str) -> str | None:
        kvs = self._call("POST", "/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return base64.b64decode(kvs[0].get("value", "")).decode() if kvs else None

    def claim(self, key: str, value: str) -> bool:
        """Create ``key`` with ``value`` unless it exists; whether this call created it."""
        txn = {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}],
        }
        return bool(self._call("POST", "/v3/kv/txn", txn).get("succeeded"))

    def delete_if(self, prefix: str, key: str, value: str) -> int | None:
        """Delete every key under ``prefix`` if ``key`` holds ``value``: how many, or
        None when it does not (the prefix is not, or no longer, the caller's)."""
        txn = {
            "compare": [{"key": _b64(key), "result": "EQUAL", "target": "VALUE", "value": _b64(value)}],
            "success": [{"request_delete_range": prefix_range(prefix)}],
        }
        result = self._call("POST", "/v3/kv/txn", txn)
        if not result.get("succeeded"):
            return None
        deleted = result["responses"][0]["response_delete_range"].get("deleted", 0)
        return int(deleted)


def first_answer(endpoints: list[str], context: ssl.SSLContext, call: Callable[[EtcdGateway], T]) -> T:
    """``call`` on the first endpoint that answers; every endpoint's failure if none does."""
    failures = []
    for endpoint in endpoints:
        with EtcdGateway(endpoint, context) as gateway:
            try:
                return call(gateway)
            except EtcdUnavailable as exc:
                failures.append(f"{endpoint}: {exc}")
    raise EtcdUnavailable("; ".join(failures))
