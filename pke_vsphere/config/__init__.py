"""Process settings for the worker, the node API and the starter.

Read from environment variables prefixed ``PKE_VSPHERE_`` or from a dotenv-style
settings file (``PKE_VSPHERE_SETTINGS_FILE`` or ``--settings``). The README
lists every setting. vCenter credentials live here and nowhere else: never in
a cluster spec, workflow history, a log line or a VM's guestinfo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Self, TypeVar

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pke_vsphere.config.files import check_private, read_private

TASK_QUEUE = "pke-vsphere"

_S = TypeVar("_S", bound=BaseSettings)


class TemporalSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PKE_VSPHERE_", extra="ignore")

    temporal_address: str = Field(default="127.0.0.1:7233", description="Temporal frontend host:port.")
    temporal_namespace: str = Field(default="default")
    temporal_task_queue: str = Field(default=TASK_QUEUE)
    temporal_tls_ca_file: Path | None = Field(default=None, description="CA bundle for Temporal TLS.")
    temporal_tls_cert_file: Path | None = Field(default=None, description="mTLS client certificate.")
    temporal_tls_key_file: Path | None = Field(default=None, description="mTLS client key.")
    temporal_api_key_file: Path | None = Field(default=None, description="API key (Temporal Cloud).")
    payload_keys_file: Path | None = Field(
        default=None,
        description="AES-256 keys that encrypt workflow payloads ('<key-id> <base64>' lines, newest last).",
    )
    allow_unencrypted_payloads: bool = Field(
        default=False,
        description="Run without a payload keys file (development only): workflow histories "
        "then hold the clusters' keys in plain text.",
    )


class CodecServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PKE_VSPHERE_", extra="ignore")

    payload_keys_file: Path
    codec_listen_host: str = Field(default="127.0.0.1")
    codec_listen_port: int = Field(default=8234)
    codec_auth_token_file: Path | None = Field(
        default=None,
        description="Requests must carry 'Authorization: Bearer <token>' from this file (mode 0600); "
        "required unless the server listens on loopback.",
    )
    codec_allowed_hosts: str | None = Field(
        default=None,
        description="Comma-separated host names the server answers for (the Host header); "
        "default: its listen address, and the loopback names on loopback.",
    )
    codec_cors_origins: str = Field(
        default="http://127.0.0.1:8233,http://localhost:8233",
        description="Comma-separated origins of the Temporal Web UI.",
    )


class VCenterSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PKE_VSPHERE_", extra="ignore")

    installation_id: str = Field(
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="Names this installation of pke-vsphere on its vCenters: every VM it makes "
        "carries it, and it touches no VM without it. Generate once (make demo does) and keep.",
    )
    vcenter_url: str = Field(description="vCenter SDK URL, e.g. https://vcenter.example.com/sdk")
    vcenter_username: str
    vcenter_password: SecretStr | None = None
    vcenter_password_file: Path | None = Field(
        default=None, description="File holding the password (preferred over the variable)."
    )
    vcenter_ca_file: Path | None = Field(default=None, description="CA bundle to verify vCenter.")
    vcenter_thumbprint: str | None = Field(
        default=None, description="Pinned SHA-256 thumbprint of vCenter's certificate."
    )
    vcenter_insecure: bool = Field(
        default=False,
        description="Skip TLS verification (logged as a warning; never in production).",
    )
    vcenter_max_concurrent_tasks: int = Field(
        default=256,
        ge=1,
        le=512,
        description="vCenter tasks (clone, reconfigure, power, destroy) in flight, all workers together.",
    )
    vcenter_activities_per_second: float | None = Field(
        default=None,
        gt=0,
        description="vCenter activities started per second on the vCenter task queue, all workers "
        "together (Temporal's server-side limit of the task queue); default: no limit.",
    )

    @model_validator(mode="after")
    def _password(self) -> Self:
        if self.vcenter_password is None and self.vcenter_password_file is None:
            raise ValueError("set PKE_VSPHERE_VCENTER_PASSWORD_FILE or PKE_VSPHERE_VCENTER_PASSWORD")
        return self

    @model_validator(mode="after")
    def _password_file_is_private(self) -> Self:
        if self.vcenter_password_file is not None:
            check_private(self.vcenter_password_file, "vCenter password file")
        return self

    def password(self) -> str:
        if self.vcenter_password_file is not None:
            return read_private(self.vcenter_password_file, "vCenter password file").strip()
        assert self.vcenter_password is not None
        return self.vcenter_password.get_secret_value()


class NodeApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PKE_VSPHERE_", extra="ignore")

    node_api_url: str = Field(description="URL booting nodes use to reach the node API.")
    node_api_listen_host: str = Field(default="127.0.0.1")
    node_api_listen_port: int = Field(default=8480)
    node_token_key_file: Path | None = Field(
        default=None, description="Ed25519 private key (PEM, mode 0600) the worker signs node tokens with."
    )
    node_token_public_key_file: Path | None = Field(
        default=None, description="Its public half (PEM): all the node API holds to verify tokens."
    )
    node_api_tls_cert_file: Path | None = Field(
        default=None, description="Serve the node API over HTTPS with this certificate (PEM)."
    )
    node_api_tls_key_file: Path | None = Field(default=None, description="Its private key (PEM).")
    node_api_development: bool = Field(
        default=False,
        description="Let the node API serve plain HTTP (a development run on loopback only).",
    )
    node_api_ca_file: Path | None = Field(
        default=None, description="CA that signed the node API's certificate; nodes verify with it."
    )

    def node_api_ca_pem(self) -> str | None:
        return self.node_api_ca_file.read_text() if self.node_api_ca_file else None


def settings_file() -> str | None:
    """The dotenv file named by ``PKE_VSPHERE_SETTINGS_FILE``, if any."""
    return os.environ.get("PKE_VSPHERE_SETTINGS_FILE")


def load(cls: type[_S], file: str | None = None) -> _S:
    """Load settings from the environment and, when given, a dotenv file."""
    return cls(_env_file=file or settings_file())  # type: ignore[call-arg]
