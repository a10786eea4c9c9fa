"""Named credentials the orchestrator holds for clusters: vSphere accounts for
their CSI drivers and client certificates for external etcd clusters.

``PKE_VSPHERE_STORAGE_CREDENTIALS_FILE`` names a YAML file (mode 0600)::

    csi-prod:
      username: k8s-csi-prod@vsphere.local
      password: ...

``PKE_VSPHERE_ETCD_CREDENTIALS_FILE`` names a YAML file of etcd credentials
(paths relative to the file's own directory, or absolute)::

    shared-etcd:
      ca_file: etcd/ca.crt                # verifies the etcd servers
      cert_file: etcd/root.crt            # the orchestrator's certificate: etcd's root user
      key_file: etcd/root.key
      client_ca_file: etcd/client-ca.crt  # the CA etcd trusts for clients (--trusted-ca-file)
      client_ca_key_file: etcd/client-ca.key

Each cluster on that etcd gets a user and role of its own, limited to its
prefix, and its masters certificates of that user signed by the client CA.

A cluster spec names an entry (``storage.credential``,
``control_plane.external_etcd.credential``); the worker checks it at preflight
and the node API hands it to the masters that need it. Passwords and keys never
reach a spec, workflow history, guestinfo or a log line. Certificate files are
read when used, so renewing them needs no restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Generic, Self, TypeVar

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from pke_vsphere.config import load
from pke_vsphere.config.files import RefusedToStart, read_private

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)


class StorageCredential(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(min_length=1)
    password: SecretStr


class EtcdCredential(BaseModel):
    """Where the orchestrator's etcd client certificate (of etcd's root user), its
    key and the servers' CA are on disk, and the CA that etcd trusts for client
    certificates, with its key: it signs each cluster's masters a certificate of
    the cluster's own etcd user."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path
    cert_file: Path
    key_file: Path
    client_ca_file: Path
    client_ca_key_file: Path

    def relative_to(self, directory: Path) -> EtcdCredential:
        return EtcdCredential(
            ca_file=directory / self.ca_file,
            cert_file=directory / self.cert_file,
            key_file=directory / self.key_file,
            client_ca_file=directory / self.client_ca_file,
            client_ca_key_file=directory / self.client_ca_key_file,
        )


class CredentialsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PKE_VSPHERE_", extra="ignore")

    storage_credentials_file: Path | None = Field(
        default=None, description="YAML file of named vSphere accounts for clusters' CSI drivers."
    )
    etcd_credentials_file: Path | None = Field(
        default=None, description="YAML file of named client certificates for external etcd clusters."
    )


def _read_named(path: Path, model: type[M], what: str) -> dict[str, M]:
    """The file's entries, each validated; a bad one is named without its values."""
    try:
        data = yaml.safe_load(read_private(path, f"{what} credentials file")) or {}
    except yaml.YAMLError as exc:
        raise RefusedToStart(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise RefusedToStart(f"{path}: expected a mapping of names to {what} credentials")
    entries = {}
    for name, entry in data.items():
        try:
            entries[str(name)] = model.model_validate(entry)
        except ValidationError as exc:
            fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
            raise RefusedToStart(f"{path}: entry {name!r} is invalid ({fields})") from None
    return entries


class _Named(Generic[M]):
    """Entries by name; an empty store when no file is configured."""

    def __init__(self, entries: dict[str, M] | None = None) -> None:
        self._entries = dict(entries or {})

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> M | None:
        return self._entries.get(name)


class StorageCredentials(_Named[StorageCredential]):
    @classmethod
    def from_settings(cls, settings_file: str | None = None) -> Self:
        return cls.load(load(CredentialsSettings, settings_file).storage_credentials_file)

    @classmethod
    def load(cls, path: Path | None) -> Self:
        if path is None:
            return cls()
        return cls(_read_named(path, StorageCredential, "storage"))


class EtcdCredentials(_Named[EtcdCredential]):
    @classmethod
    def from_settings(cls, settings_file: str | None = None) -> Self:
        return cls.load(load(CredentialsSettings, settings_file).etcd_credentials_file)

    @classmethod
    def load(cls, path: Path | None) -> Self:
        if path is None:
            return cls()
        entries = _read_named(path, EtcdCredential, "etcd")
        return cls({name: entry.relative_to(path.parent) for name, entry in entries.items()})
