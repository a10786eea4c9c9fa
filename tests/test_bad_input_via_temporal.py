"""A spec started straight through Temporal (Web UI, ``temporal`` CLI) is
validated too: the workflow fails at once, naming the field, and creates nothing."""

from __future__ import annotations

import json

import pytest
from temporalio.client import WorkflowFailureError

from pke_vsphere.contracts.protocol import WorkflowType
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import vms_of_cluster


async def test_an_invalid_spec_fails_the_workflow_with_the_field_named(stack: Stack) -> None:
    name = unique("bad")
    raw = cluster_spec(name).model_dump(mode="json")
    raw["pools"][1]["memory_mb"] = 1000
    raw["kubernetes_version"] = "1.2"
    handle = await stack.client.start_workflow(
        WorkflowType.CLUSTER,
        json.loads(json.dumps({"spec": raw})),
        id=f"pke-cluster-{name}",
        task_queue=stack.task_queue,
    )
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    message = str(info.value.cause)
    assert "invalid cluster spec" in message
    assert "pools.1.memory_mb" in message
    assert "spec.kubernetes_version" in message
    assert vms_of_cluster(stack.sim, name) == {}


async def test_a_workflow_id_that_does_not_match_the_cluster_is_refused(stack: Stack) -> None:
    name = unique("wrong-id")
    handle = await stack.client.start_workflow(
        WorkflowType.CLUSTER,
        {"spec": cluster_spec(name).model_dump(mode="json")},
        id=f"some-other-id-{name}",
        task_queue=stack.task_queue,
    )
    with pytest.raises(WorkflowFailureError) as info:
        await handle.result()
    assert f"needs workflow id 'pke-cluster-{name}'" in str(info.value.cause)
