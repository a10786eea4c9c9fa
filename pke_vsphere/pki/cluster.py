"""Generate the key material a PKE cluster's masters share."""

from __future__ import annotations

import base64
import secrets
import string

from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from pke_vsphere.contracts.pki import CertificateAuthority, ClusterPKI
from pke_vsphere.pki.authority import KeyPair, new_ca, new_rsa_key, private_key_pem, public_key_hash


def _ca(pair: KeyPair) -> CertificateAuthority:
    return CertificateAuthority(cert_pem=pair.cert_pem(), key_pem=SecretStr(pair.key_pem()))


def generate_cluster_pki(cluster: str, *, etcd_ca: bool = True) -> ClusterPKI:
    """The Kubernetes, etcd and front-proxy CAs, the service-account key pair,
    the secret-encryption key and the VRRP password, as PKE expects them. With
    ``etcd_ca=False`` (an external etcd, which has its own CA) no etcd CA is made."""
    kubernetes = new_ca(f"kubernetes-ca ({cluster})")
    sa_key = new_rsa_key()
    vrrp_alphabet = string.ascii_letters + string.digits
    return ClusterPKI(
        kubernetes_ca=_ca(kubernetes),
        etcd_ca=_ca(new_ca(f"etcd-ca ({cluster})")) if etcd_ca else None,
        front_proxy_ca=_ca(new_ca(f"front-proxy-ca ({cluster})")),
        service_account_key_pem=SecretStr(private_key_pem(sa_key)),
        service_account_public_pem=sa_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode(),
        encryption_secret=SecretStr(base64.b64encode(secrets.token_bytes(32)).decode()),
        ca_cert_hash=public_key_hash(kubernetes.cert),
        vrrp_password=SecretStr("".join(secrets.choice(vrrp_alphabet) for _ in range(8))),
    )
