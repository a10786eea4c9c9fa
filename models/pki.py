"""The cluster's key material, as PEM text. Held only in workflow state (which
the payload codec encrypts) and handed only to authenticated masters."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from models.secret import Secret


class CertificateAuthority(BaseModel):
    cert_pem: str
    key_pem: Secret


class ClusterPKI(BaseModel):
    """Everything PKE's masters need to share, generated once per cluster."""

    kubernetes_ca: CertificateAuthority
    etcd_ca: CertificateAuthority
    front_proxy_ca: CertificateAuthority
    service_account_key_pem: Secret
    service_account_public_pem: str
    encryption_secret: Secret
    """base64 of 32 random bytes: the API server's secret-encryption key."""
    ca_cert_hash: str
    """``sha256:<hex>`` of the Kubernetes CA's public key, for kubeadm discovery."""
    vrrp_password: Secret
    """keepalived auth password shared by the masters (VRRP allows 8 characters)."""


class BootstrapToken(BaseModel):
    """A kubeadm bootstrap token ``[a-z0-9]{6}.[a-z0-9]{16}`` and its expiry."""

    token: Secret
    expires_at: datetime
