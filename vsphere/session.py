"""One vCenter session per worker process: opened lazily, shared by every
activity thread, verified TLS by default, and re-established when it expires."""

from __future__ import annotations

import hashlib
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog
from pyVim import connect
from pyVmomi import vim

from settings import VCenterSettings
from vsphere import retries

log = structlog.get_logger(__name__)
T = TypeVar("T")


class VCenterSession:
    """Owns the connection; ``run`` calls a function with a live ServiceInstance."""

    def __init__(self, settings: VCenterSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._si: Any = None
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
            # The pinned thumbprint is checked after the handshake, in _check_thumbprint.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        return ssl.create_default_context(cafile=str(s.vcenter_ca_file) if s.vcenter_ca_file else None)

    def _connect(self) -> Any:
        s = self._settings
        url = urlsplit(s.vcenter_url)
        scheme = url.scheme or "https"
        port = url.port or (443 if scheme == "https" else 80)
        if s.vcenter_thumbprint and scheme == "https":
            self._check_thumbprint(url.hostname or "", port, s.vcenter_thumbprint)
        si = connect.SmartConnect(
            protocol=scheme,
            host=url.hostname,
            port=port,
            path=url.path or "/sdk",
            user=s.vcenter_username,
            pwd=s.password(),
            sslContext=self._ssl_context(),
            disableSslCertValidation=s.vcenter_insecure or bool(s.vcenter_thumbprint),
        )
        retries.retry_reads(si._stub)
        self.logins += 1
        log.info("vcenter.login", url=s.vcenter_url, user=s.vcenter_username, logins=self.logins)
        return si

    @staticmethod
    def _check_thumbprint(host: str, port: int, expected: str) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        import socket

        with (
            socket.create_connection((host, port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True) or b""
        actual = hashlib.sha256(der).hexdigest()
        if actual != expected.replace(":", "").lower():
            raise ssl.SSLCertVerificationError(
                f"vCenter certificate SHA-256 thumbprint {actual} does not match the pinned one"
            )

    def service_instance(self) -> Any:
        with self._lock:
            if self._si is None:
                self._si = self._connect()
            return self._si

    def _relogin(self, stale: Any) -> None:
        with self._lock:
            if self._si is stale:  # another thread may have logged in already
                log.info("vcenter.session_expired", url=self._settings.vcenter_url)
                self._si = None

    def run(self, fn: Callable[[Any], T]) -> T:
        """Call ``fn(service_instance)``; log in again once if the session expired."""
        si = self.service_instance()
        try:
            return fn(si)
        except vim.fault.NotAuthenticated:
            self._relogin(si)
            return fn(self.service_instance())

    def close(self) -> None:
        with self._lock:
            if self._si is not None:
                try:
                    connect.Disconnect(self._si)
                except Exception as exc:  # logging out of a dead session is best effort
                    log.debug("vcenter.logout_failed", error=str(exc))
                self._si = None
