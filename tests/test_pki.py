"""The cluster PKI: chains verify, key usages are right, hashes are kubeadm's."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from pke_vsphere.pki import authority, bootstrap_tokens
from pke_vsphere.pki.cluster import generate_cluster_pki


def verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    cert.verify_directly_issued_by(issuer)


def test_cluster_pki_has_three_distinct_cas_and_keys() -> None:
    pki = generate_cluster_pki("prod")
    assert pki.etcd_ca is not None
    cas = [pki.kubernetes_ca, pki.etcd_ca, pki.front_proxy_ca]
    certs = [x509.load_pem_x509_certificate(ca.cert_pem.encode()) for ca in cas]
    assert len({c.subject for c in certs}) == 3
    for cert in certs:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        assert constraints.ca and constraints.path_length == 0
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.key_cert_sign and usage.crl_sign
        verify_signed_by(cert, cert)
    assert len(base64.b64decode(pki.encryption_secret.get_secret_value())) == 32
    sa = serialization.load_pem_private_key(pki.service_account_key_pem.get_secret_value().encode(), None)
    assert (
        sa.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        == pki.service_account_public_pem
    )
    assert len(pki.vrrp_password.get_secret_value()) == 8
    assert "PRIVATE KEY" not in repr(pki)  # keys never show in reprs or logs


def test_leaf_certificates_chain_to_their_ca_with_the_right_usages() -> None:
    ca = authority.new_ca("test-ca")
    server = authority.issue(
        ca, "kube-apiserver", dns_names=("kubernetes",), ip_addresses=("10.0.0.1",), server=True
    )
    client = authority.issue(ca, "admin", organizations=("system:masters",), client=True)
    verify_signed_by(server.cert, ca.cert)
    verify_signed_by(client.cert, ca.cert)
    eku = server.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = server.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["kubernetes"]
    assert not server.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert list(client.cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    other = authority.new_ca("other-ca")
    with pytest.raises((InvalidSignature, ValueError)):
        verify_signed_by(server.cert, other.cert)


def test_ca_cert_hash_is_sha256_of_the_public_key_info() -> None:
    ca = authority.new_ca("hash-ca")
    spki = ca.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert authority.public_key_hash(ca.cert) == "sha256:" + hashlib.sha256(spki).hexdigest()


def test_bootstrap_tokens_have_kubeadm_form_and_are_not_reused_near_expiry() -> None:
    now = datetime.now(UTC)
    tokens = {bootstrap_tokens.mint(timedelta(hours=1), now).token.get_secret_value() for _ in range(50)}
    assert len(tokens) == 50
    assert all(bootstrap_tokens.TOKEN_PATTERN.match(t) for t in tokens)
    token = bootstrap_tokens.mint(timedelta(minutes=30), now)
    assert bootstrap_tokens.usable(token, now, timedelta(minutes=10))
    assert not bootstrap_tokens.usable(token, now + timedelta(minutes=25), timedelta(minutes=10))
    assert not bootstrap_tokens.usable(None, now, timedelta(0))
