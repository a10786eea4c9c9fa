"""The etcd v3 calls the orchestrator makes, over gRPC with a client certificate
(whose common name is the etcd user once authentication is on): is a member
healthy, how many keys lie under a prefix, read or write one, the two
transactions that make a prefix a cluster's own (claim it: create its owner key
only if absent; clear it: only while the owner key still names the cluster),
and the users and roles that keep each cluster's masters inside its prefix.

A cluster's data lives under its prefix (kube-apiserver's ``--etcd-prefix``):
``PREFIX/pods/...``. The range ``[PREFIX/, PREFIX0)`` holds exactly those keys
(``0`` follows ``/``), so ``/a`` never touches ``/ab``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc

from pke_vsphere.contracts.pki import EtcdClientCertificate
from pke_vsphere.etcd import wire

# A dead endpoint costs at most CONNECT_SECONDS; a large range delete may take longer.
CONNECT_SECONDS = 5.0
TIMEOUT_SECONDS = 30.0

T = TypeVar("T")


# etcd's ErrAuthOldRevision, and how often a call refused with it is sent.
AUTH_REVISION_OLD = "revision of auth store is old"
AUTH_REVISION_TRIES = 5


class EtcdUnavailable(Exception):
    """An endpoint could not be reached, refused the client, or is unhealthy."""


class EtcdRefused(EtcdUnavailable):
    """The endpoint answered, and refused the call (a permission, an unknown user)."""

    def __init__(self, message: str, code: grpc.StatusCode) -> None:
        super().__init__(message)
        self.code = code


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    return (prefix + "/").encode(), (prefix + "0").encode()


def target(endpoint: str) -> str:
    """``https://host:port`` -> ``host:port`` (gRPC verifies the certificate for host)."""
    parts = urlsplit(endpoint)
    if parts.scheme != "https" or not parts.hostname or parts.port is None:
        raise EtcdUnavailable(f"{endpoint}: not an https://host:port endpoint")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{parts.port}"


class EtcdClient:
    """One etcd endpoint (``https://host:port``), with a client certificate."""

    def __init__(
        self, endpoint: str, certificate: EtcdClientCertificate, timeout: float = TIMEOUT_SECONDS
    ) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        credentials = grpc.ssl_channel_credentials(
            root_certificates=certificate.ca_cert_pem.encode(),
            private_key=certificate.key_pem.get_secret_value().encode(),
            certificate_chain=certificate.cert_pem.encode(),
        )
        self._channel = grpc.secure_channel(target(endpoint), credentials)
        self._connected = False

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def _call(self, method: str, request: Any) -> Any:
        if not self._connected:
            try:
                grpc.channel_ready_future(self._channel).result(timeout=CONNECT_SECONDS)
            except grpc.FutureTimeoutError:
                raise EtcdUnavailable(
                    f"cannot connect (no TLS session within {CONNECT_SECONDS:.0f}s)"
                ) from None
            self._connected = True
        _, response = wire.METHODS[method]
        stub: grpc.UnaryUnaryMultiCallable[Any, Any] = self._channel.unary_unary(
            method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=wire.message_class(response).FromString,
        )
        for attempt in range(1, AUTH_REVISION_TRIES + 1):
            try:
                return stub(request, timeout=self._timeout)
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                detail = exc.details()  # type: ignore[attr-defined]
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise EtcdUnavailable(f"{method}: {detail}") from None
                # Another client changed users or roles between etcd's permission check
                # and the call's apply (two clusters' preflights at once): etcd's own
                # client sends the call again, and so does this one.
                if AUTH_REVISION_OLD in (detail or "") and attempt < AUTH_REVISION_TRIES:
                    time.sleep(0.05 * attempt)
                    continue
                raise EtcdRefused(f"{method}: {detail}", code) from None
        raise AssertionError("unreachable")

    # --- keys ----------------------------------------------------------------------
    def check_health(self) -> None:
        status = self._call("/etcdserverpb.Maintenance/Status", wire.message("StatusRequest"))
        if status.errors:
            raise EtcdUnavailable(f"unhealthy: {'; '.join(status.errors)}")
        if not status.leader:
            raise EtcdUnavailable("unhealthy: no leader")

    def count(self, prefix: str) -> int:
        key, end = prefix_range(prefix)
        request = wire.message("RangeRequest", key=key, range_end=end, count_only=True)
        return int(self._call("/etcdserverpb.KV/Range", request).count)

    def keys(self, prefix: str) -> list[str]:
        key, end = prefix_range(prefix)
        request = wire.message("RangeRequest", key=key, range_end=end, keys_only=True)
        return [kv.key.decode() for kv in self._call("/etcdserverpb.KV/Range", request).kvs]

    def delete(self, prefix: str) -> int:
        key, end = prefix_range(prefix)
        request = wire.message("DeleteRangeRequest", key=key, range_end=end)
        return int(self._call("/etcdserverpb.KV/DeleteRange", request).deleted)

    def put(self, key: str, value: str) -> None:
        self._call("/etcdserverpb.KV/Put", wire.message("PutRequest", key=key.encode(), value=value.encode()))

    def get(self, key: str) -> str | None:
        kvs = self._call("/etcdserverpb.KV/Range", wire.message("RangeRequest", key=key.encode())).kvs
        return kvs[0].value.decode() if kvs else None

    def claim(self, key: str, value: str) -> bool:
        """Create ``key`` with ``value`` unless it exists; whether this call created it."""
        absent = wire.message(
            "Compare", result=wire.EQUAL, target=wire.CREATE, key=key.encode(), create_revision=0
        )
        put = wire.message(
            "RequestOp", request_put=wire.message("PutRequest", key=key.encode(), value=value.encode())
        )
        txn = wire.message("TxnRequest", compare=[absent], success=[put])
        return bool(self._call("/etcdserverpb.KV/Txn", txn).succeeded)

    def delete_if(self, prefix: str, key: str, value: str) -> int | None:
        """Delete every key under ``prefix`` if ``key`` holds ``value``: how many, or
        None when it does not (the prefix is not, or no longer, the caller's)."""
        holds = wire.message(
            "Compare", result=wire.EQUAL, target=wire.VALUE, key=key.encode(), value=value.encode()
        )
        start, end = prefix_range(prefix)
        delete = wire.message(
            "RequestOp", request_delete_range=wire.message("DeleteRangeRequest", key=start, range_end=end)
        )
        result = self._call(
            "/etcdserverpb.KV/Txn", wire.message("TxnRequest", compare=[holds], success=[delete])
        )
        if not result.succeeded:
            return None
        return int(result.responses[0].response_delete_range.deleted)

    # --- users and roles ------------------------------------------------------------
    def ensure_prefix_user(self, user: str, prefix: str) -> None:
        """A user (certificate common name, no password) whose one role reads and writes
        ``[PREFIX/, PREFIX0)`` and nothing else; what exists already is kept."""
        start, end = prefix_range(prefix)
        self._exists_ok("/etcdserverpb.Auth/RoleAdd", wire.message("AuthRoleAddRequest", name=user))
        permission = wire.message("Permission", perm_type=wire.READWRITE, key=start, range_end=end)
        grant = wire.message("AuthRoleGrantPermissionRequest", name=user, perm=permission)
        self._call("/etcdserverpb.Auth/RoleGrantPermission", grant)
        options = wire.message("UserAddOptions", no_password=True)
        self._exists_ok(
            "/etcdserverpb.Auth/UserAdd", wire.message("AuthUserAddRequest", name=user, options=options)
        )
        self._call(
            "/etcdserverpb.Auth/UserGrantRole", wire.message("AuthUserGrantRoleRequest", user=user, role=user)
        )

    def ensure_root_and_enable_auth(self) -> None:
        """etcd's root user (no password: its certificate's common name), then
        authentication on (what an operator does once; the tests' etcd does it)."""
        self._exists_ok("/etcdserverpb.Auth/RoleAdd", wire.message("AuthRoleAddRequest", name="root"))
        options = wire.message("UserAddOptions", no_password=True)
        self._exists_ok(
            "/etcdserverpb.Auth/UserAdd", wire.message("AuthUserAddRequest", name="root", options=options)
        )
        self._call(
            "/etcdserverpb.Auth/UserGrantRole",
            wire.message("AuthUserGrantRoleRequest", user="root", role="root"),
        )
        self._call("/etcdserverpb.Auth/AuthEnable", wire.message("AuthEnableRequest"))

    def remove_prefix_user(self, user: str) -> bool:
        """Delete the user and its role; False if neither existed."""
        removed = self._gone_ok(
            "/etcdserverpb.Auth/UserDelete", wire.message("AuthUserDeleteRequest", name=user)
        )
        removed |= self._gone_ok(
            "/etcdserverpb.Auth/RoleDelete", wire.message("AuthRoleDeleteRequest", role=user)
        )
        return removed

    def user_roles(self, user: str) -> list[str] | None:
        """The user's roles; None if there is no such user."""
        try:
            return list(
                self._call("/etcdserverpb.Auth/UserGet", wire.message("AuthUserGetRequest", name=user)).roles
            )
        except EtcdRefused as exc:
            if exc.code is grpc.StatusCode.FAILED_PRECONDITION:
                return None
            raise

    def _exists_ok(self, method: str, request: Any) -> None:
        try:
            self._call(method, request)
        except EtcdRefused as exc:
            if not (exc.code is grpc.StatusCode.FAILED_PRECONDITION and "already exists" in str(exc)):
                raise

    def _gone_ok(self, method: str, request: Any) -> bool:
        try:
            self._call(method, request)
        except EtcdRefused as exc:
            if exc.code is grpc.StatusCode.FAILED_PRECONDITION and "not found" in str(exc):
                return False
            raise
        return True


def first_answer(
    endpoints: list[str], certificate: EtcdClientCertificate, call: Callable[[EtcdClient], T]
) -> T:
    """``call`` on the first endpoint that answers; every endpoint's failure if none
    does. A refusal is an answer: it is raised at once."""
    failures = []
    for endpoint in endpoints:
        try:
            with EtcdClient(endpoint, certificate) as client:
                return call(client)
        except EtcdRefused:
            raise
        except EtcdUnavailable as exc:
            failures.append(f"{endpoint}: {exc}")
    raise EtcdUnavailable("; ".join(failures))
