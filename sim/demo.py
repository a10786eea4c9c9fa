"""``make demo`` and ``make down``: the whole system on one machine.

``up`` starts an embedded Temporal server (``temporal server start-dev`` with a
SQLite file), the vCenter simulator, the worker, the node API and the simulated
nodes, each as a background process with its log and pid file under
``.state/demo``, then creates the demo cluster and shows it node by node until
it is Ready. ``down`` stops them all and forgets the simulated data center.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from pke_vsphere.codec import keys
from pke_vsphere.pki import authority
from pke_vsphere.pki.node_tokens import create_signing_key, load_signing_key, write_public_key
from pke_vsphere.runtime import temporal
from pke_vsphere.runtime.binaries import temporal_binary
from sim import temporal_config, vcenter

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".state" / "demo"
TEMPORAL_PORT = 7233
UI_PORT = 8233
NODE_API_PORT = 8480
SPEC = ROOT / "examples" / "demo-cluster.yaml"
CODEC_PORT = 8234
SERVICES = ("nodes", "node-api", "codec", "worker", "vcsim", "temporal")


def _pidfile(name: str) -> Path:
    return STATE / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running(name: str) -> int | None:
    path = _pidfile(name)
    if path.exists():
        pid = int(path.read_text())
        if _alive(pid):
            return pid
    return None


def _spawn(name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = (STATE / f"{name}.log").open("ab")
    process = subprocess.Popen(
        args,
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # survives `make demo` returning
    )
    _pidfile(name).write_text(str(process.pid))
    return process


def _wait_for(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not come up within {timeout:.0f}s; see {STATE}/*.log")


def _temporal_healthy() -> bool:
    result = subprocess.run(
        [
            temporal_binary(),
            "operator",
            "cluster",
            "health",
            "--address",
            f"127.0.0.1:{TEMPORAL_PORT}",
        ],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _installation_id() -> str:
    """This machine's demo installation id: made once, kept across `make down`."""
    path = ROOT / ".state" / "installation-id"
    if not path.exists():
        path.write_text(f"demo-{secrets.token_hex(4)}\n")
    return path.read_text().strip()


def node_api_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A demo CA and the node API's serving certificate (127.0.0.1) in ``directory``:
    certificate, key and CA files; nodes get the CA."""
    ca = authority.new_ca("pke-vsphere demo node API CA")
    leaf = authority.issue(ca, "node-api", ip_addresses=("127.0.0.1",), server=True)
    paths = (directory / "node-api.crt", directory / "node-api.key", directory / "node-api-ca.crt")
    paths[0].write_text(leaf.cert_pem())
    paths[1].write_text(leaf.key_pem())
    paths[1].chmod(0o600)
    paths[2].write_text(ca.cert_pem())
    return paths


def up() -> int:
    STATE.mkdir(parents=True, exist_ok=True)
    running = [name for name in SERVICES if _running(name)]
    if running and len(running) != len(SERVICES):
        raise SystemExit(f"part of the demo is running ({', '.join(running)}): run `make down` first")
    settings = STATE / "settings.env"
    if not running:
        for port in (TEMPORAL_PORT, UI_PORT, NODE_API_PORT, CODEC_PORT):
            if not _port_free(port):
                raise SystemExit(f"port {port} on 127.0.0.1 is taken; stop what uses it (or `make down`)")
        print("starting Temporal (embedded dev server, SQLite) ...", flush=True)
        _spawn(
            "temporal",
            [
                temporal_binary(),
                "server",
                "start-dev",
                "--ip",
                "127.0.0.1",
                "--port",
                str(TEMPORAL_PORT),
                "--ui-port",
                str(UI_PORT),
                "--db-filename",
                str(STATE / "temporal.db"),
                "--ui-disable-news-fetch",
                "--log-level",
                "warn",
                "--ui-codec-endpoint",
                f"http://127.0.0.1:{CODEC_PORT}",
                *temporal_config.dev_server_args(),
            ],
        )
        _wait_for(_temporal_healthy, "Temporal")

        print("starting the vCenter simulator ...", flush=True)
        password_file = STATE / "vcenter-password"
        password_file.write_text("demo-only-simulator-password\n")
        password_file.chmod(0o600)
        sim = vcenter.start(
            ROOT / ".state",
            password=password_file.read_text().strip(),
            log_file=STATE / "vcsim.log",
            new_session=True,
            task_seconds=vcenter.parse_task_seconds(os.environ.get("SIM_TASK_SECONDS", "")),
        )
        _pidfile("vcsim").write_text(str(sim.process.pid))
        key_file, public_key_file = STATE / "node-token.pem", STATE / "node-token.pub"
        if not key_file.exists():
            create_signing_key(key_file)
        # The node API holds only the public half.
        write_public_key(load_signing_key(key_file), public_key_file)
        payload_keys = STATE / "payload-keys"
        if not payload_keys.exists():
            keys.create(payload_keys, "demo-1")
        node_api_tls = node_api_certificate(STATE)
        # The CSI driver's own vCenter account (the simulator accepts any login).
        storage_accounts = STATE / "storage-accounts.yaml"
        storage_accounts.write_text(
            f"csi-demo:\n  username: k8s-csi@vsphere.local\n  password: {secrets.token_urlsafe(18)}\n"
        )
        storage_accounts.chmod(0o600)
        settings.write_text(
            "\n".join(
                [
                    f"PKE_VSPHERE_TEMPORAL_ADDRESS=127.0.0.1:{TEMPORAL_PORT}",
                    f"PKE_VSPHERE_VCENTER_URL={sim.url}",
                    f"PKE_VSPHERE_VCENTER_USERNAME={sim.username}",
                    "PKE_VSPHERE_VCENTER_INSECURE=true",  # the simulator serves plain HTTP on loopback
                    f"PKE_VSPHERE_INSTALLATION_ID={_installation_id()}",
                    f"PKE_VSPHERE_VCENTER_PASSWORD_FILE={password_file}",
                    f"PKE_VSPHERE_NODE_API_URL=https://127.0.0.1:{NODE_API_PORT}",
                    f"PKE_VSPHERE_NODE_API_TLS_CERT_FILE={node_api_tls[0]}",
                    f"PKE_VSPHERE_NODE_API_TLS_KEY_FILE={node_api_tls[1]}",
                    f"PKE_VSPHERE_NODE_API_CA_FILE={node_api_tls[2]}",
                    f"PKE_VSPHERE_NODE_API_LISTEN_PORT={NODE_API_PORT}",
                    f"PKE_VSPHERE_NODE_TOKEN_KEY_FILE={key_file}",
                    f"PKE_VSPHERE_NODE_TOKEN_PUBLIC_KEY_FILE={public_key_file}",
                    f"PKE_VSPHERE_PAYLOAD_KEYS_FILE={payload_keys}",
                    f"PKE_VSPHERE_STORAGE_CREDENTIALS_FILE={storage_accounts}",
                    f"PKE_VSPHERE_CODEC_LISTEN_PORT={CODEC_PORT}",
                    "",
                ]
            )
        )
        python = sys.executable
        print("starting the worker, the node API and the simulated nodes ...", flush=True)
        _spawn("worker", [python, str(ROOT / "worker.py"), "--settings", str(settings)])
        _spawn("node-api", [python, "-m", "pke_vsphere.nodeapi", "--settings", str(settings)])
        _spawn("codec", [python, "-m", "pke_vsphere.codec", "--settings", str(settings)])
        boot = os.environ.get("SIM_BOOT_SECONDS", "2")
        _spawn("nodes", [python, "-m", "sim.nodes", "--settings", str(settings), "--boot-seconds", boot])
        _wait_for(lambda: not _port_free(NODE_API_PORT), "the node API")
        _wait_for(lambda: not _port_free(CODEC_PORT), "the codec server")

    from starter import cli

    print(f"\nTemporal Web UI: http://127.0.0.1:{UI_PORT}/namespaces/default/workflows\n", flush=True)
    code = asyncio.run(cli.run(["--settings", str(settings), "create", "-f", str(SPEC), "--wait"]))
    if code == 1:  # already created by an earlier `make demo`: show it instead
        code = asyncio.run(cli.run(["--settings", str(settings), "status", "demo", "--watch"]))
    print(
        f"\nThe demo keeps running. Web UI: http://127.0.0.1:{UI_PORT}  "
        f"CLI: .venv/bin/pke-vsphere --settings {settings.relative_to(ROOT)} status demo\n"
        f"Logs: {STATE.relative_to(ROOT)}/*.log   Stop everything: make down",
        flush=True,
    )
    return code


def down() -> int:
    for name in SERVICES:
        pid = _running(name)
        if pid is None:
            continue
        print(f"stopping {name} ({pid})", flush=True)
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            os.killpg(pid, signal.SIGKILL)
    # The simulated vCenter keeps its inventory in memory only, so the workflows
    # recorded against it are forgotten with it.
    shutil.rmtree(STATE, ignore_errors=True)
    print("demo stopped", flush=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="run the pke-vsphere demo")
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args()
    temporal.run_client_process(up if args.action == "up" else down)


if __name__ == "__main__":
    main()
