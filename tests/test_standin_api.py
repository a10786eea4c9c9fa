"""The stand-in Kubernetes API holds bootstrap tokens the way kubeadm checks them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pke_vsphere.kube.bootstrap_tokens import secret_for
from pke_vsphere.pki import bootstrap_tokens
from pke_vsphere.pki.cluster import generate_cluster_pki
from sim.kubeapi import StandInKubeAPI


def test_only_held_unexpired_tokens_are_accepted() -> None:
    pki = generate_cluster_pki("t")
    api = StandInKubeAPI(pki.kubernetes_ca.cert_pem, pki.kubernetes_ca.key_pem.get_secret_value())
    now = datetime.now(UTC)
    held = bootstrap_tokens.mint(timedelta(hours=1), now)
    expired = bootstrap_tokens.mint(timedelta(minutes=1), now - timedelta(hours=1))
    for token in (held, expired):
        secret = secret_for(token).to_dict()
        api.objects.secrets[secret["metadata"]["name"]] = secret
    unknown = bootstrap_tokens.mint(timedelta(hours=1), now)

    assert api.accepts_token(held.token.get_secret_value(), now)
    assert not api.accepts_token(expired.token.get_secret_value(), now)
    assert not api.accepts_token(unknown.token.get_secret_value(), now)
    token_id, _, _ = held.token.get_secret_value().partition(".")
    assert not api.accepts_token(f"{token_id}.0000000000000000", now)  # right id, wrong secret
