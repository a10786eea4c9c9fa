"""The cluster's key material, as PEM text. Held only in workflow state (which
the payload codec encrypts) and handed only to authenticated masters."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from pke_vsphere.contracts.secret import Secret


class CertificateAuthority(BaseModel):
    cert_pem: str
    key_pem: Secret


class ClusterPKI(BaseModel):
    """Everything PKE's masters need to share, generated once per cluster."""

    kubernetes_ca: CertificateAuthority
    etcd_ca: CertificateAuthority | None
    """None with an external etcd: its own CA signs its members, not the cluster's."""
    front_proxy_ca: CertificateAuthority
    service_account_key_pem: Secret
    service_account_public_pem: str
    encryption_secret: Secret
    """base64 of 32 random bytes: the API server's secret-encryption key."""
    ca_cert_hash: str
    """``sha256:<hex>`` of the Kubernetes CA's public key, for kubeadm discovery."""
    vrrp_password: Secret
    """keepalived auth password shared by the masters (VRRP allows 8 characters)."""


class EtcdClientCertificate(BaseModel):
    """How the API servers reach an external etcd: its servers' CA, and the client
    certificate and key the orchestrator holds for it (never in the spec)."""

    ca_cert_pem: str
    cert_pem: str
    key_pem: Secret


class ExternalEtcdClient(BaseModel):
    """What a master of the external_etcd topology needs to reach the etcd cluster."""

    endpoints: list[str]
    prefix: str
    certificate: EtcdClientCertificate


class BootstrapToken(BaseModel):
    """A kubeadm bootstrap token ``[a-z0-9]{6}.[a-z0-9]{16}`` and its expiry."""

    token: Secret
    expires_at: datetime

    @property
    def token_id(self) -> str:
        """The public part before the dot (its Secret's name in the cluster)."""
        return self.token.get_secret_value().partition(".")[0]
