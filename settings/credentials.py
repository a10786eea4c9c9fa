"""Named vSphere accounts for clusters' CSI drivers, held by the orchestrator.

``PKE_VSPHERE_STORAGE_CREDENTIALS_FILE`` names a YAML file (mode 0600)::

    csi-prod:
      username: k8s-csi-prod@vsphere.local
      password: ...

A cluster spec names an account (``storage.credential``); the worker checks at
preflight that it exists and is not the orchestrator's own account, and the node
API renders it into the leader's CSI configuration. Passwords never reach a
spec, workflow history, guestinfo or a log line.
"""

from __future__ import annotations

from pathlib import Path

import structlog
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from settings import load

log = structlog.get_logger(__name__)


class StorageCredential(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(min_length=1)
    password: SecretStr


class StorageCredentialsSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PKE_VSPHERE_", extra="ignore")

    storage_credentials_file: Path | None = Field(
        default=None, description="YAML file of named vSphere accounts for clusters' CSI drivers."
    )


class StorageCredentials:
    """The accounts, by name; an empty store when no file is configured."""

    def __init__(self, accounts: dict[str, StorageCredential] | None = None) -> None:
        self._accounts = dict(accounts or {})

    @classmethod
    def from_settings(cls, settings_file: str | None = None) -> StorageCredentials:
        return cls.load(load(StorageCredentialsSettings, settings_file).storage_credentials_file)

    @classmethod
    def load(cls, path: Path | None) -> StorageCredentials:
        if path is None:
            return cls()
        if path.stat().st_mode & 0o077:
            log.warning("storage_credentials.readable_by_others", file=str(path), hint="chmod 600")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of account names to username/password")
        accounts = {}
        for name, entry in data.items():
            try:
                accounts[str(name)] = StorageCredential.model_validate(entry)
            except ValidationError as exc:
                fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
                raise ValueError(f"{path}: account {name!r} is invalid ({fields})") from None
        return cls(accounts)

    def names(self) -> list[str]:
        return sorted(self._accounts)

    def get(self, name: str) -> StorageCredential | None:
        return self._accounts.get(name)
