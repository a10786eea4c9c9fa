"""The cluster spec: what a user asks for, validated before anything is created.

Every field is documented here; ``examples/demo-cluster.yaml`` shows a full
spec and the README lists the rules. Validation errors name the field.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# RFC 1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric.
_RFC1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_K8S_VERSION = re.compile(r"^1\.(2[6-9]|3[0-9])\.[0-9]{1,2}$")
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})*$")

# Node names are "<cluster>-<pool>-<index>", the index of at least two digits
# (01..999; see contracts/ids.py), and must stay a valid host name label (63).
MAX_CLUSTER_NAME = 30
MAX_POOL_NAME = 20
MASTER_COUNTS = (1, 3, 5)
"""Masters that run etcd: an odd number, so that a majority survives a failure."""
MAX_MASTERS = 5
MAX_POOL_SIZE = 999
MAX_CLUSTER_NODES = 1000


def _rfc1123_label(value: str, what: str, max_len: int) -> str:
    if len(value) > max_len:
        raise ValueError(f"{what} {value!r} is longer than {max_len} characters")
    if not _RFC1123_LABEL.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not an RFC 1123 label "
            "(lower-case letters, digits and '-', starting and ending with a letter or digit)"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeRole(StrEnum):
    """What a pool's nodes run."""

    MASTER = "master"
    """Control plane: etcd and the Kubernetes API server."""
    WORKER = "worker"
    """Workloads."""


class VSpherePlacement(_Strict):
    """Where the cluster's VMs go in vCenter. Names are inventory paths relative
    to the datacenter's folders (``host/``, ``vm/``, ``datastore/``, ``network/``)."""

    datacenter: str = Field(min_length=1, description="Datacenter name, e.g. 'DC0'.")
    template: str = Field(
        min_length=1,
        description="VM template to clone, path under the datacenter's VM folder.",
    )
    folder: str = Field(
        min_length=1, description="VM folder for the cluster's VMs, path under the VM folder."
    )
    compute_cluster: str | None = Field(
        default=None, description="Compute cluster; VMs go into its root resource pool."
    )
    resource_pool: str | None = Field(
        default=None,
        description="Resource pool path under the host folder, e.g. 'C0/Resources/pke'.",
    )
    datastore: str | None = Field(default=None, description="Datastore for the VMs' disks.")
    datastore_cluster: str | None = Field(
        default=None,
        description="Datastore cluster (storage pod); Storage DRS recommends the datastore.",
    )
    network: str | None = Field(
        default=None,
        description="Port group for the first NIC; omitted: keep the template's network.",
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> Self:
        if (self.compute_cluster is None) == (self.resource_pool is None):
            raise ValueError("set exactly one of vsphere.compute_cluster or vsphere.resource_pool")
        if (self.datastore is None) == (self.datastore_cluster is None):
            raise ValueError("set exactly one of vsphere.datastore or vsphere.datastore_cluster")
        return self


class NodePoolSpec(_Strict):
    """A group of identical nodes."""

    name: str = Field(description="Pool name, an RFC 1123 label; part of every node name.")
    role: NodeRole = Field(description="'master' (exactly one pool) or 'worker'.")
    count: int = Field(ge=0, le=MAX_POOL_SIZE, description="Desired number of nodes.")
    cpus: int = Field(default=2, ge=1, le=128, description="Virtual CPUs per node.")
    memory_mb: int = Field(
        default=4096, ge=2048, le=1048576, description="Memory per node in MiB (2048..1048576)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _rfc1123_label(value, "pool name", MAX_POOL_NAME)

    @field_validator("memory_mb")
    @classmethod
    def _memory_multiple(cls, value: int) -> int:
        if value % 4:
            raise ValueError("memory_mb must be a multiple of 4 (vSphere requirement)")
        return value


class Topology(StrEnum):
    """Where etcd and the API servers run."""

    DEDICATED = "dedicated"
    """1, 3 or 5 masters run etcd and the API server; workloads stay off them (NoSchedule)."""
    SHARED = "shared"
    """3 or 5 nodes run etcd, the API server and workloads (no taint); worker pools optional."""
    EXTERNAL_ETCD = "external_etcd"
    """1 to 5 masters run only the API server, against an existing etcd cluster."""

    @property
    def runs_etcd(self) -> bool:
        return self is not Topology.EXTERNAL_ETCD

    @property
    def master_counts(self) -> tuple[int, ...]:
        if self is Topology.SHARED:
            return (3, 5)
        if self is Topology.EXTERNAL_ETCD:
            return tuple(range(1, MAX_MASTERS + 1))
        return MASTER_COUNTS

    def master_count_problem(self, count: int) -> str | None:
        """Why ``count`` masters do not suit this topology, or None."""
        if count in self.master_counts:
            return None
        if self is Topology.SHARED:
            return (
                "the shared topology runs etcd, the API server and workloads on 3 or 5 nodes; "
                f"not {count} (for one node use the dedicated topology)"
            )
        if self is Topology.EXTERNAL_ETCD:
            return f"the external_etcd topology runs 1 to {MAX_MASTERS} API servers, not {count}"
        return f"a master pool has 1, 3 or 5 nodes (etcd needs an odd quorum), not {count}"


def _etcd_endpoint(value: str) -> str:
    """``https://HOST:PORT``, normalised; anything else is refused with the reason."""
    where = f"control_plane.external_etcd.endpoints: {value!r}"
    try:
        url = urlsplit(value)
        port = url.port
    except ValueError as exc:
        raise ValueError(f"{where} is not a URL ({exc})") from None
    if url.scheme != "https":
        raise ValueError(f"{where} must use https (the API servers present a client certificate)")
    if not url.hostname or port is None:
        raise ValueError(f"{where} needs a host and a port: https://HOST:PORT")
    if url.username or url.password or url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"{where} must be only https://HOST:PORT (no user, path or query)")
    host = url.hostname
    try:
        if ipaddress.ip_address(host).version == 6:
            host = f"[{host}]"
    except ValueError:
        if not _DNS_NAME.fullmatch(host):
            raise ValueError(f"{where}: {host!r} is neither an IP address nor a DNS name") from None
    return f"https://{host}:{port}"


class ExternalEtcd(_Strict):
    """An existing etcd cluster the API servers keep the cluster's data in."""

    endpoints: list[str] = Field(
        min_length=1,
        max_length=9,
        description="Client URLs of the etcd members, https://HOST:PORT; reachable from nodes and worker.",
    )
    credential: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description=(
            "Name of the etcd client certificate, key and CA held by the orchestrator "
            "(see PKE_VSPHERE_ETCD_CREDENTIALS_FILE)."
        ),
    )
    prefix: str | None = Field(
        default=None,
        description=(
            "Key prefix of this cluster's data (kube-apiserver --etcd-prefix); "
            "default /pke-vsphere/CLUSTER. Must hold no keys when the cluster is created."
        ),
    )

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, values: list[str]) -> list[str]:
        endpoints = [_etcd_endpoint(v) for v in values]
        repeated = sorted({e for e in endpoints if endpoints.count(e) > 1})
        if repeated:
            raise ValueError(f"control_plane.external_etcd.endpoints: repeated {', '.join(repeated)}")
        return endpoints

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(/[A-Za-z0-9._-]+){1,8}", value):
            raise ValueError(
                f"control_plane.external_etcd.prefix {value!r}: '/'-separated segments of letters, "
                "digits, '.', '_' and '-', starting with '/' and not ending with one (e.g. /clusters/prod)"
            )
        return value


class ControlPlane(_Strict):
    """How followers, workers and users reach the Kubernetes API."""

    topology: Topology = Field(default=Topology.DEDICATED, description="Where etcd and the API servers run.")
    external_etcd: ExternalEtcd | None = Field(
        default=None,
        description="The etcd cluster to use; required with (and only with) topology external_etcd.",
    )

    vip: ipaddress.IPv4Address | None = Field(
        default=None,
        description="Virtual IP the masters share through keepalived; required with >1 master.",
    )
    dns_name: str | None = Field(
        default=None,
        description=(
            "A DNS name for the API (pointing at the VIP, or at the masters through an existing "
            "load balancer or round-robin DNS): in the API server certificate and the endpoint "
            "that followers and workers use."
        ),
    )
    interface: str | None = Field(
        default=None,
        pattern=r"^[a-zA-Z0-9_.:-]{1,15}$",
        description="NIC keepalived uses; default: the one holding the node's address, found at boot.",
    )
    vrrp_router_id: int | None = Field(
        default=None,
        ge=1,
        le=255,
        description=(
            "VRRP virtual router id (1-255), unique among the clusters on the network; "
            "default: derived from the cluster and checked against the other clusters."
        ),
    )
    port: int = Field(default=6443, ge=1, le=65535, description="API server port.")

    @field_validator("dns_name")
    @classmethod
    def _dns_name(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_NAME.fullmatch(value):
            raise ValueError(
                f"control_plane.dns_name {value!r} is not a DNS name (lower-case labels of letters, "
                "digits and '-', separated by dots, at most 253 characters)"
            )
        return value

    @model_validator(mode="after")
    def _external_etcd_with_its_topology(self) -> Self:
        external = self.topology is Topology.EXTERNAL_ETCD
        if external and self.external_etcd is None:
            raise ValueError(
                "control_plane.external_etcd is required with topology external_etcd "
                "(its endpoints and the name of its client credential)"
            )
        if not external and self.external_etcd is not None:
            raise ValueError(
                f"control_plane.external_etcd is only for topology external_etcd; the {self.topology} "
                "topology runs etcd on the masters"
            )
        return self

    @model_validator(mode="after")
    def _vrrp_needs_vip(self) -> Self:
        if self.vip is None and self.vrrp_router_id is not None:
            raise ValueError(
                "control_plane.vrrp_router_id configures keepalived, which runs only with control_plane.vip"
            )
        return self

    @property
    def cert_sans(self) -> list[str]:
        """Extra names of the API server certificate."""
        return [str(name) for name in (self.vip, self.dns_name) if name is not None]


class KubernetesNetwork(_Strict):
    """Cluster-internal address ranges."""

    pod_cidr: ipaddress.IPv4Network = Field(default=ipaddress.IPv4Network("10.20.0.0/16"))
    service_cidr: ipaddress.IPv4Network = Field(default=ipaddress.IPv4Network("10.10.0.0/16"))

    @model_validator(mode="after")
    def _disjoint(self) -> Self:
        if self.pod_cidr.overlaps(self.service_cidr):
            raise ValueError("network.pod_cidr and network.service_cidr overlap")
        return self


AddressRange = tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]


def parse_address_range(value: str) -> AddressRange:
    """``10.0.0.50-10.0.0.99`` or ``10.0.0.64/27`` as (first, last) address."""
    if "-" in value:
        first, _, last = value.partition("-")
        start, end = ipaddress.IPv4Address(first.strip()), ipaddress.IPv4Address(last.strip())
        if start > end:
            raise ValueError("the range ends before it starts")
        return start, end
    network = ipaddress.IPv4Network(value, strict=True)
    return network.network_address, network.broadcast_address


class LoadBalancerSpec(_Strict):
    """MetalLB in layer-2 mode: the addresses Services of type LoadBalancer get."""

    addresses: list[str] = Field(
        min_length=1,
        max_length=32,
        description="IPv4 ranges ('10.0.0.50-10.0.0.99') or CIDRs ('10.0.0.64/27') MetalLB hands out.",
    )

    @field_validator("addresses")
    @classmethod
    def _addresses(cls, values: list[str]) -> list[str]:
        ranges: list[tuple[str, AddressRange]] = []
        for value in values:
            try:
                current = parse_address_range(value)
            except ValueError as exc:
                raise ValueError(
                    f"load_balancer.addresses: {value!r} is not an IPv4 range 'A-B' or a CIDR ({exc})"
                ) from None
            for other, (start, end) in ranges:
                if current[0] <= end and start <= current[1]:
                    raise ValueError(f"load_balancer.addresses: {value!r} overlaps {other!r}")
            ranges.append((value, current))
        return values

    def ranges(self) -> list[AddressRange]:
        return [parse_address_range(value) for value in self.addresses]

    def containing(self, address: ipaddress.IPv4Address | str) -> str | None:
        """The entry that contains ``address``, if any."""
        ip = ipaddress.IPv4Address(str(address))
        for value, (start, end) in zip(self.addresses, self.ranges(), strict=True):
            if start <= ip <= end:
                return value
        return None


class StorageSpec(_Strict):
    """The vSphere CSI driver and a StorageClass for PersistentVolumes."""

    credential: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description=(
            "Name of a vSphere account for the CSI driver, held by the orchestrator "
            "(see PKE_VSPHERE_STORAGE_CREDENTIALS_FILE); never the orchestrator's own account."
        ),
    )
    datastore: str | None = Field(default=None, description="Datastore the StorageClass provisions on.")
    storage_policy: str | None = Field(default=None, description="vSphere storage policy name instead.")
    class_name: str = Field(
        default="vsphere",
        pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="Name of the StorageClass.",
    )
    default_class: bool = Field(default=True, description="Make it the cluster's default StorageClass.")

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.datastore is None) == (self.storage_policy is None):
            raise ValueError("storage: give exactly one of datastore and storage_policy")
        return self


class CloudProviderSpec(_Strict):
    """The vSphere cloud provider (CPI), which initializes nodes (provider id, addresses)."""

    credential: str = Field(
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description=(
            "Name of a vSphere account (read-only is enough) held by the orchestrator "
            "(see PKE_VSPHERE_STORAGE_CREDENTIALS_FILE); never the orchestrator's own account."
        ),
    )


Seconds = Annotated[int, Field(ge=5, le=24 * 3600)]


class Timeouts(_Strict):
    """Deadlines for each step of a node, in seconds."""

    clone: Seconds = Field(default=900, description="Find-or-clone the VM.")
    configure: Seconds = Field(default=300, description="Set CPUs, memory, network.")
    power_on: Seconds = Field(default=300, description="Power the VM on.")
    ip: Seconds = Field(default=600, description="VMware Tools reports an IP.")
    leader_ready: Seconds = Field(default=1200, description="Leader reports Kubernetes is up.")
    join: Seconds = Field(default=1200, description="A follower or worker reports it joined.")
    heartbeat: int = Field(
        default=30,
        ge=5,
        le=300,
        description="A node's long vCenter steps (clone to IP) on a worker that died are "
        "retried on another this soon; each such step heartbeats at about half of it.",
    )

    def as_timedelta(self, step: str) -> timedelta:
        return timedelta(seconds=getattr(self, step))


class ReconcilePolicy(_Strict):
    """How often the cluster workflow compares vCenter with its desired state."""

    interval_seconds: int = Field(default=300, ge=10, le=24 * 3600)
    orphan_grace_seconds: int = Field(
        default=600,
        ge=0,
        le=7 * 24 * 3600,
        description="A VM marked with the cluster that the cluster does not own is destroyed "
        "once it has been seen for this long.",
    )


class DrainPolicy(_Strict):
    """Removing a node: how long to wait for its pods to be evicted (PodDisruptionBudgets
    may hold them); after that the removal proceeds and says so."""

    timeout_seconds: int = Field(default=300, ge=0, le=3600)


class ClusterSpec(_Strict):
    """A PKE cluster on vSphere."""

    name: str = Field(description="Cluster name, an RFC 1123 label of at most 30 characters.")
    kubernetes_version: str = Field(default="1.30.4", description="Kubernetes 1.26 to 1.39.")
    vsphere: VSpherePlacement
    control_plane: ControlPlane = Field(default_factory=ControlPlane)
    network: KubernetesNetwork = Field(default_factory=KubernetesNetwork)
    pools: list[NodePoolSpec] = Field(min_length=1, description="Exactly one master pool.")
    ssh_authorized_keys: list[str] = Field(
        default_factory=list, description="Public keys for the 'pke' user on every node."
    )
    timeouts: Timeouts = Field(default_factory=Timeouts)
    reconcile: ReconcilePolicy = Field(default_factory=ReconcilePolicy)
    drain: DrainPolicy = Field(default_factory=DrainPolicy)
    load_balancer: LoadBalancerSpec | None = Field(
        default=None, description="MetalLB address ranges for Services of type LoadBalancer."
    )
    storage: StorageSpec | None = Field(default=None, description="vSphere CSI storage.")
    cloud_provider: CloudProviderSpec | None = Field(
        default=None,
        description=(
            "The vSphere cloud provider (CPI) and its account; with storage and no cloud_provider, "
            "the CPI uses the storage account. Neither: nodes run without a cloud provider."
        ),
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _rfc1123_label(value, "cluster name", MAX_CLUSTER_NAME)

    @field_validator("kubernetes_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not _K8S_VERSION.fullmatch(value):
            raise ValueError(f"kubernetes_version {value!r} is not a supported 1.26-1.39 release")
        return value

    @field_validator("ssh_authorized_keys")
    @classmethod
    def _keys(cls, keys: list[str]) -> list[str]:
        for key in keys:
            if not re.fullmatch(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( .*)?", key):
                raise ValueError(f"ssh_authorized_keys: {key[:20]!r}... is not an OpenSSH public key")
        return keys

    @model_validator(mode="after")
    def _pools(self) -> Self:
        names = [p.name for p in self.pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pools: names must be unique, repeated: {', '.join(duplicates)}")
        total = sum(p.count for p in self.pools)
        if total > MAX_CLUSTER_NODES:
            raise ValueError(f"pools: {total} nodes in all, more than a cluster's {MAX_CLUSTER_NODES}")
        masters = [p for p in self.pools if p.role is NodeRole.MASTER]
        if len(masters) != 1:
            raise ValueError(f"pools: need exactly one master pool, found {len(masters)}")
        problem = self.control_plane.topology.master_count_problem(masters[0].count)
        if problem is not None:
            raise ValueError(f"pools.{masters[0].name}.count: {problem}")
        if masters[0].count > 1 and self.control_plane.vip is None:
            raise ValueError("control_plane.vip is required when the master pool has more than 1 node")
        vip = self.control_plane.vip
        if vip is not None:
            for label, net in (
                ("pod_cidr", self.network.pod_cidr),
                ("service_cidr", self.network.service_cidr),
            ):
                if vip in net:
                    raise ValueError(f"control_plane.vip {vip} lies inside network.{label} {net}")
        if self.load_balancer is not None:
            self._check_load_balancer(self.load_balancer)
        return self

    def _check_load_balancer(self, lb: LoadBalancerSpec) -> None:
        vip = self.control_plane.vip
        if vip is not None and (entry := lb.containing(vip)) is not None:
            raise ValueError(
                f"load_balancer.addresses: {entry!r} contains control_plane.vip {vip}; "
                "MetalLB would hand the API's address to a Service"
            )
        for label, net in (("pod_cidr", self.network.pod_cidr), ("service_cidr", self.network.service_cidr)):
            for value, (start, end) in zip(lb.addresses, lb.ranges(), strict=True):
                if start <= net.broadcast_address and net.network_address <= end:
                    raise ValueError(f"load_balancer.addresses: {value!r} overlaps network.{label} {net}")

    @property
    def cloud_provider_credential(self) -> str | None:
        """The account the vSphere CPI uses, if the cluster runs it (the CSI driver needs it)."""
        if self.cloud_provider is not None:
            return self.cloud_provider.credential
        return self.storage.credential if self.storage is not None else None

    @property
    def etcd_prefix(self) -> str | None:
        """Where an external etcd keeps this cluster's data; None when the masters run etcd."""
        etcd = self.control_plane.external_etcd
        if etcd is None:
            return None
        return etcd.prefix or f"/pke-vsphere/{self.name}"

    @property
    def master_pool(self) -> NodePoolSpec:
        return next(p for p in self.pools if p.role is NodeRole.MASTER)

    def pool(self, name: str) -> NodePoolSpec:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)


def validation_problems(exc: ValidationError) -> list[str]:
    """One line per problem, each naming its field: ``pools.1.cpus: ...``."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "spec"
        problems.append(f"{where}: {error['msg']}")
    return problems
