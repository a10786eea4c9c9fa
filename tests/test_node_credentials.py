"""An attacker with a node's token, against the real stack (Temporal, the vCenter
simulator, the node API over HTTP, the simulated nodes and their stand-in API
servers): guestinfo is readable by any vCenter user with read access to the VM
and by any process in the guest, so its token must grant nothing once its node
is done, and little while it boots."""

from __future__ import annotations

import asyncio
import secrets
from datetime import timedelta
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.messages import DeleteTokensInput, NodeResult
from pke_vsphere.contracts.protocol import MAX_REPEATS, NODE_KEY_HEADER, REPEAT_SPACING
from pke_vsphere.contracts.state import ClusterPhase, ClusterStatus, NodeKind, NodePhase
from pke_vsphere.render import cloudinit
from sim.nodes import Behaviour
from starter import clusters, node_detail
from tests.clusters import create_ready, scale
from tests.conftest import Stack, cluster_spec, unique
from tests.harness import userdata_config, vms_of_cluster

CALLS = [
    ("GET", "/v1/nodes/self/bootstrap"),
    ("GET", "/v1/nodes/self/addons"),
    ("GET", "/v1/nodes/self/join"),
    ("POST", "/v1/nodes/self/report"),
]
BOOTSTRAP = "/v1/nodes/self/bootstrap"
JOIN = "/v1/nodes/self/join"
REPORT = "/v1/nodes/self/report"


def as_holder(token: str, node_key: str | None = None) -> dict[str, str]:
    """The headers of someone holding ``token``: with their own node key unless given one."""
    return {"Authorization": f"Bearer {token}", NODE_KEY_HEADER: node_key or secrets.token_urlsafe(32)}


async def call_all(api: httpx.AsyncClient, token: str) -> dict[str, int]:
    """Every /v1 call with the token, as an attacker (own node key) would make them."""
    codes = {}
    for method, path in CALLS:
        body = {"kind": "failed", "message": "forged"} if method == "POST" else None
        codes[path] = (await api.request(method, path, headers=as_holder(token), json=body)).status_code
    return codes


async def booting(stack: Stack, node: str, within: float = 60) -> None:
    """Until ``node`` is bootstrapping (its VM is on and has its address)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        booted = stack.nodes.nodes.get(node)
        if booted is not None and any(event == "ip-reported" for _, event in booted.events):
            try:
                cluster = await clusters.status(stack.client, node.rsplit("-", 2)[0])
                status, _ = await node_detail.refine(stack.client, cluster)
            except Exception:  # noqa: S112 - not started yet
                continue
            if any(n.name == node and n.phase is NodePhase.BOOTSTRAPPING for n in status.nodes):
                return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{node} did not start bootstrapping within {within}s")


@pytest.fixture(scope="module")
async def ready(stack: Stack) -> tuple[str, ClusterStatus]:
    """A Ready 3-master + 2-worker cluster."""
    name = unique("attack")
    return name, await create_ready(stack, name, masters=3, workers=2)


async def test_no_token_from_guestinfo_works_once_the_cluster_is_ready(
    stack: Stack, node_api_url: str, ready: tuple[str, ClusterStatus]
) -> None:
    name, status = ready
    vms = vms_of_cluster(stack.sim, name)
    assert len(vms) == 5
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        for node in status.nodes:
            rendered = stack.nodes.nodes[node.name].token  # as guestinfo carried it at first boot
            assert rendered.count(".") == 2
            assert set((await call_all(api, rendered)).values()) <= {401, 403}, node.name
            # The role checks (403) come before the node's workflow is asked; each call
            # the role may make is refused as not bootstrapping.
            allowed = {NodeKind.LEADER: [BOOTSTRAP, REPORT], NodeKind.MASTER: [BOOTSTRAP, JOIN, REPORT],
                       NodeKind.WORKER: [JOIN, REPORT]}[node.identity.kind]  # fmt: skip
            codes = await call_all(api, rendered)
            assert all(codes[path] == 401 for path in allowed), (node.name, codes)
            # guestinfo no longer holds a token at all.
            config = userdata_config(vms[node.name]["extra"])
            with pytest.raises(KeyError):
                cloudinit.written_file(config, cloudinit.TOKEN_FILE)
            assert rendered not in str(vms[node.name]["extra"])


async def test_a_forged_failed_report_for_a_ready_node_changes_nothing(
    stack: Stack, node_api_url: str, ready: tuple[str, ClusterStatus]
) -> None:
    name, status = ready
    worker = next(n for n in status.nodes if n.identity.kind is NodeKind.WORKER)
    node_workflow = stack.client.get_workflow_handle(ids.node_workflow_id(name, worker.name))
    events_before = len([e async for e in node_workflow.fetch_history_events()])
    vms_before = {vm: props["ref"] for vm, props in vms_of_cluster(stack.sim, name).items()}
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        response = await api.post(
            REPORT,
            headers=as_holder(stack.nodes.nodes[worker.name].token),
            json={"kind": "failed", "message": "forged: destroy me"},
        )
    assert response.status_code == 401
    await asyncio.sleep(1)
    after = await clusters.status(stack.client, name)
    assert after.phase is ClusterPhase.READY and not after.failed_nodes
    assert next(n for n in after.nodes if n.name == worker.name).phase is NodePhase.READY
    assert {vm: props["ref"] for vm, props in vms_of_cluster(stack.sim, name).items()} == vms_before
    assert len([e async for e in node_workflow.fetch_history_events()]) == events_before


async def test_every_joiner_got_its_own_join_token_and_none_is_left_in_the_cluster(
    stack: Stack, ready: tuple[str, ClusterStatus]
) -> None:
    name, status = ready
    kube = stack.nodes.cluster_apis[name]
    created = [c.name for c in kube.objects.calls if c.verb == "create" and c.resource == "secrets"]
    deleted = [c.name for c in kube.objects.calls if c.verb == "delete" and c.resource == "secrets"]
    joiners = [n for n in status.nodes if n.identity.kind is not NodeKind.LEADER]
    assert len(created) == len(set(created)) == len(joiners) == 4
    assert sorted(deleted) == sorted(created)
    assert not [s for s in kube.objects.secrets if s.startswith("bootstrap-token-")]
    described = sorted(s["stringData"]["description"] for s in kube.objects.secrets_created)
    assert described == sorted(f"minted by pke-vsphere for {n.name}, for it alone" for n in joiners)


async def test_joined_nodes_hand_their_join_tokens_to_the_cluster_which_deletes_them_in_a_round(
    stack: Stack, ready: tuple[str, ClusterStatus]
) -> None:
    """A node that joined ends its workflow with its tokens' ids (never their
    secrets), and its cluster's workflow deletes the round's tokens in one
    activity: no node workflow holds its report's task open for an API call."""
    name, status = ready
    kube = stack.nodes.cluster_apis[name]
    deleted = {c.name for c in kube.objects.calls if c.verb == "delete" and c.resource == "secrets"}
    handed_back: list[str] = []
    for node in status.nodes:
        if node.identity.kind is NodeKind.LEADER:
            continue
        handle = stack.client.get_workflow_handle(
            ids.node_workflow_id(name, node.name), result_type=NodeResult
        )
        result = await handle.result()
        assert result.join_token_ids, node.name
        handed_back += result.join_token_ids
        events = [e async for e in handle.fetch_history_events()]
        scheduled = [e for e in events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
        assert [e.activity_task_scheduled_event_attributes.activity_type.name for e in scheduled] == [
            "provision_vm"
        ]
    assert {f"bootstrap-token-{token_id}" for token_id in handed_back} == deleted
    cluster = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    rounds = [
        e
        async for e in cluster.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "delete_bootstrap_tokens"
    ]
    in_rounds: list[str] = []
    for event in rounds:
        payloads = event.activity_task_scheduled_event_attributes.input.payloads
        (asked,) = await stack.client.data_converter.decode(payloads, [DeleteTokensInput])
        in_rounds += asked.token_ids
    assert sorted(in_rounds) == sorted(handed_back)
    assert 1 <= len(rounds) <= len(handed_back)


async def test_tokens_of_removed_and_deleted_nodes_get_401(stack: Stack, node_api_url: str) -> None:
    name = unique("revoke")
    await create_ready(stack, name, masters=1, workers=3)
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    removed = f"{name}-workers-03"
    outcome = await scale(handle, "workers", 2)
    assert outcome.removed == [removed]
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        assert (await api.get(JOIN, headers=as_holder(stack.nodes.nodes[removed].token))).status_code == 401
        await (await clusters.delete(stack.client, name, stack.task_queue)).result()
        for node in (f"{name}-master-01", f"{name}-workers-01", f"{name}-workers-02"):
            codes = await call_all(api, stack.nodes.nodes[node].token)
            assert set(codes.values()) <= {401, 403} and 401 in codes.values(), (node, codes)


async def test_the_token_of_a_failed_node_gets_401(stack: Stack, node_api_url: str) -> None:
    name = unique("failed")
    failing = f"{name}-workers-01"
    stack.nodes.behaviours[failing] = Behaviour.FAIL
    status = await create_ready(stack, name, masters=1, workers=1)
    assert [n.name for n in status.failed_nodes] == [failing]
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        assert (await api.get(JOIN, headers=as_holder(stack.nodes.nodes[failing].token))).status_code == 401
    await (await clusters.delete(stack.client, name, stack.task_queue)).result()


async def test_while_a_node_boots_its_answers_go_to_one_node_key_a_bounded_number_of_times(
    stack: Stack, node_api_url: str
) -> None:
    """The follower master never calls (silent): the test is that node, holding its
    token and its node key, and an attacker holding the token only."""
    name = unique("replay")
    follower, worker = f"{name}-master-02", f"{name}-workers-01"
    stack.nodes.behaviours[follower] = Behaviour.SILENT
    stack.nodes.behaviours[worker] = Behaviour.SILENT
    await clusters.create(
        stack.client, cluster_spec(name, masters=3, workers=1, timeouts={"join": 300}), stack.task_queue
    )
    await booting(stack, follower)
    await booting(stack, worker)
    token = stack.nodes.nodes[follower].token
    node_key = secrets.token_urlsafe(32)
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        # A worker's token never gets the CAs, not even while it boots.
        worker_token = stack.nodes.nodes[worker].token
        assert (await api.get(BOOTSTRAP, headers=as_holder(worker_token))).status_code == 403
        # Concurrent duplicates, each with its own node key: one answer.
        racing = await asyncio.gather(*(api.get(JOIN, headers=as_holder(worker_token)) for _ in range(5)))
        assert sorted(r.status_code for r in racing) == [200, 401, 401, 401, 401], [r.text for r in racing]
        join = next(r for r in racing if r.status_code == 200).json()
        assert set(join) == {"token", "expires_at", "ca_cert_hash", "api_endpoint", "node_address"}
        assert "PRIVATE KEY" not in str(join)

        first = await api.get(BOOTSTRAP, headers=as_holder(token, node_key))
        assert first.status_code == 200
        assert "PRIVATE KEY" in first.json()["pki"]["kubernetes_ca"]["key_pem"]
        # The attacker replays the call with the token it read from guestinfo.
        replay = await api.get(BOOTSTRAP, headers=as_holder(token))
        assert replay.status_code == 401 and "another node key" in replay.json()["detail"]
        # The node's own retries: never twice at once, at most MAX_REPEATS more.
        same_key = await asyncio.gather(
            *(api.get(BOOTSTRAP, headers=as_holder(token, node_key)) for _ in range(3))
        )
        assert [r.status_code for r in same_key] == [409, 409, 409]
        for _ in range(MAX_REPEATS):
            await asyncio.sleep(REPEAT_SPACING.total_seconds())
            assert (await api.get(BOOTSTRAP, headers=as_holder(token, node_key))).status_code == 200
        await asyncio.sleep(REPEAT_SPACING.total_seconds())
        used_up = await api.get(BOOTSTRAP, headers=as_holder(token, node_key))
        assert used_up.status_code == 401 and "served" in used_up.json()["detail"]
        # A forged report from the attacker is refused while the node boots, too.
        forged = await api.post(REPORT, headers=as_holder(token), json={"kind": "failed"})
        assert forged.status_code == 401
        status, _ = await node_detail.refine(stack.client, await clusters.status(stack.client, name))
        assert next(n for n in status.nodes if n.name == follower).phase is NodePhase.BOOTSTRAPPING
        # The node's own report ends its bootstrap: no call of it is served after.
        done = await api.post(
            REPORT, headers=as_holder(token, node_key), json={"kind": "failed", "message": "t"}
        )
        assert done.status_code == 202
        again = await api.post(REPORT, headers=as_holder(token, node_key), json={"kind": "failed"})
        assert again.status_code == 401
    await (await clusters.delete(stack.client, name, stack.task_queue)).result()


async def test_a_booting_nodes_token_dies_with_its_cluster(stack: Stack, node_api_url: str) -> None:
    name = unique("gone")
    worker = f"{name}-workers-01"
    stack.nodes.behaviours[worker] = Behaviour.SILENT
    await clusters.create(
        stack.client, cluster_spec(name, masters=1, workers=1, timeouts={"join": 300}), stack.task_queue
    )
    await booting(stack, worker)
    headers = as_holder(stack.nodes.nodes[worker].token, secrets.token_urlsafe(32))
    async with httpx.AsyncClient(base_url=node_api_url) as api:
        assert (await api.get(JOIN, headers=headers)).status_code == 200
        await (await clusters.delete(stack.client, name, stack.task_queue)).result()
        await asyncio.sleep(REPEAT_SPACING.total_seconds())
        after = await api.get(JOIN, headers=headers)
    assert after.status_code == 401, after.text


async def powered_on(stack: Stack, node: str, within: float = 60) -> str:
    """The token ``node``'s guestinfo carried at its first boot, as soon as it is on
    (VMware Tools has not reported its address yet)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        booted = stack.nodes.nodes.get(node)
        if booted is not None and booted.token:
            return booted.token
        await asyncio.sleep(0.1)
    raise AssertionError(f"{node} was not powered on within {within}s")


async def accepted_calls(handle: WorkflowHandle[Any, Any]) -> int:
    """How many node calls the node's workflow has taken into its history."""
    return len(
        [
            e
            async for e in handle.fetch_history_events()
            if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        ]
    )


async def until_accepted(handle: WorkflowHandle[Any, Any], calls: int, within: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await accepted_calls(handle) < calls:
        assert loop.time() < deadline, f"the node's workflow did not take {calls} call(s) within {within}s"
        await asyncio.sleep(0.2)


async def test_an_early_call_from_a_guestinfo_reader_waits_for_the_address_and_binds_like_any_first_call(
    stack: Stack, node_api_url: str
) -> None:
    """An attacker reads a booting worker's token from guestinfo before VMware Tools
    has reported the worker's address. Its call is held, not refused, and is answered
    once the address is known. It binds the attacker's node key, exactly as the first
    call after that moment would have: the node's own call is then refused. A second
    early call of that kind is refused at once and leaves nothing in history."""
    name = unique("early")
    worker = f"{name}-workers-01"
    stack.nodes.behaviours[worker] = Behaviour.SILENT
    stack.nodes.boot_delays[worker] = 10  # the address comes 10 s after power-on
    await clusters.create(
        stack.client, cluster_spec(name, masters=1, workers=1, timeouts={"join": 300}), stack.task_queue
    )
    token = await powered_on(stack, worker)
    node_workflow = stack.client.get_workflow_handle(ids.node_workflow_id(name, worker))
    async with httpx.AsyncClient(base_url=node_api_url, timeout=60) as api:
        held = asyncio.create_task(api.get(JOIN, headers=as_holder(token)))
        await until_accepted(node_workflow, 1)
        assert "ip-reported" not in [event for _, event in stack.nodes.nodes[worker].events]
        assert not held.done()
        second = await api.get(JOIN, headers=as_holder(token))
        assert second.status_code == 409 and "not yet" in second.json()["detail"], second.text
        assert await accepted_calls(node_workflow) == 1

        answered = await held
        assert answered.status_code == 200, answered.text
        assert "ip-reported" in [event for _, event in stack.nodes.nodes[worker].events]
        assert answered.json()["node_address"] == stack.nodes.nodes[worker].ip
        own = await api.get(JOIN, headers=as_holder(token))
        assert own.status_code == 401 and "another node key" in own.json()["detail"], own.text
    assert await accepted_calls(node_workflow) == 1
    await (await clusters.delete(stack.client, name, stack.task_queue)).result()


async def test_a_call_retried_after_a_503_joins_the_update_the_node_api_gave_up_on(
    stack: Stack, node_api_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the node's workflow does not answer in time, the node API answers 503
    but the update stays in Temporal. The node's retries (same token, same node
    key) join that update instead of making new ones: one update in history for
    three requests, and the answer once the node's address is known. A call with
    another node key is not joined to it: it is refused at once."""
    name = unique("retried")
    worker = f"{name}-workers-01"
    stack.nodes.behaviours[worker] = Behaviour.SILENT
    stack.nodes.boot_delays[worker] = 8  # the address, and with it the answer, comes 8 s after power-on
    await clusters.create(
        stack.client, cluster_spec(name, masters=1, workers=1, timeouts={"join": 300}), stack.task_queue
    )
    token = await powered_on(stack, worker)
    node_workflow = stack.client.get_workflow_handle(ids.node_workflow_id(name, worker))
    headers = as_holder(token, secrets.token_urlsafe(32))
    async with httpx.AsyncClient(base_url=node_api_url, timeout=60) as api:
        monkeypatch.setattr("pke_vsphere.nodeapi.auth.UPDATE_TIMEOUT", timedelta(seconds=1))
        first = await api.get(JOIN, headers=headers)
        assert first.status_code == 503, first.text
        await until_accepted(node_workflow, 1)
        again = await api.get(JOIN, headers=headers)
        assert again.status_code == 503, again.text
        other = await api.get(JOIN, headers=as_holder(token))
        assert other.status_code == 409 and "not yet" in other.json()["detail"], other.text
        assert "ip-reported" not in [event for _, event in stack.nodes.nodes[worker].events]

        monkeypatch.setattr("pke_vsphere.nodeapi.auth.UPDATE_TIMEOUT", timedelta(seconds=60))
        answered = await api.get(JOIN, headers=headers)
        assert answered.status_code == 200, answered.text
        assert answered.json()["node_address"] == stack.nodes.nodes[worker].ip
    assert await accepted_calls(node_workflow) == 1
    await (await clusters.delete(stack.client, name, stack.task_queue)).result()


async def test_a_held_call_ends_with_401_when_its_cluster_is_deleted(stack: Stack, node_api_url: str) -> None:
    """A call held for an address that never comes is not left hanging, and is not
    served, when the node goes away."""
    name = unique("heldgone")
    worker = f"{name}-workers-01"
    stack.nodes.behaviours[worker] = Behaviour.NO_IP
    await clusters.create(
        stack.client, cluster_spec(name, masters=1, workers=1, timeouts={"join": 300}), stack.task_queue
    )
    token = await powered_on(stack, worker)
    node_workflow = stack.client.get_workflow_handle(ids.node_workflow_id(name, worker))
    async with httpx.AsyncClient(base_url=node_api_url, timeout=60) as api:
        held = asyncio.create_task(api.get(JOIN, headers=as_holder(token)))
        await until_accepted(node_workflow, 1)
        assert not held.done()
        await (await clusters.delete(stack.client, name, stack.task_queue)).result()
        answered = await asyncio.wait_for(held, 15)
    assert answered.status_code == 401, answered.text
