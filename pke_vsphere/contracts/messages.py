"""Inputs and outputs of workflows, activities, signals and updates."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from ipaddress import IPv4Address
from typing import Annotated, Self

from pydantic import BaseModel, Field, StringConstraints, model_validator

from pke_vsphere.contracts.pki import BootstrapToken, ClusterPKI
from pke_vsphere.contracts.protocol import NodeCall
from pke_vsphere.contracts.secret import Secret
from pke_vsphere.contracts.spec import (
    ClusterSpec,
    ExternalEtcd,
    LoadBalancerSpec,
    StorageSpec,
    Timeouts,
    VSpherePlacement,
)
from pke_vsphere.contracts.state import (
    ClusterPhase,
    NodeIdentity,
    NodeKind,
    NodePhase,
    NodeState,
    ReconcileReport,
)


# --- cluster workflow -------------------------------------------------------
class VCenterTarget(BaseModel):
    """Where the cluster's vSphere add-ons (cloud provider, CSI driver) connect, and
    where the CSI driver provisions (no secrets)."""

    vcenter_host: str
    vcenter_port: int
    datacenter: str
    thumbprint: str | None = None
    insecure: bool = False
    datastore_url: str | None = None
    ca_pem: str | None = None
    """The CA bundle the orchestrator verifies vCenter with (public), for the add-ons too."""


class ClusterState(BaseModel):
    """Everything a cluster's workflow knows: the workflow holds one of these, its
    planning decisions (workflows/planning.py) are functions of it, and it is
    carried across continue-as-new as it is."""

    spec: ClusterSpec
    """The desired spec: as created, with every command since applied."""
    cluster_uid: str
    """This incarnation of the cluster's name: in every node's identity and token."""
    phase: ClusterPhase = ClusterPhase.PENDING
    created_at: datetime
    ready_at: datetime | None = None
    error: str | None = None
    pki: ClusterPKI | None = None
    nodes: dict[str, NodeState] = Field(default_factory=dict)
    """Every node the cluster owns, by name."""
    generations: dict[str, int] = Field(default_factory=dict)
    """Per node name, how many VMs had it before: a new VM of a name gets the next one,
    and with it a new instance UUID and token id."""
    join_access: KubeAccess | None = None
    """The short-lived credential node workflows install and delete join tokens with."""
    orphans_seen: dict[str, datetime] = Field(default_factory=dict)
    """VMs marked with the cluster that it does not own, and when each was first seen."""
    last_reconcile: ReconcileReport | None = None
    vrrp_router_id: int | None = None
    """Chosen at preflight, unique among the clusters on the network (None: no VIP)."""
    storage_target: VCenterTarget | None = None
    """Where the vSphere add-ons connect, found at preflight (no secrets)."""
    cloud_provider: str | None = None
    """PKE's --kubernetes-cloud-provider of every node: 'external' (the vSphere CPI
    add-on) or None, fixed at create."""
    placement_refs: PlacementRefs | None = None
    """The placement as the create's preflight resolved it (None: before 0.3)."""


class ClusterWorkflowInput(BaseModel):
    """Input of ``ClusterWorkflow``: start a cluster with ``spec``; ``state`` is what the
    workflow hands itself when it continues as new."""

    spec: ClusterSpec | None = None
    state: ClusterState | None = Field(
        default=None, description="Set by the workflow itself when it continues as new."
    )

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.spec is None) == (self.state is None):
            raise ValueError(
                "give the cluster's spec (state is the workflow's own, when it continues as new)"
            )
        return self


class ClusterResult(BaseModel):
    name: str
    phase: ClusterPhase
    error: str | None = None


# --- node workflow ----------------------------------------------------------
class NodeBootstrapSettings(BaseModel):
    """What a node's cloud-init needs to know about its cluster (no secrets)."""

    kubernetes_version: str
    api_endpoint: str | None
    """host:port followers and workers join; None for the leader of a 1-master cluster."""
    api_port: int = Field(default=6443, ge=1, le=65535)
    """The port the API servers listen on (``control_plane.port``)."""
    master_mode: str
    """PKE ``--kubernetes-master-mode``: 'default' (1 master) or 'ha'."""
    pod_cidr: str
    service_cidr: str
    ssh_authorized_keys: list[str] = Field(default_factory=list)
    api_server_cert_sans: list[str] = Field(default_factory=list)
    """Extra names of the API server certificate: the VIP and the DNS name."""
    schedulable_masters: bool = False
    """The shared topology: masters run workloads too (no NoSchedule taint)."""
    cloud_provider: str | None = None
    """PKE ``--kubernetes-cloud-provider``: 'external' with the vSphere CPI, None for none."""
    etcd_endpoints: list[str] = Field(default_factory=list)
    """The external_etcd topology: the etcd the API servers use (empty: they run their own)."""
    etcd_prefix: str | None = None


class NodeWorkflowInput(BaseModel):
    identity: NodeIdentity
    placement: VSpherePlacement
    cpus: int
    memory_mb: int
    bootstrap: NodeBootstrapSettings
    timeouts: Timeouts
    load_balancer: LoadBalancerSpec | None = None
    """MetalLB's addresses: a node must not get one of them."""
    join: NodeJoinContext | None = None
    """Followers and workers: how their workflow gives them a join token of their own."""
    placement_refs: PlacementRefs | None = None
    """The placement as the create's preflight resolved it (None: resolve the paths)."""
    join_token: BootstrapToken | None = None
    """The node's own join token, minted with those of the nodes launched with it
    (None: the node's workflow mints it when the node first asks)."""
    hand_back_join_tokens: bool = False
    """Once the node joined, end with its join tokens' ids for the cluster to delete
    with those of the other nodes of its round (patch ``join-tokens-back-in-rounds``
    in the cluster's workflow); False: delete them here, as before."""


class NodeResult(BaseModel):
    name: str
    vm_ref: str
    ip: str
    powered_on_at: datetime | None = None
    """None from the node workflow of 0.2 (it signalled it)."""
    join_token_ids: list[str] = Field(default_factory=list, max_length=16)
    """The ids (not the secrets) of the join tokens the node was given, for its
    cluster's workflow to delete (``NodeWorkflowInput.hand_back_join_tokens``);
    empty when the node workflow deleted them itself."""


class NodeVm(BaseModel):
    """The VM of a node whose workflow failed past its VM step: the failure's details."""

    vm_ref: str
    ip: str | None = None


class StartNodesInput(BaseModel):
    """Node workflows to start together (activities/node_workflows.py)."""

    task_queue: str
    nodes: list[NodeWorkflowInput] = Field(max_length=100)


class AwaitNodesInput(BaseModel):
    workflow_ids: list[str] = Field(min_length=1, max_length=1000)
    gather_seconds: float = Field(default=2.0, ge=0, le=60)
    """Once one has ended, how long to wait for more before answering."""
    max_outcomes: int = Field(default=1000, ge=1, le=1000)
    """At most this many outcomes per answer: the cluster workflow settles each
    answer in one workflow task, which must stay short."""


class CancelNodesInput(BaseModel):
    workflow_ids: list[str] = Field(max_length=1000)


class NodeOutcome(BaseModel):
    """How one node workflow ended: its result, or why not (with its VM, if it had one)."""

    workflow_id: str
    result: NodeResult | None = None
    error: str | None = None
    vm: NodeVm | None = None
    cancelled: bool = False
    never_started: bool = False
    """No such workflow: its start never happened (the join token minted for it is
    the cluster's to take back)."""


class AwaitNodesResult(BaseModel):
    outcomes: list[NodeOutcome]


class NodeReportKind(StrEnum):
    READY = "ready"
    JOINED = "joined"
    FAILED = "failed"


class NodeReport(BaseModel):
    """Signal ``report`` on a node's workflow, sent by the node API for the node."""

    kind: NodeReportKind
    message: str | None = Field(default=None, max_length=2000)
    address: IPv4Address | None = None
    """The address the node runs Kubernetes on; the orchestrator checks it is the one
    VMware Tools reported on the cluster network's NIC."""


# --- node API <-> node workflow ------------------------------------------------
class NodeCallRequest(BaseModel):
    """Update ``node_call`` on a node's workflow: the node API asks whether one call
    of a node may be served. The claims are the token's, checked against the
    workflow's own identity; the node key travels only as its SHA-256."""

    call: NodeCall
    cluster_uid: str
    instance_uuid: str
    kind: NodeKind
    node_key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    report: NodeReport | None = None
    """With ``call == report``: what the node reports."""


class NodeCallGrant(BaseModel):
    """The call may be served: the how-manyth answer this is, and what the node
    workflow knows that the answer needs."""

    call: NodeCall
    served: int
    """1 for the first answer, 2 and more for repeats."""
    node_address: str
    """The address VMware Tools reported on the cluster network's NIC."""
    join: JoinInfo | None = None
    """With ``call == join``: the node's own bootstrap token (encrypted in history
    by the payload codec)."""


class NodeJoinContext(BaseModel):
    """What a follower's or worker's workflow needs to give its node a bootstrap
    token of its own: where nodes reach the API, the CA hash, and a short-lived
    credential for installing and deleting tokens (never the CA key)."""

    api_endpoint: str
    ca_cert_hash: str
    access: KubeAccess


class DeleteTokenInput(BaseModel):
    cluster: str
    access: KubeAccess
    token_id: str = Field(pattern=r"^[a-z0-9]{6}$")


class DeleteTokensInput(BaseModel):
    """The join tokens of the nodes a round of outcomes brought, deleted together."""

    cluster: str
    access: KubeAccess
    token_ids: list[Annotated[str, StringConstraints(pattern=r"^[a-z0-9]{6}$")]] = Field(max_length=2000)


class RemoveNodeTokenInput(BaseModel):
    """Take a bootstrapped node's token out of its VM's guestinfo."""

    vm_ref: str
    name: str


class IssueKubeCredentialInput(BaseModel):
    cluster: str
    access: KubeAccess
    validity_seconds: int = Field(ge=60, le=7 * 24 * 3600)


# --- node API <-> node and cluster workflows ---------------------------------------
class JoinInfo(BaseModel):
    token: str
    """kubeadm bootstrap token; the payload codec keeps it out of plain history."""
    expires_at: datetime
    ca_cert_hash: str
    api_endpoint: str
    node_address: str | None = None
    """This node's address as VMware Tools reported it on the cluster network's NIC."""


class BootstrapMaterialRequest(BaseModel):
    """Query ``bootstrap_material``: a master asks for the cluster's CAs."""

    node: str


class BootstrapMaterial(BaseModel):
    pki: ClusterPKI
    api_endpoint: str | None
    vip: str | None
    api_port: int = 6443
    vrrp_router_id: int | None = None
    """None: the cluster has no VIP, and its masters run no keepalived."""
    vrrp_interface: str | None  # None: the node finds it at boot
    vrrp_priority: int
    kind: str
    cluster_uid: str = ""
    load_balancer: LoadBalancerSpec | None = None
    storage: StorageSpec | None = None
    storage_target: VCenterTarget | None = None
    external_etcd: ExternalEtcd | None = None
    """The node API adds the client certificate the orchestrator holds for it."""
    etcd_prefix: str | None = None
    cloud_provider_credential: str | None = None
    """The vSphere account of the cluster's cloud provider (CPI), if it runs one."""
    kubernetes_version: str | None = None
    node_address: str | None = None
    """This node's address as VMware Tools reported it on the cluster network's NIC."""


class GeneratePkiInput(BaseModel):
    cluster: str
    cluster_uid: str
    etcd_ca: bool = True
    """False for an external etcd: the cluster runs no etcd of its own to sign for."""


class EnsureVmInput(BaseModel):
    identity: NodeIdentity
    placement: VSpherePlacement
    cpus: int
    memory_mb: int
    bootstrap: NodeBootstrapSettings
    token_expires_at: datetime | None = None
    """The node's bootstrap deadline: its token expires then (None: the worker's default)."""


class PlacementRefs(BaseModel):
    """A placement's managed objects, resolved once per create by the preflight and
    handed to every node's workflow, so a clone looks nothing up by path. With them
    go the template's facts a clone needs (its cores per socket, its first NIC) and
    the NIC backing of the spec's network. A reference vCenter no longer knows (a
    template replaced since) sends the clone back to the paths."""

    datacenter: str
    template: str
    folder: str
    pool: str
    datastore: str | None = None
    datastore_cluster: str | None = None
    network: str | None = None
    network_type: str | None = None
    """``Network`` or ``DistributedVirtualPortgroup``."""
    network_name: str | None = None
    """A standard port group's name (its NIC backing's device name)."""
    portgroup_key: str | None = None
    switch_uuid: str | None = None
    """A distributed port group's key and its switch's UUID."""
    template_cores: int | None = None
    nic_key: int | None = None
    """The device key of the template's first NIC (kept by its clones)."""
    nic_type: str | None = None
    """Its vSphere type (``vim.vm.device.VirtualVmxnet3``)."""
    nic_label: str | None = None
    """Its label (``Network adapter 1``)."""


class ProvisionVmInput(BaseModel):
    """A node's whole VM step: find or clone (powered on), make its hardware match,
    power it on if it is not, wait for its address."""

    identity: NodeIdentity
    placement: VSpherePlacement
    refs: PlacementRefs | None = None
    """None: resolve the placement's paths."""
    cpus: int
    memory_mb: int
    bootstrap: NodeBootstrapSettings
    timeouts: Timeouts
    token_expires_at: datetime


class ProvisionVmResult(BaseModel):
    vm_ref: str
    ip: str
    created: bool
    """False when the VM already existed (a retry after a crash)."""
    powered_on_at: datetime
    """When the worker saw the VM on (its clone's end, or its power-on's)."""


class VCenterStep(StrEnum):
    """What a long vCenter activity is doing, as its heartbeats say."""

    LOOKING = "looking"
    """Looking for what an earlier attempt did."""
    QUEUED = "queued"
    """Waiting for one of the worker's vCenter task slots ("queued for vCenter")."""
    TASK = "task"
    """A vCenter task is running (``task`` names it)."""
    CANCELLING = "cancelling"
    """Past its deadline: cancelling the task in vCenter and waiting for it to end."""
    WAITING = "waiting"
    """Waiting on vCenter without a task (an IP from VMware Tools)."""


class VCenterProgress(BaseModel):
    """The details of every heartbeat of a long vCenter activity: Temporal keeps only
    the latest, so each carries everything a retry needs to resume."""

    step: VCenterStep
    task: str | None = None
    """The vCenter task in flight (``task-123``)."""
    method: str | None = None
    """Its vSphere method (``CloneVM_Task``)."""
    phase: NodePhase | None = None
    """Where a node's provisioning is (cloning, configuring, powering on, waiting for
    its IP); None for activities of one step."""


class EnsureVmResult(BaseModel):
    vm_ref: str
    created: bool
    """False when the VM already existed (a retry after a crash, or a resumed run)."""


class ConfigureVmInput(BaseModel):
    vm_ref: str
    name: str
    cpus: int
    memory_mb: int


class PowerOnInput(BaseModel):
    vm_ref: str
    name: str


class PowerOnResult(BaseModel):
    powered_on_at: datetime
    already_on: bool


class WaitForIpInput(BaseModel):
    vm_ref: str
    name: str
    timeout_seconds: int
    network: str | None = None
    """The port group the node's address must be on (the spec's; None: the VM's first NIC)."""


class WaitForIpResult(BaseModel):
    ip: str


# --- the cluster's Kubernetes API ----------------------------------------------
class KubeAccess(BaseModel):
    """How activities reach the cluster's API server: TLS verified against the
    cluster CA, and a client certificate: a short-lived admin one minted from the
    CA key (the cluster workflow), or one issued earlier and handed over with its
    key (a node workflow, which never holds the CA key)."""

    endpoint: str
    """host:port of the API server (the VIP, or the leader's address)."""
    ca_cert_pem: str
    ca_key_pem: Secret | None = None
    client_cert_pem: str | None = None
    client_key_pem: Secret | None = None
    expires_at: datetime | None = None
    """When the handed-over client certificate expires."""

    @model_validator(mode="after")
    def _one_client_identity(self) -> Self:
        handed_over = self.client_cert_pem is not None and self.client_key_pem is not None
        if (self.ca_key_pem is None) == (not handed_over):
            raise ValueError("give either the CA key or a client certificate and its key")
        return self


class CreateTokenInput(BaseModel):
    cluster: str
    access: KubeAccess
    ttl_seconds: int
    node: str | None = None
    """The one node the token is for (None: clusters from before per-node tokens)."""


class CreateTokensInput(BaseModel):
    """One join token for each of ``nodes``, minted ahead of their join calls."""

    cluster: str
    access: KubeAccess
    ttl_seconds: int
    nodes: list[str] = Field(max_length=1000)


class JoinTokens(BaseModel):
    tokens: dict[str, BootstrapToken] = Field(default_factory=dict)
    """By node name; each token is for that node only."""


class DrainInput(BaseModel):
    cluster: str
    node: str
    access: KubeAccess
    timeout_seconds: int


class DrainResult(BaseModel):
    cordoned: bool
    evicted: list[str] = Field(default_factory=list)
    remaining: list[str] = Field(default_factory=list)
    timed_out: bool = False


class WaitNodeReadyInput(BaseModel):
    cluster: str
    node: str
    access: KubeAccess
    timeout_seconds: int


class DeleteKubeNodeInput(BaseModel):
    cluster: str
    node: str
    access: KubeAccess


# --- finding and removing a cluster's VMs --------------------------------------------
class FindClusterVmsInput(BaseModel):
    cluster: str
    datacenter: str | None = None
    """None: search the whole vCenter."""


class ClusterVm(BaseModel):
    """A VM carrying the cluster's markers, as vCenter reports it."""

    ref: str
    name: str
    instance_uuid: str | None
    powered_on: bool
    cluster_uid: str | None
    pool: str | None
    node: str | None


class FindClusterVmsResult(BaseModel):
    vms: list[ClusterVm] = Field(default_factory=list)


class DestroyVmInput(BaseModel):
    cluster: str
    name: str
    datacenter: str | None = None
    instance_uuid: str | None = None
    vm_ref: str | None = None
    placement: VSpherePlacement | None = None
    """Where the node's clone ran: with it, a clone of the node still in flight in
    vCenter (past its deadline) is cancelled and what it made is destroyed too."""


class DestroyVmResult(BaseModel):
    destroyed: bool
    """False when the VM was already gone."""


# VMs one destroy_vms activity takes: a delete's sweep of a 1000-node cluster in
# 21 activities, not 1003 (each an activity task, three history events and a
# workflow task of the cluster's).
DESTROY_BATCH = 50


class DestroyVmsInput(BaseModel):
    """VMs of one cluster, each destroyed as a :class:`DestroyVmInput` with the
    cluster's datacenter and placement would be."""

    cluster: str
    datacenter: str | None = None
    placement: VSpherePlacement | None = None
    vms: list[ClusterVm] = Field(min_length=1, max_length=DESTROY_BATCH)
    swept: bool = True
    """The VMs as this delete's sweep just found them (markers checked, power state
    read); False: as the cluster recorded its nodes, each read and checked first."""

    def one(self, vm: ClusterVm) -> DestroyVmInput:
        return DestroyVmInput(
            cluster=self.cluster,
            name=vm.name,
            datacenter=self.datacenter,
            instance_uuid=vm.instance_uuid,
            vm_ref=vm.ref,
            placement=self.placement,
        )


class DestroyVmsResult(BaseModel):
    destroyed: list[str]
    """The names of the VMs destroyed (the others were gone already)."""


class PreflightInput(BaseModel):
    """What is checked before anything of a cluster is created."""

    cluster: str
    placement: VSpherePlacement
    vip: str | None = None
    api_port: int = 6443
    storage: StorageSpec | None = None
    cloud_provider_credential: str | None = None
    external_etcd: ExternalEtcd | None = None
    etcd_prefix: str | None = None
    cluster_uid: str | None = None
    """With an external etcd: whose the prefix becomes (its owner key)."""
    pools: list[PoolHardware] = Field(default_factory=list)
    """Each pool's hardware, checked against what the template's version allows."""


class PoolHardware(BaseModel):
    index: int
    """Its place in the spec's ``pools`` (for the field named in a problem)."""
    cpus: int
    memory_mb: int


class ClearEtcdPrefixInput(BaseModel):
    """Delete a deleted (or failed) cluster's keys from its external etcd."""

    cluster: str
    cluster_uid: str
    endpoints: list[str]
    credential: str
    prefix: str


class ClearEtcdPrefixResult(BaseModel):
    deleted: int
    owned: bool
    """False: the prefix was not this cluster's (never claimed, or taken by another); untouched."""


class RouterIdsInput(BaseModel):
    """Which VRRP router ids do the other clusters on this network use?"""

    cluster: str
    network: str | None


class RouterIdsInUse(BaseModel):
    taken: dict[int, str] = Field(default_factory=dict)
    """Router id -> the cluster using it."""


class PreflightResult(BaseModel):
    checked: list[str] = Field(default_factory=list)
    storage_target: VCenterTarget | None = None
    refs: PlacementRefs | None = None
    """The placement as resolved (None from a worker older than 0.3)."""
