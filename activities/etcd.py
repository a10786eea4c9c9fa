"""Removing a deleted cluster's data from an external etcd: every key under the
cluster's prefix, and nothing outside it (the etcd is shared)."""

from __future__ import annotations

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from external_etcd import material
from external_etcd.gateway import EtcdGateway, EtcdUnavailable
from models.messages import ClearEtcdPrefixInput, ClearEtcdPrefixResult
from settings.credentials import EtcdCredentials

log = structlog.get_logger(__name__)


class EtcdActivities:
    def __init__(self, credentials: EtcdCredentials | None = None) -> None:
        self._credentials = credentials or EtcdCredentials()

    @activity.defn(name="clear_etcd_prefix")
    def clear_etcd_prefix(self, input: ClearEtcdPrefixInput) -> ClearEtcdPrefixResult:
        """Delete the keys under the prefix through the first endpoint that answers;
        deleting an empty range is a no-op, so a retry after a crash is harmless."""
        credential = self._credentials.get(input.credential)
        if credential is None:
            raise ApplicationError(
                f"the orchestrator holds no etcd credential {input.credential!r}",
                type="EtcdCredential",
                non_retryable=True,
            )
        try:
            client = material.read(credential)
        except material.EtcdCredentialError as exc:
            raise ApplicationError(
                f"etcd credential {input.credential!r}: {exc}", type="EtcdCredential", non_retryable=True
            ) from None
        failures = []
        with material.ssl_context(client) as context:
            for endpoint in input.endpoints:
                with EtcdGateway(endpoint, context) as gateway:
                    try:
                        deleted = gateway.delete(input.prefix)
                    except EtcdUnavailable as exc:
                        failures.append(f"{endpoint}: {exc}")
                        continue
                log.info("etcd.prefix_cleared", cluster=input.cluster, prefix=input.prefix, deleted=deleted)
                return ClearEtcdPrefixResult(deleted=deleted, endpoint=endpoint)
        raise ApplicationError(
            f"no etcd endpoint could delete {input.prefix}: " + "; ".join(failures), type="EtcdUnavailable"
        )
