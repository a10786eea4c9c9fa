"""Preflight: where a cluster's placement and VIP are checked before any VM
exists. Every problem is reported at once, with what to fix, and the error is
final: retrying cannot make a missing template appear."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from pke_vsphere.config.credentials import EtcdCredentials, StorageCredentials
from pke_vsphere.contracts.messages import PlacementRefs, PreflightInput, PreflightResult, VCenterTarget
from pke_vsphere.contracts.protocol import ErrorType
from pke_vsphere.etcd import checks as etcd_checks
from pke_vsphere.etcd import prefixes, users
from pke_vsphere.vsphere import hardware, inventory, privileges, properties
from pke_vsphere.vsphere.errors import PermanentError, as_activity_errors
from pke_vsphere.vsphere.session import VCenterSession

log = structlog.get_logger(__name__)
VIP_PROBE_SECONDS = 1.0


def vip_answers(vip: str, port: int) -> bool:
    """Whether something already answers on the VIP (a VIP must be free before keepalived claims it)."""
    try:
        with socket.create_connection((vip, port), timeout=VIP_PROBE_SECONDS):
            return True
    except OSError:
        return False


class PreflightActivities:
    def __init__(
        self,
        session: VCenterSession,
        credentials: StorageCredentials | None = None,
        etcd_credentials: EtcdCredentials | None = None,
    ) -> None:
        self._session = session
        self._credentials = credentials or StorageCredentials()
        self._etcd_credentials = etcd_credentials or EtcdCredentials()

    @activity.defn
    def preflight(self, input: PreflightInput) -> PreflightResult:
        problems: list[str] = []

        target: VCenterTarget | None = None
        refs: PlacementRefs | None = None

        def placement(si: Any) -> None:
            nonlocal target, refs
            try:
                resolved = inventory.resolve(si, input.placement)
                refs = inventory.refs(si, resolved)
            except PermanentError as exc:
                problems.extend(str(exc).split("; "))
            else:
                problems.extend(privileges.missing(si, resolved))
                version = properties.read(si, resolved.template, ["config.version"]).get("config.version")
                pools = [(p.index, p.cpus, p.memory_mb) for p in input.pools]
                problems.extend(hardware.problems(str(version or ""), pools))
            if input.storage is not None or input.cloud_provider_credential is not None:
                target = self.check_vsphere_addons(si, input, problems)

        with as_activity_errors(f"preflight of cluster {input.cluster}"):
            self._session.run(placement)
        if input.vip and vip_answers(input.vip, input.api_port):
            problems.append(
                f"control_plane.vip: {input.vip} already answers on port {input.api_port}; "
                "choose an address no host or other cluster uses"
            )
        if input.external_etcd is not None and input.etcd_prefix is not None:
            owner = prefixes.owner_value(input.cluster, input.cluster_uid or "")
            user = users.cluster_user(input.cluster, input.cluster_uid or "")
            problems += etcd_checks.problems(
                input.external_etcd,
                input.etcd_prefix,
                self._etcd_credentials,
                owner,
                user,
                claim=not problems,
            )
        if problems:
            log.info("preflight.failed", cluster=input.cluster, problems=problems)
            raise ApplicationError(
                f"preflight found {len(problems)} problem(s): " + "; ".join(problems),
                type=ErrorType.PREFLIGHT_FAILED,
                non_retryable=True,
            )
        checked = ["datacenter", "template", "folder", "compute", "storage", "privileges", "hardware"]
        checked += ["network"] if input.placement.network else []
        checked += ["vip"] if input.vip else []
        checked += ["storage credential"] if input.storage else []
        checked += ["cloud provider credential"] if input.cloud_provider_credential else []
        checked += ["external etcd"] if input.external_etcd else []
        return PreflightResult(checked=checked, storage_target=target, refs=refs)

    def check_vsphere_addons(self, si: Any, input: PreflightInput, problems: list[str]) -> VCenterTarget:
        """The CSI driver's and the cloud provider's accounts exist and are not ours;
        the StorageClass's datastore exists. Where both connect to."""
        storage = input.storage
        settings = self._session.settings
        accounts = {}
        if storage is not None:
            accounts["storage.credential"] = (storage.credential, "CSI driver", "storage")
        cpi = input.cloud_provider_credential
        if cpi is not None and (storage is None or cpi != storage.credential):
            accounts["cloud_provider.credential"] = (cpi, "cloud provider", "read-only")
        for field, (name, user, needs) in accounts.items():
            account = self._credentials.get(name)
            if account is None:
                held = ", ".join(self._credentials.names()) or "none"
                problems.append(
                    f"{field}: the orchestrator holds no account {name!r} "
                    f"(it holds: {held}); add it to PKE_VSPHERE_STORAGE_CREDENTIALS_FILE"
                )
            elif account.username == settings.vcenter_username:
                problems.append(
                    f"{field}: {name!r} is the orchestrator's own vCenter account; "
                    f"give the {user} an account of its own with only the {needs} privileges"
                )
        datastore_url = None
        if storage is not None and storage.datastore is not None:
            folder = f"{input.placement.datacenter}/datastore"
            found = inventory.find_path(si, f"{folder}/{storage.datastore}")
            url = properties.read(si, found, ["summary.url"]).get("summary.url") if found else None
            if url is None:
                problems.append(f"storage.datastore: no datastore {storage.datastore!r} in {folder}")
            datastore_url = url
        endpoint = urlsplit(settings.vcenter_url)
        return VCenterTarget(
            vcenter_host=endpoint.hostname or "",
            vcenter_port=endpoint.port or (443 if endpoint.scheme != "http" else 80),
            datacenter=input.placement.datacenter,
            thumbprint=settings.vcenter_thumbprint,
            insecure=settings.vcenter_insecure,
            datastore_url=datastore_url,
            ca_pem=settings.vcenter_ca_file.read_text() if settings.vcenter_ca_file else None,
        )
