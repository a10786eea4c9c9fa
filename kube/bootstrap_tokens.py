"""kubeadm bootstrap tokens live in the cluster as Secrets in kube-system; a
token is valid for joining only while its Secret exists and has not expired."""

from __future__ import annotations

from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from models.pki import BootstrapToken

NAMESPACE = "kube-system"
TYPE = "bootstrap.kubernetes.io/token"


def secret_for(token: BootstrapToken) -> Secret:
    token_id, _, secret = token.token.get_secret_value().partition(".")
    return Secret(
        metadata=ObjectMeta(name=f"bootstrap-token-{token_id}", namespace=NAMESPACE),
        type=TYPE,
        stringData={
            "token-id": token_id,
            "token-secret": secret,
            "expiration": token.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
            "description": "minted by pke-vsphere for a joining node",
        },
    )


async def install(client: AsyncClient, token: BootstrapToken) -> None:
    await client.create(secret_for(token))
