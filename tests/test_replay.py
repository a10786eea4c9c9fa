"""Determinism: recorded histories replay against the current workflow code.

``tests/histories/*.json`` hold histories recorded by released versions (key
material redacted), from the 0.2.0 baseline on: a change to a workflow that
alters its commands fails here unless it is guarded by ``workflow.patched``.
Stored histories are only ever added, never rewritten (tests/test_history_files.py).
To record a version's set: ``PKE_VSPHERE_RECORD_HISTORIES=0.3.0 pytest tests/test_replay.py``.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest
from google.protobuf import json_format
from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.client import WorkflowHistory
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.worker import Replayer

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import NodeReportKind, NodeResult, NodeWorkflowInput
from pke_vsphere.contracts.protocol import Update, WorkflowType
from pke_vsphere.runtime.temporal import DATA_CONVERTER
from starter import clusters
from tests.clusters import external_etcd_control_plane, wait_until_settled
from tests.conftest import Stack, cluster_spec, unique, unique_vip
from workflows.cluster import ClusterWorkflow
from workflows.commands import DeleteClusterWorkflow, ScaleClusterWorkflow
from workflows.node import NodeWorkflow
from workflows.node_v1 import NodeWorkflowV1

HISTORIES = Path(__file__).parent / "histories"
RECORDING = os.environ.get("PKE_VSPHERE_RECORD_HISTORIES")
# Making a version's baseline. In `make test`, fresh histories are replayed by every
# test that restarts a worker mid-workflow (test_kill_points.py, test_crash_resume.py,
# test_clone_resume.py): the new worker replays each history from its start.
recording = pytest.mark.skipif(not RECORDING, reason="records a baseline: set PKE_VSPHERE_RECORD_HISTORIES")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----[^-]+-----END [A-Z ]+-----")
_SECRET_FIELDS = re.compile(r'"(token|encryption_secret|vrrp_password)":"([^"]*)"')
_BOOTSTRAP_TOKEN = re.compile(r"^[a-z0-9]{6}\.[a-z0-9]{16}$")


def _redacted(match: re.Match[str]) -> str:
    """A secret field's value replaced; a kubeadm token by one of the same shape, since
    the workflow derives the token id it deletes from it."""
    value = "redact.0000000000000000" if _BOOTSTRAP_TOKEN.match(match[2]) else "REDACTED"
    return f'"{match[1]}":"{value}"'


def replayer(converter: DataConverter = DATA_CONVERTER) -> Replayer:
    return Replayer(
        workflows=[
            ClusterWorkflow,
            NodeWorkflow,
            NodeWorkflowV1,
            DeleteClusterWorkflow,
            ScaleClusterWorkflow,
        ],
        data_converter=converter,
    )


async def redact(history_json: dict[str, object], codec: PayloadCodec | None) -> dict[str, object]:
    """Decrypt payloads (the stored file must replay without our key) and replace
    the key material inside them, so no key, even a test one, enters the repo."""
    payloads: list[dict[str, object]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("data"), str) and isinstance(node.get("metadata"), dict):
                payloads.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(history_json)
    for node in payloads:
        payload = json_format.ParseDict(node, Payload())
        if codec is not None:
            (payload,) = await codec.decode([payload])
        text = payload.data.decode(errors="replace")
        text = _SECRET_FIELDS.sub(_redacted, _PEM.sub("REDACTED", text))
        payload.data = text.encode()
        node.clear()
        node.update(json_format.MessageToDict(payload))
    return history_json


@recording
async def test_a_cluster_lifetime_replays_against_the_current_code(stack: Stack) -> None:
    """Create (with a VIP, MetalLB and storage), scale up and down, reconcile, delete:
    every handler's commands replay."""
    name = unique("replay")
    spec = cluster_spec(
        name,
        masters=1,
        workers=1,
        control_plane={"vip": unique_vip()},
        load_balancer={"addresses": ["10.124.0.0/28"]},
        storage={"credential": "csi-test", "storage_policy": "gold"},
    )
    await clusters.create(stack.client, spec, stack.task_queue)
    await wait_until_settled(stack, name)
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    scale = await clusters.scale(stack.client, name, "workers", 2, stack.task_queue)  # as schedules do
    await scale.result()
    await handle.execute_update(Update.SCALE_POOL, {"pool": "workers", "size": 1})
    await handle.execute_update(Update.RECONCILE, {})
    await (await clusters.delete(stack.client, name, stack.task_queue)).result()
    await replay_and_record(
        stack,
        {
            "cluster": ids.cluster_workflow_id(name),
            "master": ids.node_workflow_id(name, f"{name}-master-01"),
            "workers": ids.node_workflow_id(name, f"{name}-workers-01"),
            "scale": scale.id,
            "delete": ids.delete_workflow_id(name),
        },
    )


@recording
async def test_an_external_etcd_cluster_lifetime_replays_against_the_current_code(stack: Stack) -> None:
    """Create two API servers on an external etcd, grow to three and back to two, delete
    (which clears the prefix)."""
    name = unique("replay-etcd")
    spec = cluster_spec(name, masters=2, workers=1, control_plane=external_etcd_control_plane(stack))
    await clusters.create(stack.client, spec, stack.task_queue)
    await wait_until_settled(stack, name)
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    await handle.execute_update(Update.SCALE_POOL, {"pool": "master", "size": 3})
    await handle.execute_update(Update.SCALE_POOL, {"pool": "master", "size": 2})
    await (await clusters.delete(stack.client, name, stack.task_queue)).result()
    await replay_and_record(
        stack,
        {"etcd-cluster": ids.cluster_workflow_id(name), "etcd-delete": ids.delete_workflow_id(name)},
    )


async def replay_and_record(stack: Stack, workflow_ids: dict[str, str]) -> None:
    """Replay each history against the current code; with PKE_VSPHERE_RECORD_HISTORIES
    set, store it (redacted) as ``KIND-VERSION.json``."""
    for kind, workflow_id in workflow_ids.items():
        history = await stack.client.get_workflow_handle(workflow_id).fetch_history()
        converter = stack.client.data_converter  # the histories are encrypted
        result = await replayer(converter).replay_workflow(history, raise_on_replay_failure=False)
        assert result.replay_failure is None, f"{workflow_id}: {result.replay_failure}"
        if RECORDING:
            target = HISTORIES / f"{kind}-{RECORDING}.json"
            assert not target.exists(), f"{target.name} exists: stored histories are never rewritten"
            plain = await redact(history.to_json_dict(), converter.payload_codec)
            record = {"workflow_id": workflow_id, "history": plain}
            target.write_text(json.dumps(record, indent=1) + "\n")


@pytest.mark.parametrize("path", sorted(HISTORIES.glob("*.json")), ids=lambda p: p.name)
async def test_stored_histories_replay(path: Path) -> None:
    record = json.loads(path.read_text())
    payloads = re.findall(r'"data": "([A-Za-z0-9+/=]+)"', json.dumps(record))
    assert not any(b"PRIVATE KEY" in base64.b64decode(p) for p in payloads), "unredacted key material"
    history = WorkflowHistory.from_json(record["workflow_id"], record["history"])
    result = await replayer().replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


# The 0.2 node workflow with one change to its commands: the node's credentials are
# not taken back after its report, as is and behind workflow.patched.
@workflow.defn(name=WorkflowType.NODE_V1, sandboxed=False)
class _UnguardedChange(NodeWorkflowV1):
    @workflow.run
    async def run(self, input: NodeWorkflowInput) -> NodeResult:
        return await super().run(input)

    async def _take_credentials_back(self, vm_ref: str, report: NodeReportKind) -> None:
        return None


@workflow.defn(name=WorkflowType.NODE_V1, sandboxed=False)
class _GuardedChange(NodeWorkflowV1):
    @workflow.run
    async def run(self, input: NodeWorkflowInput) -> NodeResult:
        return await super().run(input)

    async def _take_credentials_back(self, vm_ref: str, report: NodeReportKind) -> None:
        if not workflow.patched("credentials-kept"):
            await super()._take_credentials_back(vm_ref, report)


@pytest.mark.parametrize("changed", [_UnguardedChange, _GuardedChange], ids=["unguarded", "guarded"])
async def test_a_change_to_a_workflows_commands_replays_the_baseline_only_when_guarded(changed: type) -> None:
    record = json.loads((HISTORIES / "workers-0.2.0.json").read_text())
    history = WorkflowHistory.from_json(record["workflow_id"], record["history"])
    replayer = Replayer(workflows=[changed], data_converter=DATA_CONVERTER)
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    if changed is _GuardedChange:
        assert result.replay_failure is None, result.replay_failure
    else:
        assert result.replay_failure is not None
        assert "nondetermin" in str(result.replay_failure).lower(), result.replay_failure
