"""Removing a cluster's data from an external etcd when it is deleted or its
create failed: every key under its prefix, in one transaction that first finds
the cluster's own owner key there, so a prefix it never took (a create stopped
at preflight) or another cluster's is left alone; nothing outside the prefix.
Then the cluster's own etcd user and role go too (``external_etcd.users``)."""

from __future__ import annotations

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from pke_vsphere.config.credentials import EtcdCredentials
from pke_vsphere.contracts.messages import ClearEtcdPrefixInput, ClearEtcdPrefixResult
from pke_vsphere.contracts.protocol import ErrorType
from pke_vsphere.etcd import material, prefixes, users
from pke_vsphere.etcd.client import EtcdClient, EtcdUnavailable, first_answer

log = structlog.get_logger(__name__)


class EtcdActivities:
    def __init__(self, credentials: EtcdCredentials | None = None) -> None:
        self._credentials = credentials or EtcdCredentials()

    @activity.defn
    def clear_etcd_prefix(self, input: ClearEtcdPrefixInput) -> ClearEtcdPrefixResult:
        """Through the first endpoint that answers; a retry after a crash finds the
        prefix already cleared (no owner key) and deletes nothing."""
        try:
            client = material.client_certificate(self._credentials, input.credential)
        except material.EtcdCredentialError as exc:
            raise ApplicationError(str(exc), type=ErrorType.ETCD_CREDENTIAL, non_retryable=True) from None
        owner = prefixes.owner_value(input.cluster, input.cluster_uid)
        key = prefixes.owner_key(input.prefix)
        user = users.cluster_user(input.cluster, input.cluster_uid)

        def clear(etcd: EtcdClient) -> int | None:
            deleted = etcd.delete_if(input.prefix, key, owner)
            etcd.remove_prefix_user(user)
            return deleted

        try:
            deleted = first_answer(input.endpoints, client, clear)
        except EtcdUnavailable as exc:
            raise ApplicationError(
                f"no etcd endpoint could clear {input.prefix}: {exc}", type=ErrorType.ETCD_UNAVAILABLE
            ) from None
        log.info("etcd.prefix_cleared", cluster=input.cluster, prefix=input.prefix, deleted=deleted)
        return ClearEtcdPrefixResult(deleted=deleted or 0, owned=deleted is not None)
