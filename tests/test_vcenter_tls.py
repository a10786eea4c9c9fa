"""vCenter TLS is verified by default: against a CA bundle or a pinned SHA-256
thumbprint; skipping it takes an explicit setting. The simulator serves a
certificate this test makes, on 127.0.0.2 (pyvmomi would skip checks for
127.0.0.1 and localhost when given no context; we always give one)."""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr
from pyVmomi import vim
from temporalio.exceptions import ApplicationError

from pke_vsphere.config import VCenterSettings
from pke_vsphere.pki import authority
from pke_vsphere.vsphere import properties
from pke_vsphere.vsphere.errors import as_activity_errors
from pke_vsphere.vsphere.session import PinnedContext, VCenterSession
from sim import vcenter
from tests.harness import STATE_DIR


@pytest.fixture(scope="module")
def tls_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[vcenter.Simulator, Path, str]]:
    directory = tmp_path_factory.mktemp("vcenter-tls")
    ca = authority.new_ca("test vCenter CA")
    leaf = authority.issue(
        ca, "vcenter.test", dns_names=("vcenter.test",), ip_addresses=("127.0.0.2",), server=True
    )
    (directory / "ca.pem").write_text(ca.cert_pem())
    (directory / "cert.pem").write_text(leaf.cert_pem())
    (directory / "key.pem").write_text(leaf.key_pem())
    sim = vcenter.start(
        STATE_DIR,
        listen="127.0.0.2:0",
        tls=(directory / "cert.pem", directory / "key.pem"),
        prepare=False,
    )
    thumbprint = hashlib.sha256(leaf.cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    yield sim, directory / "ca.pem", thumbprint
    sim.stop()


def settings(sim: vcenter.Simulator, **tls: Any) -> VCenterSettings:
    return VCenterSettings(
        vcenter_url=sim.url,
        vcenter_username=sim.username,
        vcenter_password=SecretStr(sim.password),
        installation_id="tests",
        **tls,
    )


def datacenters(si: Any) -> list[str]:
    return [p["name"] for _, p in properties.find_all(si, vim.Datacenter, ["name"])]


def test_the_simulator_serves_https_on_a_checked_address(
    tls_sim: tuple[vcenter.Simulator, Path, str],
) -> None:
    sim, _, _ = tls_sim
    assert sim.url.startswith("https://127.0.0.2:")


def test_a_ca_bundle_verifies_vcenter(tls_sim: tuple[vcenter.Simulator, Path, str]) -> None:
    sim, ca, _ = tls_sim
    session = VCenterSession(settings(sim, vcenter_ca_file=ca))
    assert session.run(datacenters) == ["DC0"]
    session.close()


def test_an_unknown_certificate_is_refused_by_default(tls_sim: tuple[vcenter.Simulator, Path, str]) -> None:
    sim, _, _ = tls_sim
    session = VCenterSession(settings(sim))
    with pytest.raises(ApplicationError) as info, as_activity_errors("connect"):
        session.run(datacenters)
    assert info.value.non_retryable
    assert "TLS certificate did not verify" in info.value.message


def test_a_pinned_thumbprint_verifies_and_a_wrong_one_is_refused(
    tls_sim: tuple[vcenter.Simulator, Path, str],
) -> None:
    sim, _, thumbprint = tls_sim
    pinned = VCenterSession(settings(sim, vcenter_thumbprint=thumbprint.upper()))
    assert pinned.run(datacenters) == ["DC0"]
    wrong = VCenterSession(settings(sim, vcenter_thumbprint="00" * 32))
    with pytest.raises(ssl.SSLCertVerificationError, match="does not match the pinned one"):
        wrong.run(datacenters)


def test_skipping_verification_needs_the_setting_and_warns(
    tls_sim: tuple[vcenter.Simulator, Path, str],
) -> None:
    sim, _, _ = tls_sim
    session = VCenterSession(settings(sim, vcenter_insecure=True))
    with structlog.testing.capture_logs() as logs:
        assert session.run(datacenters) == ["DC0"]
    assert any(
        e["event"] == "vcenter.tls_verification_disabled" and e["log_level"] == "warning" for e in logs
    )


def test_a_plain_http_vcenter_is_refused_unless_insecure_is_set() -> None:
    plain = VCenterSettings(
        vcenter_url="http://127.0.0.1:9/sdk",
        vcenter_username="u",
        vcenter_password=SecretStr("p"),
        installation_id="tests",
    )
    with pytest.raises(ApplicationError) as info, as_activity_errors("connect"):
        VCenterSession(plain).run(datacenters)
    assert info.value.non_retryable
    assert "http:// would send the vCenter password unencrypted" in info.value.message


def test_the_pin_is_checked_on_the_connection_that_logs_in(
    tls_sim: tuple[vcenter.Simulator, Path, str],
) -> None:
    """The pin is checked by the TLS context of the session's own connections (the
    one that sends the password included), not by a separate probe before them."""
    sim, _, thumbprint = tls_sim
    wrong = VCenterSession(settings(sim, vcenter_thumbprint="11" * 32))
    with pytest.raises(ssl.SSLCertVerificationError):
        wrong.run(datacenters)
    assert wrong.logins == 0
    pinned = VCenterSession(settings(sim, vcenter_thumbprint=thumbprint))
    assert pinned.run(datacenters) == ["DC0"]
    context = pinned.service_instance()._stub.schemeArgs["context"]
    assert isinstance(context, PinnedContext) and context.pin == thumbprint
    assert pinned.logins == 1
    pinned.close()


def test_a_vcenter_that_accepts_the_connection_and_never_answers_times_out() -> None:
    """A half-open connection must not hold a thread (and a vCenter task slot) for ever."""
    import socket
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        session = VCenterSession(
            VCenterSettings(
                vcenter_url=f"http://127.0.0.1:{port}/sdk",
                vcenter_username="u",
                vcenter_password=SecretStr("p"),
                vcenter_insecure=True,
                installation_id="tests",
            ),
            timeout=1.5,
        )
        started = time.monotonic()
        with pytest.raises(ApplicationError) as info, as_activity_errors("connect"):
            session.run(datacenters)
        assert time.monotonic() - started < 10
    assert not info.value.non_retryable  # a timeout may pass: retried
