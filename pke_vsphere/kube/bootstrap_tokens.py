"""kubeadm bootstrap tokens live in the cluster as Secrets in kube-system; a
token is valid for joining only while its Secret exists and has not expired."""

from __future__ import annotations

from lightkube import AsyncClient
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from pke_vsphere.contracts.pki import BootstrapToken

NAMESPACE = "kube-system"
TYPE = "bootstrap.kubernetes.io/token"


def secret_name(token_id: str) -> str:
    return f"bootstrap-token-{token_id}"


def secret_for(token: BootstrapToken, node: str | None = None) -> Secret:
    token_id, _, secret = token.token.get_secret_value().partition(".")
    return Secret(
        metadata=ObjectMeta(name=secret_name(token_id), namespace=NAMESPACE),
        type=TYPE,
        stringData={
            "token-id": token_id,
            "token-secret": secret,
            "expiration": token.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token",
            "description": f"minted by pke-vsphere for {node or 'a joining node'}, for it alone",
        },
    )


async def install(client: AsyncClient, token: BootstrapToken, node: str | None = None) -> None:
    await client.create(secret_for(token, node))


async def delete(client: AsyncClient, token_id: str) -> bool:
    """Delete a token's Secret; False if it was gone already (expired and cleaned up)."""
    try:
        await client.delete(Secret, secret_name(token_id), namespace=NAMESPACE)
    except ApiError as exc:
        if exc.status.code == 404:
            return False
        raise
    return True
