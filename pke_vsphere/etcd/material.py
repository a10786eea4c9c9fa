"""An etcd client credential read from disk and checked: the files parse, the
key belongs to the certificate, the certificate is valid now and may be used
by a client. What is wrong is said, never what the files hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from pydantic import SecretStr

from pke_vsphere.config.credentials import EtcdCredential, EtcdCredentials
from pke_vsphere.config.files import RefusedToStart, check_private
from pke_vsphere.contracts.pki import EtcdClientCertificate
from pke_vsphere.pki import authority

# A master's certificate of its cluster's etcd user; renewing it is by hand (README).
MASTER_CERT_VALIDITY = timedelta(days=365)


class EtcdCredentialError(ValueError):
    """The credential is not held, or its files are missing, unreadable or do not fit together."""


def cluster_certificate(
    credentials: EtcdCredentials, name: str, user: str, validity: timedelta = MASTER_CERT_VALIDITY
) -> EtcdClientCertificate:
    """A new client certificate of ``user`` (a cluster's own etcd user), signed by the
    named credential's client CA: what one master of that cluster gets."""
    credential = credentials.get(name)
    orchestrator = client_certificate(credentials, name)
    assert credential is not None
    signer = client_ca(credential)
    issued = authority.issue(signer, user, client=True, validity=validity)
    return EtcdClientCertificate(
        ca_cert_pem=orchestrator.ca_cert_pem, cert_pem=issued.cert_pem(), key_pem=SecretStr(issued.key_pem())
    )


def client_ca(credential: EtcdCredential) -> authority.KeyPair:
    """The CA etcd trusts for client certificates, with its key.

    Raises:
        EtcdCredentialError: a file is missing, readable by others, or they do not fit.
    """
    try:
        check_private(credential.client_ca_key_file, "etcd client CA key")
        cert_pem = credential.client_ca_file.read_text()
        key_pem = credential.client_ca_key_file.read_text()
    except RefusedToStart as exc:
        raise EtcdCredentialError(f"client_ca_key_file: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EtcdCredentialError(f"client_ca_file or client_ca_key_file: cannot be read ({exc})") from None
    try:
        signer = authority.load(cert_pem, key_pem)
    except (ValueError, TypeError):
        raise EtcdCredentialError(
            "client_ca_file/client_ca_key_file: not a PEM CA certificate and its unencrypted key"
        ) from None
    if _spki(signer.key.public_key()) != _spki(signer.cert.public_key()):
        raise EtcdCredentialError("client_ca_key_file: is not the key of client_ca_file's certificate")
    return signer


def client_certificate(credentials: EtcdCredentials, name: str) -> EtcdClientCertificate:
    """The named credential's certificate, read from its files and checked."""
    credential = credentials.get(name)
    if credential is None:
        held = ", ".join(credentials.names()) or "none"
        raise EtcdCredentialError(
            f"the orchestrator holds no etcd credential {name!r} (it holds: {held}); "
            "add it to PKE_VSPHERE_ETCD_CREDENTIALS_FILE"
        )
    try:
        return read(credential)
    except EtcdCredentialError as exc:
        raise EtcdCredentialError(f"etcd credential {name!r}: {exc}") from None


def read(credential: EtcdCredential, now: datetime | None = None) -> EtcdClientCertificate:
    """The credential's PEM text, after checking it; every problem in one error."""
    problems: list[str] = []
    texts: dict[str, str] = {}
    for label, path in (
        ("ca_file", credential.ca_file),
        ("cert_file", credential.cert_file),
        ("key_file", credential.key_file),
    ):
        try:
            texts[label] = path.read_text()
            if label == "key_file":
                check_private(path, "etcd client key")
        except RefusedToStart as exc:
            problems.append(f"{label}: {exc}")
        except OSError as exc:
            problems.append(f"{label} {path}: cannot be read ({exc.strerror or type(exc).__name__})")
        except UnicodeDecodeError:
            problems.append(f"{label} {path}: is not PEM text")
    if problems:
        raise EtcdCredentialError("; ".join(problems))
    problems += _check(texts["ca_file"], texts["cert_file"], texts["key_file"], now or datetime.now(UTC))
    if problems:
        raise EtcdCredentialError("; ".join(problems))
    return EtcdClientCertificate(
        ca_cert_pem=texts["ca_file"], cert_pem=texts["cert_file"], key_pem=SecretStr(texts["key_file"])
    )


def _check(ca_pem: str, cert_pem: str, key_pem: str, now: datetime) -> list[str]:
    problems = []
    try:
        if not x509.load_pem_x509_certificates(ca_pem.encode()):
            problems.append("ca_file: holds no certificate")
    except ValueError:
        problems.append("ca_file: is not a PEM certificate bundle")
    cert = key = None
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError:
        problems.append("cert_file: is not a PEM certificate")
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    except (ValueError, TypeError):
        problems.append("key_file: is not an unencrypted PEM private key")
    if cert is None:
        return problems
    if key is not None and _spki(key.public_key()) != _spki(cert.public_key()):
        problems.append("key_file: is not the key of cert_file's certificate")
    if now < cert.not_valid_before_utc:
        problems.append(f"cert_file: not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        problems.append(f"cert_file: expired at {cert.not_valid_after_utc.isoformat()}")
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        problems.append("cert_file: the certificate is not for client authentication (no clientAuth usage)")
    return problems


def _spki(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der
