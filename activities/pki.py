"""Activities that make key material: randomness never runs in workflow code."""

from __future__ import annotations

from datetime import timedelta

import structlog
from temporalio import activity

from models.messages import GeneratePkiInput, MintTokenInput
from models.pki import BootstrapToken, ClusterPKI
from pki import bootstrap_tokens
from pki.cluster import generate_cluster_pki
from runtime import crashpoints

log = structlog.get_logger(__name__)


@activity.defn(name="generate_pki")
def generate_pki(input: GeneratePkiInput) -> ClusterPKI:
    """Generate the cluster's CAs and keys (a retry simply generates new ones;
    nothing has used the earlier ones until the workflow records a result)."""
    pki = generate_cluster_pki(input.cluster, etcd_ca=input.etcd_ca)
    crashpoints.reach("pki.generated")
    log.info("pki.generated", cluster=input.cluster, cluster_uid=input.cluster_uid)
    return pki


@activity.defn(name="mint_bootstrap_token")
def mint_bootstrap_token(input: MintTokenInput) -> BootstrapToken:
    """A token known only to the orchestrator: used by clusters whose workflows began
    before join tokens were installed in the cluster (``create_bootstrap_token``)."""
    token = bootstrap_tokens.mint(timedelta(seconds=input.ttl_seconds))
    log.info("bootstrap_token.minted", cluster=input.cluster, expires_at=token.expires_at.isoformat())
    return token
