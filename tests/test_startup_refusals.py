"""The real entry points (worker.py, ``python -m pke_vsphere.nodeapi``, ``python -m pke_vsphere.codec``,
``pke-vsphere``) refuse to start on settings that would expose a secret, each
with one line that names the problem, and exit 2 having done nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pke_vsphere.codec import keys
from pke_vsphere.codec.encryption import EncryptionCodec
from pke_vsphere.codec.server import create_app
from pke_vsphere.pki.node_tokens import create_signing_key, write_public_key
from tests.harness import ROOT, serve_app

pytestmark = pytest.mark.processes  # each test runs the real entry points

# Nothing listens here: a process that got past its checks fails to connect instead.
NOWHERE = "127.0.0.1:9"
# A listen address off loopback (documentation range): refused before anything binds it.
OFF_LOOPBACK = "192.0.2.10"


@pytest.fixture
def files(tmp_path: Path) -> Iterator[dict[str, Path]]:
    key = create_signing_key(tmp_path / "node-token.pem")
    write_public_key(key, tmp_path / "node-token.pub")
    keys.create(tmp_path / "payload-keys")
    password = tmp_path / "vcenter-password"
    password.write_text("secret\n")
    password.chmod(0o600)
    yield {
        "key": tmp_path / "node-token.pem",
        "public": tmp_path / "node-token.pub",
        "keys": tmp_path / "payload-keys",
        "password": password,
    }


def settings(path: Path, values: dict[str, object]) -> Path:
    path.write_text("".join(f"PKE_VSPHERE_{k}={v}\n" for k, v in values.items()))
    return path


def worker_settings(tmp_path: Path, files: dict[str, Path], **changes: object) -> Path:
    values: dict[str, object] = {
        "TEMPORAL_ADDRESS": NOWHERE,
        "VCENTER_URL": "https://127.0.0.1:9/sdk",
        "VCENTER_USERNAME": "user",
        "VCENTER_PASSWORD_FILE": files["password"],
        "INSTALLATION_ID": "tests",
        "NODE_API_URL": "https://127.0.0.1:9",
        "NODE_TOKEN_KEY_FILE": files["key"],
        "NODE_TOKEN_PUBLIC_KEY_FILE": files["public"],
        "PAYLOAD_KEYS_FILE": files["keys"],
        "NODE_API_TLS_CERT_FILE": files["public"],  # never read: the process stops before
        "NODE_API_TLS_KEY_FILE": files["key"],
    }
    for key, value in changes.items():
        if value is None:
            values.pop(key, None)
        else:
            values[key] = value
    return settings(tmp_path / f"settings-{len(list(tmp_path.glob('settings-*')))}.env", values)


def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one line a refused process printed (it exited 2 having printed nothing else)."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "refusing to start" in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


WORKER = [sys.executable, "worker.py", "--settings"]
NODE_API = [sys.executable, "-m", "pke_vsphere.nodeapi", "--settings"]
CODEC = [sys.executable, "-m", "pke_vsphere.codec", "--settings"]
CLI = [sys.executable, "-c", "from starter.cli import main; main()", "--settings"]


@pytest.mark.parametrize("program", [WORKER, NODE_API, CLI], ids=["worker", "node-api", "cli"])
def test_no_payload_keys_is_refused_unless_a_development_run_says_so(
    tmp_path: Path, files: dict[str, Path], program: list[str]
) -> None:
    command = ["list"] if program is CLI else []
    path = worker_settings(tmp_path, files, PAYLOAD_KEYS_FILE=None)
    refused(
        run([*program, str(path), *command]), "PKE_VSPHERE_PAYLOAD_KEYS_FILE", "ALLOW_UNENCRYPTED_PAYLOADS"
    )
    path = worker_settings(tmp_path, files, PAYLOAD_KEYS_FILE=None, ALLOW_UNENCRYPTED_PAYLOADS="true")
    allowed = run([*program, str(path), *command], timeout=90) if program is CLI else None
    if allowed is not None:  # past the check, it fails to reach Temporal instead
        assert allowed.returncode == 1 and "refusing to start" not in allowed.stderr, allowed.stderr


@pytest.mark.parametrize(
    ("setting", "what"),
    [
        ("PAYLOAD_KEYS_FILE", "payload keys file"),
        ("NODE_TOKEN_KEY_FILE", "node token signing key"),
        ("VCENTER_PASSWORD_FILE", "vCenter password file"),
    ],
)
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_secret_files_readable_by_others_are_refused_with_file_and_mode(
    tmp_path: Path, files: dict[str, Path], setting: str, what: str, mode: int
) -> None:
    target = {"PAYLOAD_KEYS_FILE": files["keys"], "NODE_TOKEN_KEY_FILE": files["key"],
              "VCENTER_PASSWORD_FILE": files["password"]}[setting]  # fmt: skip
    target.chmod(mode)
    line = refused(run([*WORKER, str(worker_settings(tmp_path, files))]), what, str(target), f"{mode:04o}")
    assert "chmod 600" in line


@pytest.mark.parametrize("setting", ["STORAGE_CREDENTIALS_FILE", "ETCD_CREDENTIALS_FILE"])
def test_credential_files_readable_by_others_are_refused(
    tmp_path: Path, files: dict[str, Path], setting: str
) -> None:
    credentials = tmp_path / "credentials.yaml"
    credentials.write_text("{}\n")
    credentials.chmod(0o644)
    path = worker_settings(tmp_path, files, **{setting: credentials})
    refused(run([*WORKER, str(path)]), str(credentials), "0644")


def test_the_node_api_refuses_plain_http_and_private_keys(tmp_path: Path, files: dict[str, Path]) -> None:
    plain = worker_settings(tmp_path, files, NODE_API_TLS_CERT_FILE=None, NODE_API_TLS_KEY_FILE=None)
    refused(run([*NODE_API, str(plain)]), "TLS", "--development")
    private = worker_settings(tmp_path, files, NODE_TOKEN_PUBLIC_KEY_FILE=files["key"])
    refused(run([*NODE_API, str(private)]), "holds a private key", str(files["key"]))
    missing = worker_settings(tmp_path, files, NODE_TOKEN_PUBLIC_KEY_FILE=None)
    refused(run([*NODE_API, str(missing)]), "PKE_VSPHERE_NODE_TOKEN_PUBLIC_KEY_FILE")
    # A development run gets past the checks (and then cannot reach Temporal).
    development = run([*NODE_API, str(plain), "--development"], timeout=90)
    assert development.returncode != 0 and "refusing to start" not in development.stderr


def test_the_codec_server_needs_a_token_off_loopback(tmp_path: Path, files: dict[str, Path]) -> None:
    path = settings(
        tmp_path / "codec.env", {"PAYLOAD_KEYS_FILE": files["keys"], "CODEC_LISTEN_HOST": OFF_LOOPBACK}
    )
    refused(
        run([*CODEC, str(path)]),
        OFF_LOOPBACK,
        "CODEC_AUTH_TOKEN_FILE",
    )
    token = tmp_path / "codec-token"
    token.write_text("t0ken\n")
    token.chmod(0o644)
    path = settings(
        tmp_path / "codec.env",
        {
            "PAYLOAD_KEYS_FILE": files["keys"],
            "CODEC_LISTEN_HOST": OFF_LOOPBACK,
            "CODEC_AUTH_TOKEN_FILE": token,
        },
    )
    refused(run([*CODEC, str(path)]), str(token), "0644")


async def test_the_codec_server_answers_only_for_its_own_host_names(payload_keys: Path) -> None:
    """A page of another site that rebinds its DNS name to 127.0.0.1 sends its own Host."""
    app = create_app(EncryptionCodec(keys.load(payload_keys)), None, ["http://127.0.0.1:8233"])
    async with serve_app(app) as url, httpx.AsyncClient(base_url=url) as http:
        body = '{"payloads": []}'
        assert (await http.post("/decode", content=body)).status_code == 200
        rebound = await http.post("/decode", content=body, headers={"Host": "evil.example"})
        assert rebound.status_code == 400
        for name in ("localhost", "127.0.0.1"):
            assert (await http.post("/decode", content=body, headers={"Host": name})).status_code == 200
    await asyncio.sleep(0)
