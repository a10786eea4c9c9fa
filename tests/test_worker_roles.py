"""The worker split in two processes (``--role workflows`` and ``--role vcenter``):
a cluster is created with its vCenter work only in the vCenter process, the
workflows' process needs no vCenter settings at all, and the vCenter process
SIGKILLed right after a clone started resumes that clone when it comes back,
while the workflows' process runs on."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import SecretStr, ValidationError

import worker as worker_module
from pke_vsphere.config import VCenterSettings
from pke_vsphere.contracts.protocol import vcenter_task_queue
from pke_vsphere.contracts.state import ClusterPhase
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import vms_of_cluster
from tests.workers import WorkerFactory

# Set for the vCenter role only: the workflows' process must start without them.
NO_VCENTER = {
    "PKE_VSPHERE_VCENTER_URL": "",
    "PKE_VSPHERE_VCENTER_USERNAME": "",
    "PKE_VSPHERE_VCENTER_PASSWORD": "",
    "PKE_VSPHERE_NODE_TOKEN_KEY_FILE": "",
}


def test_the_vcenter_queue_is_named_after_the_task_queue() -> None:
    assert vcenter_task_queue("pke-vsphere") == "pke-vsphere-vcenter"


@pytest.mark.asyncio(loop_scope="session")
async def test_a_split_worker_creates_a_cluster_and_its_vcenter_process_resumes_a_clone(
    stack: Stack, new_worker: WorkerFactory
) -> None:
    name = unique("roles")
    queue = f"roles-{uuid.uuid4()}"
    leader = f"{name}-master-01"
    stack.sim.set_task_seconds("CloneVM_Task", 3.0, prefix=f"{name}-")
    workflows = new_worker("workflows", task_queue=queue, role="workflows", settings=NO_VCENTER)
    vcenter = new_worker("vcenter", task_queue=queue, role="vcenter")
    workflows.start()
    vcenter.start(crash_at="clone.started")
    await clusters.create(stack.client, cluster_spec(name, masters=1, workers=2), queue)
    await vcenter.wait_crashed(60)
    assert leader not in vms_of_cluster(stack.sim, name), "the clone ended before the crash"

    vcenter.start()
    status = await wait_until_settled(stack, name, within=150)

    assert status.phase is ClusterPhase.READY, f"{status.error}\n{vcenter.tail()}\n{workflows.tail()}"
    assert sorted(vms_of_cluster(stack.sim, name)) == sorted(n.name for n in status.nodes)
    calls = stack.sim.clone_calls()
    assert [calls[n.name] for n in status.nodes] == [1, 1, 1], calls
    # Each process did its own part only.
    assert workflows.process is not None and workflows.process.poll() is None, workflows.tail()
    workflow_log, vcenter_log = workflows.log.read_text(), vcenter.log.read_text()
    # Resumed while in flight, or found by its instance UUID once it had ended.
    assert "vm.clone_resumed" in vcenter_log or "vm.found" in vcenter_log, vcenter.tail()
    assert "vm.cloning" not in workflow_log, workflows.tail()
    assert vcenter_task_queue(queue) not in started_line(workflow_log), workflows.tail()
    assert vcenter_task_queue(queue) in started_line(vcenter_log), vcenter.tail()


def started_line(log: str) -> str:
    """The worker's ``worker.started`` line (it names the task queues it polls)."""
    return next(line for line in log.splitlines() if "worker.started" in line)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_vcenter_queue_takes_the_servers_rate_limit_from_the_settings(stack: Stack) -> None:
    """``PKE_VSPHERE_VCENTER_ACTIVITIES_PER_SECOND`` reaches the vCenter queue's
    worker as Temporal's task-queue limit (the server enforces it for all workers);
    the workflows' queue has none."""
    settings = VCenterSettings(
        vcenter_url="https://vcenter.example/sdk",
        vcenter_username="u",
        vcenter_password=SecretStr("p"),
        installation_id="tests",
        vcenter_activities_per_second=20,
    )
    with ThreadPoolExecutor(4) as executor:
        workers = worker_module.build_worker(
            stack.client,
            "rated",
            stack.vsphere,
            executor,
            4,
            activities_per_second=settings.vcenter_activities_per_second,
        )
        by_queue = {w.task_queue: w.config() for w in workers.workers}
    assert by_queue[vcenter_task_queue("rated")]["max_task_queue_activities_per_second"] == 20
    assert by_queue["rated"].get("max_task_queue_activities_per_second") is None
    with pytest.raises(ValidationError, match="vcenter_activities_per_second"):
        VCenterSettings.model_validate({**settings.model_dump(), "vcenter_activities_per_second": 0})
