"""A real etcd server (Debian's etcd-server) on loopback, for the external-etcd
topology: TLS on two client URLs (127.0.0.1 and 127.0.0.2, so a cluster can be
given two endpoints), client-certificate authentication, authentication (RBAC)
on with a root user, and a credential written the way an operator would hand
it to the orchestrator: a certificate of the root user and the client CA."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import yaml

from pke_vsphere.config.credentials import EtcdCredentials
from pke_vsphere.contracts.pki import EtcdClientCertificate
from pke_vsphere.etcd import material
from pke_vsphere.etcd.client import EtcdClient, EtcdUnavailable
from pke_vsphere.pki.authority import KeyPair, issue, new_ca
from tests.harness import free_port

CREDENTIAL = "shared-etcd"
HOSTS = ("127.0.0.1", "127.0.0.2")


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


class EtcdServer:
    def __init__(self, directory: Path, *, auth: bool = True) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            raise RuntimeError("etcd is not installed (scripts/install-system-deps.sh installs etcd-server)")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        # One CA, as kubeadm's etcd has: it signs the servers and the clients.
        self.ca = new_ca("test etcd CA")
        server = issue(self.ca, "etcd", ip_addresses=HOSTS, dns_names=("localhost",), server=True)
        self.ca_file = _write(directory / "ca.crt", self.ca.cert_pem())
        self.ca_key_file = _write(directory / "ca.key", self.ca.key_pem(), 0o600)
        server_cert = _write(directory / "server.crt", server.cert_pem())
        server_key = _write(directory / "server.key", server.key_pem(), 0o600)
        root = self.issue_client("root")
        self.cert_file = _write(directory / "root.crt", root.cert_pem())
        self.key_file = _write(directory / "root.key", root.key_pem(), 0o600)
        entry = {"ca_file": "ca.crt", "cert_file": "root.crt", "key_file": "root.key",
                 "client_ca_file": "ca.crt", "client_ca_key_file": "ca.key"}  # fmt: skip
        self.credentials_file = _write(
            directory / "etcd-credentials.yaml", yaml.safe_dump({CREDENTIAL: entry}), 0o600
        )
        self.endpoints = [f"https://{host}:{free_port(host)}" for host in HOSTS]
        peer = f"http://127.0.0.1:{free_port('127.0.0.1')}"
        self._log = (directory / "etcd.log").open("w")
        self._process = subprocess.Popen(
            [
                binary,
                "--name=test",
                f"--data-dir={directory / 'data'}",
                f"--listen-client-urls={','.join(self.endpoints)}",
                f"--advertise-client-urls={','.join(self.endpoints)}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}",
                f"--cert-file={server_cert}",
                f"--key-file={server_key}",
                "--client-cert-auth",
                f"--trusted-ca-file={self.ca_file}",
                "--log-level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._wait_healthy()
        if auth:
            self._enable_auth()

    def issue_client(self, name: str) -> KeyPair:
        return issue(self.ca, name, client=True)

    @property
    def credentials(self) -> EtcdCredentials:
        return EtcdCredentials.load(self.credentials_file)

    def client(self, endpoint: int = 0, certificate: EtcdClientCertificate | None = None) -> EtcdClient:
        """A client of one endpoint: as root (the orchestrator's credential) unless given another."""
        return EtcdClient(self.endpoints[endpoint], certificate or self.root)

    @property
    def root(self) -> EtcdClientCertificate:
        return material.read(self.credentials.get(CREDENTIAL))  # type: ignore[arg-type]

    def _wait_healthy(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"etcd exited: {(self.directory / 'etcd.log').read_text()[-2000:]}")
            try:
                with self.client() as client:
                    client.check_health()
                return
            except EtcdUnavailable:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _enable_auth(self) -> None:
        """What an operator does once: a root user (its certificate's common name), then
        authentication on. From then on a certificate's common name is its user."""
        with self.client() as client:
            client.ensure_root_and_enable_auth()

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()
