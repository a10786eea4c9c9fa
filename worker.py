"""The pke-vsphere Temporal worker: runs the cluster and node workflows and the
activities that talk to vCenter. Settings come from the environment or a
settings file (see README, "Configuration").

Two task queues: the workflows and their short activities on the configured one
(``pke-vsphere``), the vCenter activities on its vCenter twin
(``pke-vsphere-vcenter``). ``--role all`` (the default) polls both in one
process; ``--role workflows`` and ``--role vcenter`` split them into processes
that scale and restart apart (README, "Scaling out")."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from datetime import timedelta
from enum import StrEnum
from typing import Any

import structlog
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.worker import Worker

from activities import kube as kube_activities
from activities import pki as pki_activities
from activities.commands import ClusterCommandActivities
from activities.etcd import EtcdActivities
from activities.node_workflows import NodeWorkflowActivities
from activities.preflight import PreflightActivities
from activities.task_slots import SharedSlots
from activities.vms import VSphereActivities
from activities.vrrp import VrrpActivities
from pke_vsphere.config import NodeApiSettings, TemporalSettings, VCenterSettings, load
from pke_vsphere.config.credentials import EtcdCredentials, StorageCredentials
from pke_vsphere.config.files import RefusedToStart
from pke_vsphere.contracts.protocol import vcenter_task_queue
from pke_vsphere.pki.node_tokens import NodeTokenSigner, load_signing_key
from pke_vsphere.runtime import logs, memory, temporal
from pke_vsphere.runtime.threads import ActivityExecutor
from pke_vsphere.vsphere.session import VCenterSession
from workflows.cluster import ClusterWorkflow
from workflows.commands import DeleteClusterWorkflow, ScaleClusterWorkflow
from workflows.node import NodeWorkflow
from workflows.node_v1 import NodeWorkflowV1
from workflows.vcenter_slots import VCenterSlotsWorkflow

log = structlog.get_logger(__name__)

HEARTBEAT_THROTTLE = timedelta(seconds=3)
# A token for a node workflow from before tokens expired at the bootstrap deadline.
DEFAULT_NODE_TOKEN_TTL = timedelta(hours=1)
# One thread per concurrent activity: a node's provision_vm holds one from its clone
# to its address (tens of seconds), so a 1000-node create needs about a thousand.
# Threads are started as needed; one waiting on vCenter costs little memory.
MAX_CONCURRENT_ACTIVITIES = 1024
# The workflow worker's activities are coroutines, but for a few short ones in
# threads (certificates, etcd): a node's join-token deletion is one each, so a
# 1000-node create has about a thousand in a minute.
MAX_CONCURRENT_WORKFLOW_ACTIVITIES = 512
# Workflows kept in memory between their tasks. A 1000-node create has about a
# thousand node workflows open at once; with the SDK's default of 1000, one more
# than fits made the cache miss on nearly every task (least recently used goes
# first), and each miss replays the workflow's history in a new sandbox: at 3 + 997
# the worker's CPU fell from 81 to 49 s with 2048, for about 50 MB more memory.
MAX_CACHED_WORKFLOWS = 2048
# Workflow-task polls stay at the SDK's fixed five (one on the task queue, where a
# new workflow's first task waits, four on the sticky queue). With the task queue in
# one partition (deploy/temporal/dynamicconfig.yaml) that one poll took a thousand
# first tasks within 24 to 27 s of the leader's Ready at 3 + 997; in Temporal's 4,
# the three partitions it did not poll reached it by forwarding, 10 tasks a second
# (up to 78 s). More polls (autoscaled 2 to 40, or four of eight on the task queue)
# ran every node's VM step at once and the nodes' calls waited instead; 1000
# workflow-task slots instead of 100 ran every task at once and many timed out
# (README, Measured).


class Role(StrEnum):
    """What a worker process runs (``--role``)."""

    ALL = "all"
    """Both task queues in one process: the simple way, and the tests'."""
    WORKFLOWS = "workflows"
    """The workflows and the activities that do not talk to vCenter (certificates,
    the clusters' API servers, etcd, node workflows' starts), on the task queue."""
    VCENTER = "vcenter"
    """The vCenter activities (clones, waits, destroys, the preflight), on the task
    queue's vCenter twin (``pke-vsphere-vcenter``): one thread per activity, a
    thousand at a 1000-node create. Workers of this role scale out on their own,
    and only they hold vCenter's credentials."""


def workflow_worker(
    client: Client,
    task_queue: str,
    executor: Executor,
    etcd_credentials: EtcdCredentials | None = None,
    node_workflows: NodeWorkflowActivities | None = None,
    also: Sequence[Callable[..., Any]] = (),
    max_concurrent_activities: int = MAX_CONCURRENT_WORKFLOW_ACTIVITIES,
) -> Worker:
    """The worker of the task queue: every workflow, and the activities that do not
    talk to vCenter (most of them coroutines on its event loop); ``also``: more."""
    commands = ClusterCommandActivities(client)
    node_workflows = node_workflows or NodeWorkflowActivities(client)
    vrrp = VrrpActivities(client)
    etcd = EtcdActivities(etcd_credentials)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[
            ClusterWorkflow,
            NodeWorkflow,
            NodeWorkflowV1,
            ScaleClusterWorkflow,
            DeleteClusterWorkflow,
            VCenterSlotsWorkflow,
        ],
        activities=[
            pki_activities.generate_pki,
            pki_activities.issue_kube_credential,
            kube_activities.create_bootstrap_token,
            kube_activities.create_bootstrap_tokens,
            kube_activities.delete_bootstrap_token,
            kube_activities.delete_bootstrap_tokens,
            kube_activities.drain_node,
            kube_activities.delete_kube_node,
            kube_activities.wait_for_kube_node_ready,
            commands.run_cluster_update,
            node_workflows.start_node_workflows,
            node_workflows.await_node_workflows,
            node_workflows.cancel_node_workflows,
            commands.delete_cluster_schedules,
            vrrp.vrrp_router_ids_in_use,
            etcd.clear_etcd_prefix,
            *also,
        ],
        activity_executor=executor,
        max_concurrent_activities=max_concurrent_activities,
        # After a crash, resume on another worker within a second instead of ten.
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=1),
        max_cached_workflows=MAX_CACHED_WORKFLOWS,
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    )


def vcenter_worker(
    client: Client,
    task_queue: str,
    vsphere: VSphereActivities,
    executor: Executor,
    max_concurrent_activities: int = MAX_CONCURRENT_ACTIVITIES,
    storage_credentials: StorageCredentials | None = None,
    etcd_credentials: EtcdCredentials | None = None,
    activities_per_second: float | None = None,
) -> Worker:
    """The worker of the vCenter activities, on ``task_queue``'s vCenter twin;
    ``activities_per_second``: the server's limit of that task queue's starts."""
    return Worker(
        client,
        task_queue=vcenter_task_queue(task_queue),
        activities=vcenter_activities(vsphere, storage_credentials, etcd_credentials),
        activity_executor=executor,
        max_concurrent_activities=max_concurrent_activities,
        max_task_queue_activities_per_second=activities_per_second,
        # Send heartbeats at most this far apart (not 80 % of the timeout): a clone's
        # task id reaches Temporal within seconds, and status shows "queued for vCenter".
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    )


def vcenter_activities(
    vsphere: VSphereActivities,
    storage_credentials: StorageCredentials | None,
    etcd_credentials: EtcdCredentials | None,
) -> list[Callable[..., Any]]:
    return [
        vsphere.provision_vm,
        # The steps of the node workflows of 0.2 (workflows/node_v1.py).
        vsphere.ensure_vm,
        vsphere.configure_vm,
        vsphere.power_on_vm,
        vsphere.wait_for_vm_ip,
        vsphere.find_cluster_vms,
        vsphere.destroy_vm,
        vsphere.destroy_vms,
        vsphere.remove_node_token,
        PreflightActivities(vsphere.session, storage_credentials, etcd_credentials).preflight,
    ]


class Workers:
    """The workers of one process, run and stopped together (``async with`` runs
    them in the background, as a single ``Worker`` does)."""

    def __init__(self, *workers: Worker) -> None:
        self.workers = workers
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Workers:
        try:
            for worker in self.workers:
                await self._stack.enter_async_context(worker)
        except BaseException:
            await self._stack.aclose()  # the ones already running stop too
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def run(self) -> None:
        await asyncio.gather(*(worker.run() for worker in self.workers))

    async def shutdown(self) -> None:
        await asyncio.gather(*(worker.shutdown() for worker in self.workers))


def build_worker(
    client: Client,
    task_queue: str,
    vsphere: VSphereActivities | None,
    executor: Executor,
    max_concurrent_activities: int = MAX_CONCURRENT_ACTIVITIES,
    storage_credentials: StorageCredentials | None = None,
    etcd_credentials: EtcdCredentials | None = None,
    node_workflows: NodeWorkflowActivities | None = None,
    activities_per_second: float | None = None,
    role: Role = Role.ALL,
) -> Workers:
    """The workers of ``role`` in this process, their thread activities in
    ``executor`` (``vsphere`` may be None only for ``Role.WORKFLOWS``). With both
    roles, the task queue's worker runs the vCenter activities too: one that the
    code before the vCenter queue scheduled on it (a create in flight across the
    upgrade) still finds a worker there."""
    workers = []
    if role is not Role.VCENTER:
        also: Sequence[Callable[..., Any]] = ()
        if role is Role.ALL:
            assert vsphere is not None
            also = vcenter_activities(vsphere, storage_credentials, etcd_credentials)
        workers.append(
            workflow_worker(
                client,
                task_queue,
                executor,
                etcd_credentials,
                node_workflows,
                also=also,
                max_concurrent_activities=min(MAX_CONCURRENT_WORKFLOW_ACTIVITIES, max_concurrent_activities),
            )
        )
    if role is not Role.WORKFLOWS:
        assert vsphere is not None
        workers.append(
            vcenter_worker(
                client,
                task_queue,
                vsphere,
                executor,
                max_concurrent_activities,
                storage_credentials,
                etcd_credentials,
                activities_per_second,
            )
        )
    return Workers(*workers)


def activity_executor() -> ActivityExecutor:
    """The pool of the worker's thread activities: its threads are started off the
    event loop (runtime/threads.py)."""
    return ActivityExecutor(MAX_CONCURRENT_ACTIVITIES, thread_name_prefix="activity")


def build_vsphere_activities(
    vcenter: VCenterSettings, node_api: NodeApiSettings, client: Client, task_queue: str
) -> VSphereActivities:
    """The vCenter activities; call on the worker's event loop (the shared task
    slots are asked for on it)."""
    cap = vcenter.vcenter_max_concurrent_tasks
    if node_api.node_token_key_file is None:
        raise RefusedToStart("set PKE_VSPHERE_NODE_TOKEN_KEY_FILE: the key the worker signs node tokens with")
    shared = SharedSlots(client, asyncio.get_running_loop(), vcenter.installation_id, task_queue, cap)
    return VSphereActivities(
        VCenterSession(vcenter),
        NodeTokenSigner(load_signing_key(node_api.node_token_key_file)),
        node_api.node_api_url,
        DEFAULT_NODE_TOKEN_TTL,
        cap,
        node_api.node_api_ca_pem(),
        shared_slots=shared,
    )


async def run(settings_file: str | None = None, role: Role = Role.ALL) -> None:
    temporal_settings = load(TemporalSettings, settings_file)
    task_queue = temporal_settings.temporal_task_queue
    etcd = EtcdCredentials.from_settings(settings_file)
    vcenter = node_api = storage = None
    if role is not Role.WORKFLOWS:
        vcenter = load(VCenterSettings, settings_file)
        node_api = load(NodeApiSettings, settings_file)
        storage = StorageCredentials.from_settings(settings_file)
        if node_api.node_token_key_file is not None:
            load_signing_key(node_api.node_token_key_file)  # refused now, not at the first clone
    client = await temporal.connect(temporal_settings)
    if temporal_settings.payload_keys_file is None:
        log.warning("payloads.unencrypted", reason="PKE_VSPHERE_ALLOW_UNENCRYPTED_PAYLOADS=true")
    vsphere = None
    if vcenter is not None and node_api is not None:
        vsphere = build_vsphere_activities(vcenter, node_api, client, task_queue)
    with activity_executor() as executor:
        workers = build_worker(
            client,
            task_queue,
            vsphere,
            executor,
            storage_credentials=storage,
            etcd_credentials=etcd,
            activities_per_second=vcenter.vcenter_activities_per_second if vcenter is not None else None,
            role=role,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(workers.shutdown()))
        collector = memory.CollectorTimes()
        log.info(
            "worker.started",
            role=role.value,
            temporal=temporal_settings.temporal_address,
            namespace=temporal_settings.temporal_namespace,
            task_queues=[worker.task_queue for worker in workers.workers],
            vcenter=vcenter.vcenter_url if vcenter is not None else None,
        )
        try:
            await workers.run()
        finally:
            if vsphere is not None:
                vsphere.session.close()  # vCenter limits sessions per user: give ours back
    log.info("worker.stopped", garbage_collections=collector.summary())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--settings", help="dotenv-style settings file")
    parser.add_argument(
        "--role",
        type=Role,
        choices=list(Role),
        default=Role.ALL,
        help="all (default): everything in this process; workflows: the workflows and "
        "their other activities; vcenter: the vCenter activities only (README, Scaling out)",
    )
    args = parser.parse_args(argv)
    logs.configure()
    memory.limit_malloc_arenas()
    try:
        asyncio.run(run(args.settings, args.role))
    except (RefusedToStart, ValidationError) as exc:
        temporal.refuse_to_start("pke-vsphere worker", exc)


if __name__ == "__main__":
    main()
