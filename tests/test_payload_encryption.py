"""Secrets stay out of Temporal's history: the codec, its server, and a raw
read of real histories that finds no key, token or password in plain text."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import httpx
import pytest
from cryptography.exceptions import InvalidTag
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client

from pke_vsphere.codec import keys
from pke_vsphere.codec.encryption import ENCODING, KEY_ID, NONCE_BYTES, NONCES_PER_DRAW, EncryptionCodec
from pke_vsphere.contracts import ids
from pke_vsphere.contracts.pki import ClusterPKI
from pke_vsphere.contracts.protocol import Query, Update
from pke_vsphere.runtime.temporal import DATA_CONVERTER
from sim.nodes import Behaviour
from starter import clusters
from tests.clusters import wait_until_settled
from tests.conftest import CodecServer, Stack, cluster_spec, unique


def plain(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=text.encode())


async def test_payloads_round_trip_and_carry_their_key_id() -> None:
    ring = keys.parse(keys.new_key_line("k1"))
    codec = EncryptionCodec(ring)
    (encoded,) = await codec.encode([plain('{"secret": "s3cr3t"}')])
    assert encoded.metadata["encoding"] == ENCODING and encoded.metadata[KEY_ID] == b"k1"
    assert b"s3cr3t" not in encoded.data
    assert (await codec.decode([encoded]))[0] == plain('{"secret": "s3cr3t"}')
    again = (await codec.encode([plain('{"secret": "s3cr3t"}')]))[0]
    assert again.data != encoded.data  # fresh nonce each time


def _next_nonce_in_a_child(codec: EncryptionCodec) -> bytes:
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(read)
        os.write(write, codec._nonces.next())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(child, 0)
    nonce = os.read(read, NONCE_BYTES)
    os.close(read)
    assert os.WIFEXITED(status) and len(nonce) == NONCE_BYTES
    return nonce


async def test_no_two_payloads_share_a_nonce_not_even_across_a_fork() -> None:
    """Nonces come from a buffer of random bytes: a child process that inherited the
    buffer must not use the nonces its parent will use next."""
    codec = EncryptionCodec(keys.parse(keys.new_key_line("k1")))

    async def nonces(count: int) -> list[bytes]:
        encoded = await codec.encode([plain(f'{{"n": {i}}}') for i in range(count)])
        return [payload.data[:NONCE_BYTES] for payload in encoded]

    first = await nonces(NONCES_PER_DRAW * 3 + 7)  # several draws, and part of one left
    assert len(set(first)) == len(first)
    child_nonce = _next_nonce_in_a_child(codec)
    after = await nonces(NONCES_PER_DRAW)
    assert child_nonce not in after and not set(after) & set(first)


async def test_keys_rotate_newest_encrypts_any_decrypts() -> None:
    old_line, new_line = keys.new_key_line("k1"), keys.new_key_line("k2")
    old = EncryptionCodec(keys.parse(old_line))
    rotated = EncryptionCodec(keys.parse(old_line + new_line))
    (written_before,) = await old.encode([plain('"a"')])
    (written_after,) = await rotated.encode([plain('"b"')])
    assert written_after.metadata[KEY_ID] == b"k2"
    assert await rotated.decode([written_before, written_after]) == [plain('"a"'), plain('"b"')]
    with pytest.raises(ValueError, match="unknown key id 'k2'"):
        await old.decode([written_after])


async def test_plain_payloads_pass_through_and_tampering_is_detected() -> None:
    codec = EncryptionCodec(keys.parse(keys.new_key_line("k1")))
    assert await codec.decode([plain('{"spec": {}}')]) == [plain('{"spec": {}}')]
    (encoded,) = await codec.encode([plain('"x"')])
    encoded.data = encoded.data[:-1] + bytes([encoded.data[-1] ^ 1])
    with pytest.raises(InvalidTag):
        await codec.decode([encoded])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no keys"),
        ("k1", "expected '<key-id> <base64 key>'"),
        ("k1 not-base64!", "not base64"),
        (f"k1 {base64.b64encode(b'short').decode()}", "must be 32 bytes"),
        ("bad/id " + base64.b64encode(bytes(32)).decode(), "expected '<key-id> <base64 key>'"),
    ],
)
def test_bad_key_files_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        keys.parse(text, "keys")


def test_a_created_key_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    ring = keys.create(path, "k7")
    assert ring.current == "k7" and path.stat().st_mode & 0o777 == 0o600


async def test_the_codec_server_decodes_for_holders_of_its_token_only(
    codec_server: CodecServer, payload_keys: Path
) -> None:
    codec = EncryptionCodec(keys.load(payload_keys))
    body = json_format.MessageToJson(Payloads(payloads=await codec.encode([plain('{"a": 1}')])))
    async with httpx.AsyncClient(base_url=codec_server.url) as http:
        assert (await http.post("/decode", content=body)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await http.post("/decode", content=body, headers=wrong)).status_code == 401
        auth = {"Authorization": f"Bearer {codec_server.token}", "X-Namespace": "default"}
        response = await http.post("/decode", content=body, headers=auth)
        assert response.status_code == 200
        decoded = json_format.Parse(response.text, Payloads()).payloads[0]
        assert decoded.data == b'{"a": 1}'
        encoded = await http.post("/encode", content=response.text, headers=auth)
        assert json_format.Parse(encoded.text, Payloads()).payloads[0].metadata["encoding"] == ENCODING
        assert (await http.post("/decode", content=b"{nope", headers=auth)).status_code == 400
        ui = {"Origin": "http://127.0.0.1:8233", "Access-Control-Request-Method": "POST"}
        preflight = await http.options("/decode", headers=ui)
        assert preflight.headers["access-control-allow-origin"] == "http://127.0.0.1:8233"
        other = await http.options("/decode", headers={**ui, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def _texts(history_json: dict[str, object]) -> list[str]:
    """The history as text, plus every payload's data base64-decoded."""
    dumped = json.dumps(history_json)
    decoded = [
        base64.b64decode(data).decode(errors="replace")
        for data in re.findall(r'"data": "([A-Za-z0-9+/=]+)"', dumped)
    ]
    return [dumped, *decoded]


async def test_raw_histories_hold_no_secret_in_plain_text(stack: Stack, key_file: Path) -> None:
    name = unique("secrets")
    # The scaled-up worker fails: its failure's message must be encrypted too.
    stack.nodes.behaviours[f"{name}-workers-02"] = Behaviour.FAIL
    await clusters.create(stack.client, cluster_spec(name, masters=3, workers=1), stack.task_queue)
    assert (await wait_until_settled(stack, name)).phase.value == "Ready"
    handle = stack.client.get_workflow_handle(ids.cluster_workflow_id(name))
    await handle.execute_update(Update.SCALE_POOL, {"pool": "workers", "size": 2})
    material = await handle.query(
        Query.BOOTSTRAP_MATERIAL, {"node": f"{name}-master-01"}, result_type=dict[str, object]
    )
    pki = ClusterPKI.model_validate(material["pki"])
    assert pki.etcd_ca is not None  # the dedicated topology: the masters run etcd
    tokens = [s["stringData"]["token-id"] + "." + s["stringData"]["token-secret"]
              for s in stack.nodes.cluster_apis[name].objects.secrets_created]  # fmt: skip
    await (await clusters.delete(stack.client, name, stack.task_queue)).result()

    # Read the histories as anyone with access to Temporal could: no codec.
    raw = await Client.connect(stack.client.service_client.config.target_host, data_converter=DATA_CONVERTER)
    texts: list[str] = []
    workflow_ids = [ids.cluster_workflow_id(name), ids.delete_workflow_id(name)] + [
        ids.node_workflow_id(name, f"{name}-{node}")
        for node in ("master-01", "master-02", "workers-01", "workers-02")
    ]
    for workflow_id in workflow_ids:
        history = await raw.get_workflow_handle(workflow_id).fetch_history()
        texts += _texts(history.to_json_dict())
    everything = "\n".join(texts)

    secrets = {
        "CA private key": pki.kubernetes_ca.key_pem.get_secret_value().splitlines()[1],
        "etcd CA key": pki.etcd_ca.key_pem.get_secret_value().splitlines()[1],
        "service-account key": pki.service_account_key_pem.get_secret_value().splitlines()[1],
        "encryption secret": pki.encryption_secret.get_secret_value(),
        "VRRP password": pki.vrrp_password.get_secret_value(),
        "node token signing key": key_file.read_text().splitlines()[1],
        "vCenter password": stack.sim.password,
        "a failure's message": "simulated: pke install exited 1",
        "a failure's stack trace": 'File "',
    }
    assert tokens, "no bootstrap token was minted"
    secrets |= {f"bootstrap token {i}": token for i, token in enumerate(tokens)}
    found = [what for what, value in secrets.items() if value in everything]
    assert found == [], f"in plain text in history: {found}"
    assert "PRIVATE KEY" not in everything
    # Not because nothing was recorded: the spec, the PKI result and the join
    # token results are there, encrypted.
    cluster_history = (
        await raw.get_workflow_handle(ids.cluster_workflow_id(name)).fetch_history()
    ).to_json_dict()
    # Patch markers and search attributes are the SDK's own (patch ids), not ours.
    ours = [
        e
        for e in cluster_history["events"]  # type: ignore[attr-defined]
        if e["eventType"]
        not in ("EVENT_TYPE_MARKER_RECORDED", "EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES")
    ]
    encodings = re.findall(r'"encoding": "([A-Za-z0-9+/=]+)"', json.dumps(ours))
    assert encodings and {base64.b64decode(e) for e in encodings} == {ENCODING}
