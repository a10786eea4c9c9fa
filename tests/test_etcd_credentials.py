"""The etcd client credentials the orchestrator holds: the file that names them,
and the checks that find a credential unusable before a cluster relies on it.
Each problem is named by the file it is in, never by what the file holds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from pke_vsphere.config.credentials import EtcdCredential, EtcdCredentials
from pke_vsphere.etcd import material, users
from pke_vsphere.pki.authority import issue, new_ca

CA = new_ca("etcd CA")
CLIENT = issue(CA, "kube-apiserver", client=True)


def write(directory: Path, ca: str, cert: str, key: str) -> EtcdCredential:
    for name, text in (("ca.crt", ca), ("client.crt", cert), ("client.key", key)):
        (directory / name).write_text(text)
    (directory / "client.key").chmod(0o600)
    (directory / "client-ca.crt").write_text(CA.cert_pem())
    (directory / "client-ca.key").write_text(CA.key_pem())
    (directory / "client-ca.key").chmod(0o600)
    return EtcdCredential(
        ca_file=directory / "ca.crt",
        cert_file=directory / "client.crt",
        key_file=directory / "client.key",
        client_ca_file=directory / "client-ca.crt",
        client_ca_key_file=directory / "client-ca.key",
    )


def problem(credential: EtcdCredential, now: datetime | None = None) -> str:
    with pytest.raises(material.EtcdCredentialError) as info:
        material.read(credential, now)
    return str(info.value)


def test_a_sound_credential_is_read_with_its_key_hidden(tmp_path: Path) -> None:
    read = material.read(write(tmp_path, CA.cert_pem(), CLIENT.cert_pem(), CLIENT.key_pem()))
    assert read.cert_pem == CLIENT.cert_pem() and read.ca_cert_pem == CA.cert_pem()
    assert read.key_pem.get_secret_value() == CLIENT.key_pem()
    assert "PRIVATE KEY" not in repr(read)


def test_a_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    other = issue(CA, "someone-else", client=True)
    credential = write(tmp_path, CA.cert_pem(), CLIENT.cert_pem(), other.key_pem())
    assert problem(credential) == "key_file: is not the key of cert_file's certificate"


def test_a_server_only_certificate_is_refused(tmp_path: Path) -> None:
    server = issue(CA, "etcd", server=True)
    credential = write(tmp_path, CA.cert_pem(), server.cert_pem(), server.key_pem())
    assert problem(credential) == (
        "cert_file: the certificate is not for client authentication (no clientAuth usage)"
    )


def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    credential = write(tmp_path, CA.cert_pem(), CLIENT.cert_pem(), CLIENT.key_pem())
    later = datetime.now(UTC) + timedelta(days=400)
    assert problem(credential, later).startswith("cert_file: expired at ")


def test_every_unparsable_file_is_named_at_once(tmp_path: Path) -> None:
    credential = write(tmp_path, "not a CA", "not a cert", CLIENT.key_pem().replace("PRIVATE KEY", "JUNK"))
    assert problem(credential) == (
        "ca_file: is not a PEM certificate bundle; cert_file: is not a PEM certificate; "
        "key_file: is not an unencrypted PEM private key"
    )


def test_missing_files_are_named_with_their_paths(tmp_path: Path) -> None:
    credential = write(tmp_path, CA.cert_pem(), CLIENT.cert_pem(), CLIENT.key_pem())
    credential.key_file.unlink()
    assert (
        problem(credential) == f"key_file {credential.key_file}: cannot be read (No such file or directory)"
    )


def test_the_credentials_file_resolves_paths_against_its_own_directory(tmp_path: Path) -> None:
    path = tmp_path / "etcd-credentials.yaml"
    entry = {"ca_file": "etcd/ca.crt", "cert_file": "/srv/etcd/client.crt", "key_file": "etcd/client.key",
             "client_ca_file": "etcd/client-ca.crt", "client_ca_key_file": "etcd/client-ca.key"}  # fmt: skip
    path.write_text(yaml.safe_dump({"shared": entry}))
    path.chmod(0o600)
    credentials = EtcdCredentials.load(path)
    assert credentials.names() == ["shared"]
    assert credentials.get("shared") == EtcdCredential(
        ca_file=tmp_path / "etcd/ca.crt",
        cert_file=Path("/srv/etcd/client.crt"),
        key_file=tmp_path / "etcd/client.key",
        client_ca_file=tmp_path / "etcd/client-ca.crt",
        client_ca_key_file=tmp_path / "etcd/client-ca.key",
    )
    assert EtcdCredentials.load(None).names() == []


def test_a_bad_entry_is_named_without_its_values(tmp_path: Path) -> None:
    path = tmp_path / "etcd-credentials.yaml"
    path.write_text(yaml.safe_dump({"shared": {"ca_file": "ca.crt", "cert": "secret-looking-value"}}))
    path.chmod(0o600)
    with pytest.raises(ValueError) as info:
        EtcdCredentials.load(path)
    message = str(info.value)
    assert (
        "entry 'shared' is invalid (cert_file, key_file, client_ca_file, client_ca_key_file, cert)" in message
    )
    assert "secret-looking-value" not in message


def test_a_client_key_readable_by_others_is_refused_with_its_mode(tmp_path: Path) -> None:
    credential = write(tmp_path, CA.cert_pem(), CLIENT.cert_pem(), CLIENT.key_pem())
    credential.key_file.chmod(0o640)
    assert f"key_file: etcd client key {credential.key_file} is mode 0640" in problem(credential)


def test_a_master_certificate_is_of_the_clusters_own_user_signed_by_the_client_ca(tmp_path: Path) -> None:
    path = tmp_path / "etcd-credentials.yaml"
    write(tmp_path, CA.cert_pem(), CLIENT.cert_pem(), CLIENT.key_pem())
    entry = {"ca_file": "ca.crt", "cert_file": "client.crt", "key_file": "client.key",
             "client_ca_file": "client-ca.crt", "client_ca_key_file": "client-ca.key"}  # fmt: skip
    path.write_text(yaml.safe_dump({"shared": entry}))
    path.chmod(0o600)
    issued = material.cluster_certificate(EtcdCredentials.load(path), "shared", "pke-vsphere:a:uid")
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    assert cert.subject.rfc4514_string() == "CN=pke-vsphere:a:uid"
    assert cert.issuer == CA.cert.subject
    assert issued.ca_cert_pem == CA.cert_pem()
    (tmp_path / "client-ca.key").chmod(0o644)
    with pytest.raises(
        material.EtcdCredentialError, match=r"client_ca_key_file: etcd client CA key .* is mode 0644"
    ):
        material.cluster_certificate(EtcdCredentials.load(path), "shared", "pke-vsphere:a:uid")


def test_a_clusters_etcd_user_fits_a_certificates_common_name() -> None:
    longest = "c" * 30  # the longest cluster name a spec takes
    user = users.cluster_user(longest, "6559f210-b08f-4773-8da2-dbeeef4c46d6")
    assert user == f"pke-vsphere:{longest}:6559f210b08f" and len(user) <= 64
    assert users.cluster_user("a", "6559f210-b08f-4773-8da2-dbeeef4c46d6") != users.cluster_user(
        "a", "7559f210-b08f-4773-8da2-dbeeef4c46d6"
    )
