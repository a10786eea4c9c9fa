"""One vCenter session per worker process: opened lazily, shared by every
activity thread, verified TLS by default, logged in again when it expires, and
logged out at worker shutdown.

Every connection the session opens has a timeout (a half-open connection must
not hold a thread and a vCenter task slot forever) and, with a pinned
thumbprint, is checked against the pin, the one that logs in included. When the
session expires, only read calls are sent again after the new login (see
``vsphere/retries.py``); a call that changes vCenter fails, and its activity's
retry looks at vCenter before doing anything.
"""

from __future__ import annotations

import contextvars
import hashlib
import http.client
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from pyVim import connect

from pke_vsphere.config import VCenterSettings
from pke_vsphere.vsphere import retries
from pke_vsphere.vsphere.errors import PermanentError
from pke_vsphere.vsphere.watcher import Watcher

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Seconds a SOAP request may wait on the network; longer than the longest
# property-collector wait (vsphere/waits.py asks for at most 5 s).
SOAP_TIMEOUT_SECONDS = 30


# The timeout of the session logging in on this thread.
_connect_timeout: contextvars.ContextVar[float] = contextvars.ContextVar(
    "vcenter_connect_timeout", default=SOAP_TIMEOUT_SECONDS
)


class _TimedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", _connect_timeout.get())
        super().__init__(*args, **kwargs)


class _TimedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", _connect_timeout.get())
        super().__init__(*args, **kwargs)


# SmartConnect first asks the server which API versions it speaks, on connections
# of its own that have no timeout (a silent vCenter would hang the login for ever):
# give the ones pyVim.connect opens one. The SOAP connections themselves get
# ``httpConnectionTimeout``.
connect.HTTPConnection = _TimedHTTPConnection  # type: ignore[attr-defined]
connect.HTTPSConnection = _TimedHTTPSConnection  # type: ignore[attr-defined]


class PinnedContext(ssl.SSLContext):
    """TLS that accepts exactly the certificate with the pinned SHA-256 thumbprint,
    checked on every connection right after its handshake."""

    pin: str

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        tls = super().wrap_socket(sock, *args, **kwargs)
        actual = hashlib.sha256(tls.getpeercert(binary_form=True) or b"").hexdigest()
        if actual != self.pin:
            tls.close()
            raise ssl.SSLCertVerificationError(
                f"vCenter certificate SHA-256 thumbprint {actual} does not match the pinned one"
            )
        return tls


def pinned_context(thumbprint: str) -> PinnedContext:
    ctx = PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.pin = thumbprint.replace(":", "").lower()
    return ctx


POOL_MARGIN = 16
"""Connections kept beyond the task cap: the watcher's long poll, reads, logins."""


class ServiceInstance:
    """A ServiceInstance whose ``content`` is read once, at login: pyvmomi sends a
    SOAP ``Fetch`` for every ``si.content`` otherwise, which was a third of the
    worker's requests. The content's references (search index, property
    collector, ...) stay valid across a re-login on the same connection. It
    carries the session's shared property collector (``watcher``)."""

    def __init__(self, si: Any) -> None:
        self.raw = si
        self.content = si.RetrieveContent()
        self._stub = si._stub
        self.watcher = Watcher(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class VCenterSession:
    """Owns the connection; ``run`` calls a function with a live ServiceInstance."""

    def __init__(self, settings: VCenterSettings, timeout: float = SOAP_TIMEOUT_SECONDS) -> None:
        self._settings = settings
        self._timeout = timeout
        self._lock = threading.Lock()
        self._si: Any = None
        self._generation = 0
        self.logins = 0

    @property
    def settings(self) -> VCenterSettings:
        return self._settings

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self._settings
        if urlsplit(s.vcenter_url).scheme != "https":
            return None
        if s.vcenter_insecure:
            log.warning("vcenter.tls_verification_disabled", url=s.vcenter_url)
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        if s.vcenter_thumbprint:
            return pinned_context(s.vcenter_thumbprint)
        return ssl.create_default_context(cafile=str(s.vcenter_ca_file) if s.vcenter_ca_file else None)

    def _connect(self) -> Any:
        s = self._settings
        url = urlsplit(s.vcenter_url)
        scheme = url.scheme or "https"
        if scheme not in ("https", "http"):
            raise PermanentError(f"PKE_VSPHERE_VCENTER_URL: {scheme}:// is not a vCenter URL; use https://")
        if scheme == "http" and not s.vcenter_insecure:
            raise PermanentError(
                "PKE_VSPHERE_VCENTER_URL: http:// would send the vCenter password unencrypted; "
                "use https:// (or set PKE_VSPHERE_VCENTER_INSECURE=true for a lab)"
            )
        port = url.port or (443 if scheme == "https" else 80)
        _connect_timeout.set(self._timeout)
        si = connect.SmartConnect(
            protocol=scheme,
            host=url.hostname,
            port=port,
            path=url.path or "/sdk",
            user=s.vcenter_username,
            pwd=s.password(),
            sslContext=self._ssl_context(),
            # With this set pyvmomi would replace the context above (and its pin).
            disableSslCertValidation=s.vcenter_insecure,
            httpConnectionTimeout=self._timeout,
        )
        # Keep as many connections open as calls run at once: up to the task cap's
        # worth of task calls besides the watcher's long poll and the reads. With
        # pyVmomi's 5, every call past the fifth opened a connection (a TCP and TLS
        # handshake with vCenter) and closed it after its reply.
        si._stub.poolSize = s.vcenter_max_concurrent_tasks + POOL_MARGIN
        retries.retry_reads(si._stub, relogin=self._relogin, generation=lambda: self._generation)
        self.logins += 1
        log.info("vcenter.login", url=s.vcenter_url, user=s.vcenter_username, logins=self.logins)
        return ServiceInstance(si)

    def service_instance(self) -> Any:
        with self._lock:
            if self._si is None:
                self._si = self._connect()
            return self._si

    def _relogin(self, seen: int) -> None:
        """Log in again on the same connection (every object reference stays valid),
        unless another thread already did since generation ``seen``."""
        with self._lock:
            if self._si is None or self._generation != seen:
                return
            log.info("vcenter.session_expired", url=self._settings.vcenter_url)
            s = self._settings
            self._si.content.sessionManager.Login(userName=s.vcenter_username, password=s.password())
            self._generation += 1
            self.logins += 1
            log.info("vcenter.login", url=s.vcenter_url, user=s.vcenter_username, logins=self.logins)

    def run(self, fn: Callable[[Any], T]) -> T:
        """Call ``fn(service_instance)``."""
        return fn(self.service_instance())

    def close(self) -> None:
        """Log out (at worker shutdown): vCenter limits sessions per user."""
        with self._lock:
            if self._si is not None:
                try:
                    self._si.watcher.close()
                    connect.Disconnect(self._si.raw)
                    log.info("vcenter.logout", url=self._settings.vcenter_url)
                except Exception as exc:  # logging out of a dead session is best effort
                    log.debug("vcenter.logout_failed", error=str(exc))
                self._si = None
