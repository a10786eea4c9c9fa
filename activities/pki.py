"""Activities that make key material: randomness never runs in workflow code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from temporalio import activity

from pke_vsphere.contracts.messages import (
    GeneratePkiInput,
    IssueKubeCredentialInput,
    KubeAccess,
)
from pke_vsphere.contracts.pki import ClusterPKI
from pke_vsphere.kube import client as kube_client
from pke_vsphere.pki.cluster import generate_cluster_pki
from pke_vsphere.runtime import crashpoints

log = structlog.get_logger(__name__)


@activity.defn
def generate_pki(input: GeneratePkiInput) -> ClusterPKI:
    """Generate the cluster's CAs and keys (a retry simply generates new ones;
    nothing has used the earlier ones until the workflow records a result)."""
    pki = generate_cluster_pki(input.cluster, etcd_ca=input.etcd_ca)
    crashpoints.reach("pki.generated")
    log.info("pki.generated", cluster=input.cluster, cluster_uid=input.cluster_uid)
    return pki


@activity.defn
def issue_kube_credential(input: IssueKubeCredentialInput) -> KubeAccess:
    """A client certificate for the cluster's API, valid ``validity_seconds``: what
    node workflows install and delete their nodes' join tokens with, so that they
    never hold the cluster's CA key."""
    validity = timedelta(seconds=input.validity_seconds)
    cert_pem, key_pem = kube_client.issue_client(input.access, kube_client.JOIN_TOKENS_CN, validity)
    log.info("kube_credential.issued", cluster=input.cluster, validity_seconds=input.validity_seconds)
    return KubeAccess.model_validate(
        {
            "endpoint": input.access.endpoint,
            "ca_cert_pem": input.access.ca_cert_pem,
            "client_cert_pem": cert_pem,
            "client_key_pem": key_pem,
            "expires_at": datetime.now(UTC) + validity,
        }
    )
