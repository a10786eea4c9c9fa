"""What a node receives: its cloud-config, guestinfo encoding, pke flags, keepalived."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pke_vsphere.contracts.state import NodeKind
from pke_vsphere.render import cloudinit, guestinfo, keepalived, pke
from tests.harness import BOOTSTRAP_SETTINGS, node_identity, pke_install_args, random_ssh_keys

SETTINGS = BOOTSTRAP_SETTINGS


def render(kind: NodeKind, index: int = 1) -> dict[str, object]:
    doc = cloudinit.render(
        node_identity(kind, index),
        SETTINGS,
        node_api_url="https://orchestrator:8480/",
        node_token="tok.en.jwt",
    )
    return cloudinit.parse(doc)


def test_leader_installs_the_first_master_without_join_flags() -> None:
    args = pke_install_args(render(NodeKind.LEADER))
    assert args[:3] == ["pke", "install", "master"]
    assert "--kubernetes-master-mode=ha" in args
    assert "--kubernetes-cluster-name=prod" in args
    # PKE binds the API server to the port of the advertise address: control_plane.port.
    assert "--kubernetes-advertise-address=$ADVERTISE_ADDRESS:$API_PORT" in args
    assert "--kubernetes-pod-network-cidr=10.20.0.0/16" in args
    assert not any(a.startswith("--kubernetes-join-control-plane") for a in args)
    assert not any(a.startswith("--kubernetes-node-token") for a in args)


def test_follower_joins_the_control_plane_with_a_token_from_the_node_api() -> None:
    args = pke_install_args(render(NodeKind.MASTER, 2))
    assert args[:3] == ["pke", "install", "master"]
    assert "--kubernetes-join-control-plane" in args
    assert "--kubernetes-node-token=$JOIN_TOKEN" in args
    assert "--kubernetes-api-server-ca-cert-hash=$CA_CERT_HASH" in args


def test_worker_installs_a_worker_against_the_api_endpoint() -> None:
    args = pke_install_args(render(NodeKind.WORKER))
    assert args[:3] == ["pke", "install", "worker"]
    assert "--kubernetes-api-server=$API_ENDPOINT" in args
    assert not any("master-mode" in a or "taints" in a for a in args)


def test_cloud_config_names_the_host_and_carries_only_the_node_token() -> None:
    config = render(NodeKind.WORKER)
    assert config["hostname"] == "prod-workers-01"
    env = cloudinit.written_file(config, cloudinit.ENV_FILE)
    assert "PKE_VSPHERE_NODE_API=https://orchestrator:8480\n" in env
    assert "PKE_VSPHERE_KIND=worker\n" in env
    assert "PKE_VSPHERE_API_ENDPOINT=10.0.0.100:6443\n" in env
    assert cloudinit.written_file(config, cloudinit.TOKEN_FILE) == "tok.en.jwt"
    files = {f["path"]: f for f in config["write_files"]}  # type: ignore[attr-defined, index]
    assert files[cloudinit.TOKEN_FILE]["permissions"] == "0600"
    users = config["users"]
    assert users[0]["ssh_authorized_keys"] == SETTINGS.ssh_authorized_keys  # type: ignore[index]
    assert config["runcmd"] == [[cloudinit.SCRIPT_FILE]]
    dumped = json.dumps(config).lower()
    assert "password" not in dumped and "vcenter" not in dumped


def test_the_document_without_a_token_is_the_one_guestinfo_keeps_once_the_token_is_out() -> None:
    """provision_vm writes this one into guestinfo when the VM has its address,
    instead of reading the VM's document back and taking the token out."""
    node = node_identity(NodeKind.WORKER)
    args = {"node_api_url": "https://orchestrator:8480/", "node_api_ca_pem": "CA PEM\n"}
    with_token = cloudinit.render(node, SETTINGS, node_token="tok.en.jwt", **args)
    without = cloudinit.render(node, SETTINGS, node_token=None, **args)
    assert "tok.en.jwt" in with_token and "tok.en.jwt" not in without
    assert cloudinit.without_token(with_token) == without
    assert cloudinit.without_token(without) == without


def test_bootstrap_script_is_valid_bash() -> None:
    script = cloudinit.written_file(render(NodeKind.MASTER, 2), cloudinit.SCRIPT_FILE)
    result = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
    assert result.returncode == 0, result.stderr


def test_guestinfo_round_trips_and_marks_the_vm() -> None:
    node = node_identity(NodeKind.LEADER)
    extra = guestinfo.extra_config(node, "#cloud-config\nhostname: x\n", "site-a")
    assert extra["guestinfo.userdata.encoding"] == "gzip+base64"
    assert guestinfo.decode(extra["guestinfo.userdata"], "gzip+base64").startswith("#cloud-config")
    meta = json.loads(guestinfo.decode(extra["guestinfo.metadata"], extra["guestinfo.metadata.encoding"]))
    assert meta == {"instance-id": node.instance_uuid, "local-hostname": node.name}
    assert extra["disk.enableUUID"] == "TRUE"
    assert extra[guestinfo.MARKER_CLUSTER_UID] == "uid-1"
    assert extra[guestinfo.MARKER_NODE] == node.name
    assert extra[guestinfo.MARKER_INSTALLATION] == "site-a"
    with pytest.raises(ValueError, match="unknown guestinfo encoding"):
        guestinfo.decode("x", "rot13")


def test_keepalived_gives_the_leader_the_highest_priority_and_a_cluster_router_id() -> None:
    router = keepalived.router_id("uid-1")
    assert 1 <= router <= 255 and router == keepalived.router_id("uid-1")
    priorities = [keepalived.priority(i) for i in (1, 2, 3, 4, 5)]
    assert priorities[0] == max(priorities) and len(set(priorities)) == 5
    conf = keepalived.render(
        cluster="prod",
        vip="10.0.0.100",
        interface="ens192",
        router=router,
        node_priority=150,
        password="abcd1234",
        api_port=8443,
    )
    assert f"virtual_router_id {router}" in conf
    assert "state MASTER" in conf and "auth_pass abcd1234" in conf and "10.0.0.100" in conf
    assert "https://127.0.0.1:8443/healthz" in conf  # the control plane's port
    with pytest.raises(ValueError):
        keepalived.render(
            cluster="p", vip="v", interface="i", router=0, node_priority=1, password="p", api_port=6443
        )


@pytest.mark.parametrize(
    ("schedulable", "taints"),
    [(False, "--taints=node-role.kubernetes.io/control-plane:NoSchedule"), (True, "--taints=")],
    ids=["dedicated", "shared"],
)
def test_masters_are_tainted_unless_the_topology_shares_them_with_workloads(
    schedulable: bool, taints: str
) -> None:
    settings = SETTINGS.model_copy(update={"schedulable_masters": schedulable})
    for kind, index in ((NodeKind.LEADER, 1), (NodeKind.MASTER, 2)):
        config = cloudinit.parse(
            cloudinit.render(
                node_identity(kind, index), settings, node_api_url="https://o:8480", node_token="t"
            )
        )
        args = pke_install_args(config)
        assert [a for a in args if a.startswith("--taints")] == [taints]


def test_api_servers_of_an_external_etcd_get_its_endpoints_prefix_and_certificate_files() -> None:
    endpoints = ["https://10.0.0.5:2379", "https://10.0.0.6:2379"]
    settings = SETTINGS.model_copy(update={"etcd_endpoints": endpoints, "etcd_prefix": "/clusters/prod"})
    script = ""
    for kind, index in ((NodeKind.LEADER, 1), (NodeKind.MASTER, 2), (NodeKind.WORKER, 1)):
        config = cloudinit.parse(
            cloudinit.render(
                node_identity(kind, index), settings, node_api_url="https://o:8480", node_token="t"
            )
        )
        script = cloudinit.written_file(config, cloudinit.SCRIPT_FILE)
        flags = [a for a in pke_install_args(config) if a.startswith("--etcd-")]
        if kind is NodeKind.WORKER:
            assert flags == []  # a kubelet never talks to etcd
            continue
        assert flags == [
            "--etcd-endpoints=https://10.0.0.5:2379,https://10.0.0.6:2379",
            f"--etcd-ca-file={pke.ETCD_CA_FILE}",
            f"--etcd-cert-file={pke.ETCD_CERT_FILE}",
            f"--etcd-key-file={pke.ETCD_KEY_FILE}",
            "--etcd-prefix=/clusters/prod",
        ]
    # The bootstrap script writes the certificate where the flags say.
    assert 'PKI="$ROOT/etc/kubernetes/pki"' in script
    for path in (pke.ETCD_CA_FILE, pke.ETCD_CERT_FILE, pke.ETCD_KEY_FILE):
        assert f'> "$PKI/{path.removeprefix("/etc/kubernetes/pki/")}"' in script


def test_masters_that_run_etcd_get_no_etcd_flags() -> None:
    args = pke_install_args(render(NodeKind.LEADER))
    assert not any(a.startswith("--etcd-") for a in args)


def run_helpers(command: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The script's own helper functions (json, has, fetch), run by bash with ``command``."""
    script = cloudinit.written_file(render(NodeKind.LEADER), cloudinit.SCRIPT_FILE)
    helpers = script[script.index("json() {") : script.index("\n# --- the bootstrap ---")]
    return subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{helpers}\n{command}"],
        input=stdin,
        text=True,
        capture_output=True,
        check=False,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("document", "path", "present"),
    [
        ({"pki": {"etcd_ca": {"cert_pem": "CERT"}}}, "pki.etcd_ca", True),
        ({"pki": {"etcd_ca": None}}, "pki.etcd_ca", False),
        ({"pki": {}}, "pki.etcd_ca", False),
        ({"pki": {}, "external_etcd": None}, "external_etcd", False),
        ({"keepalived_conf": "vrrp_instance ..."}, "keepalived_conf", True),
    ],
)
def test_the_scripts_has_helper_tells_a_value_from_null_and_absent(
    document: object, path: str, present: bool
) -> None:
    assert (run_helpers(f"has {path}", json.dumps(document)).returncode == 0) is present


def test_the_scripts_json_helper_prints_a_value_and_fails_on_null_or_absent(tmp_path: Path) -> None:
    document = json.dumps({"pki": {"etcd_ca": {"cert_pem": "CERT"}, "none": None}})
    assert run_helpers("json pki.etcd_ca.cert_pem", document).stdout == "CERT\n"
    for missing in ("pki.none", "pki.front_proxy_ca.cert_pem"):
        result = run_helpers(f"json {missing} > out.pem; echo written", document, tmp_path)
        assert result.returncode != 0 and "written" not in result.stdout, missing


def test_the_scripts_fetch_retries_not_now_answers_and_keeps_only_the_answer(tmp_path: Path) -> None:
    """A 409 body must not end up in front of the material (curl prints it on failure)."""
    # Each call runs in a subshell, so the fake API counts its calls in a file.
    api = (
        'api() { echo call >> calls; if [ "$(wc -l < calls)" -lt 3 ]; then '
        'echo \'{"detail":"not yet"}\'; return 22; fi; echo \'{"pki":1}\'; }; sleep() { :; }'
    )
    result = run_helpers(f'{api}; body="$(fetch /v1/nodes/self/bootstrap)"; echo "$body"', cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, '{"pki":1}\n'), result.stderr
    assert (tmp_path / "calls").read_text().count("call") == 3
    gives_up = run_helpers("api() { return 22; }; sleep() { :; }; fetch /x")
    assert gives_up.returncode == 1


def test_the_leader_applies_each_addons_objects_before_or_after_its_release_as_asked(tmp_path: Path) -> None:
    """The script's add-on step, run by python3 with a kubectl on PATH that records its calls."""
    script = cloudinit.written_file(render(NodeKind.LEADER), cloudinit.SCRIPT_FILE)
    program = script[script.index("<<'PY'\n") + len("<<'PY'\n") : script.index("\nPY\n")]
    kubectl = tmp_path / "kubectl"
    kubectl.write_text('#!/bin/sh\necho "$*" >> "$CALLS"\ncat > /dev/null\n')
    kubectl.chmod(0o755)
    bundle = {
        "addons": [
            {"name": "vsphere-cpi", "version": "v1.30.1", "install_url": "https://cpi",
             "install_selector": "vsphere-cpi-infra notin (secret,config)",
             "namespace": "kube-system", "objects_first": True, "wait_for_release": False, "manifest": "a"},
            {"name": "metallb", "version": "v0.14.9", "install_url": "https://metallb",
             "namespace": "metallb-system", "wait_for_release": True, "manifest": "b"},
        ]
    }  # fmt: skip
    (tmp_path / "addons.json").write_text(json.dumps(bundle))
    calls = tmp_path / "calls"
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "CALLS": str(calls)}
    done = subprocess.run(
        ["python3", "-", str(tmp_path / "addons.json")],
        input=program, text=True, env=env, check=True, capture_output=True,
    )  # fmt: skip
    assert done.stdout.splitlines() == [  # the progress lines the simulated nodes read too
        "pke-vsphere: applied add-on vsphere-cpi@v1.30.1",
        "pke-vsphere: applied add-on metallb@v0.14.9",
    ]
    assert calls.read_text().splitlines() == [
        "--request-timeout=60s apply -f -",
        "--request-timeout=60s apply -f https://cpi -l vsphere-cpi-infra notin (secret,config)",
        "--request-timeout=60s wait --for=condition=Established crd --all --timeout=300s",
        "--request-timeout=60s apply -f https://metallb",
        "--request-timeout=60s wait --for=condition=Established crd --all --timeout=300s",
        "--request-timeout=60s -n metallb-system wait --for=condition=Available deployment --all "
        "--timeout=600s",
        "--request-timeout=60s apply -f -",
    ]


@pytest.mark.parametrize("cloud_provider", [None, "external"], ids=["none", "vsphere-cpi"])
def test_every_node_names_the_cloud_provider_only_when_the_cluster_runs_one(
    cloud_provider: str | None,
) -> None:
    settings = SETTINGS.model_copy(update={"cloud_provider": cloud_provider})
    for kind, index in ((NodeKind.LEADER, 1), (NodeKind.MASTER, 2), (NodeKind.WORKER, 1)):
        identity = node_identity(kind, index)
        config = cloudinit.parse(
            cloudinit.render(identity, settings, node_api_url="https://o:8480", node_token="t")
        )
        flags = [a for a in pke_install_args(config) if a.startswith("--kubernetes-cloud-provider")]
        assert flags == ([f"--kubernetes-cloud-provider={cloud_provider}"] if cloud_provider else [])


def test_guestinfo_over_vcenters_limits_is_refused_naming_the_spec_field() -> None:
    node = node_identity(NodeKind.WORKER)
    small = SETTINGS.model_copy(update={"ssh_authorized_keys": random_ssh_keys(3)})
    doc = cloudinit.render(node, small, node_api_url="https://o:8480", node_token="t")
    guestinfo.check_limits(guestinfo.extra_config(node, doc, "site-a"), cloudinit.spec_sources(small))

    big = SETTINGS.model_copy(update={"ssh_authorized_keys": random_ssh_keys(60)})
    doc = cloudinit.render(node, big, node_api_url="https://o:8480", node_token="t")
    extra = guestinfo.extra_config(node, doc, "site-a")
    with pytest.raises(guestinfo.TooLarge) as info:
        guestinfo.check_limits(extra, cloudinit.spec_sources(big))
    message = str(info.value)
    assert message.startswith("guestinfo.userdata would be ")
    assert "over the 64 KiB vCenter takes per guestinfo value" in message
    assert "ssh_authorized_keys (" in message and "grows it most" in message

    many = {f"guestinfo.part{i}": "x" * 60000 for i in range(20)}  # each fits, not all together
    with pytest.raises(guestinfo.TooLarge, match="over the 1024 KiB vCenter takes in all"):
        guestinfo.check_limits(many, {})


def test_the_node_takes_its_address_from_the_node_api_and_checks_it_is_its_own() -> None:
    """No default route needed (networks without one exist), and on a multi-NIC node
    the address is the cluster network's, which the orchestrator saw."""
    script = cloudinit.written_file(render(NodeKind.MASTER, 2), cloudinit.SCRIPT_FILE)
    assert "route get" not in script
    assert script.count("json node_address)") == 2  # from the bootstrap material and the join answer
    assert 'report joined "$ADVERTISE_ADDRESS"' in script  # reported back for the orchestrator to compare
    assert run_helpers("own_address 127.0.0.1").returncode == 0
    refused = run_helpers("own_address 192.0.2.1")
    assert refused.returncode == 1 and "192.0.2.1, is on none of its interfaces" in refused.stderr
    assert run_helpers("own_address 127x0x0x1").returncode == 1  # dots are not wildcards


HOSTILE = "x'\"; touch PWNED; $(touch PWNED) `touch PWNED`"


def test_node_env_keeps_every_value_literal_when_sourced(tmp_path: Path) -> None:
    settings = SETTINGS.model_copy(update={"api_endpoint": HOSTILE})
    env = tmp_path / "node.env"
    env.write_text(cloudinit.node_env(node_identity(NodeKind.WORKER), settings, "https://o:8480/"))
    shown = subprocess.run(
        ["bash", "-c", f'. {env}; printf %s "$PKE_VSPHERE_API_ENDPOINT"'],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert shown.stdout == HOSTILE
    assert not (tmp_path / "PWNED").exists()


def test_pke_install_gets_each_spec_value_as_one_word(tmp_path: Path) -> None:
    settings = SETTINGS.model_copy(update={"api_server_cert_sans": [HOSTILE, "api.example.com"]})
    args = " ".join(pke.install_args(node_identity(NodeKind.MASTER, 2), settings))
    shown = subprocess.run(
        ["bash", "-c", f"printf '%s\\n' {args}"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
        env={"PATH": "/usr/bin:/bin", "JOIN_TOKEN": "abcdef.0123456789abcdef"},
    )  # fmt: skip
    words = shown.stdout.splitlines()
    assert f"--kubernetes-api-server-cert-sans={HOSTILE}" in words
    assert "--kubernetes-api-server-cert-sans=api.example.com" in words
    assert "--kubernetes-node-token=abcdef.0123456789abcdef" in words
    assert not (tmp_path / "PWNED").exists()


def test_the_token_reaches_curl_only_in_a_private_file_and_is_gone_after_the_report(tmp_path: Path) -> None:
    """The script's credential handling, under a root of its own (PKE_VSPHERE_ROOT, as
    the simulated nodes run it), with a curl on PATH that records what it is given."""
    script = cloudinit.written_file(render(NodeKind.WORKER), cloudinit.SCRIPT_FILE)
    part = script[script.index('ROOT="${PKE_VSPHERE_ROOT:-}"') : script.index("\n# --- the bootstrap ---")]
    (tmp_path / "etc/pke-vsphere").mkdir(parents=True)
    (tmp_path / "etc/pke-vsphere/node.env").write_text("PKE_VSPHERE_NODE_API=https://o\n")
    token = tmp_path / "etc/pke-vsphere/token"
    token.write_text("header.payload.signature\n")
    curl = tmp_path / "bin" / "curl"
    curl.parent.mkdir()
    curl.write_text(
        "#!/bin/bash\n"
        'printf "%s\\n" "$@" >> "$LOG/argv"\n'
        'for a in "$@"; do case "$a" in @*) f="${a#@}"; stat -c %a "$f" >> "$LOG/modes"; '
        'cat "$f" >> "$LOG/headers";; esac; done\n'
        "echo '{\"accepted\": true}'\n"
    )
    curl.chmod(0o755)
    env = {"PATH": f"{curl.parent}:/usr/bin:/bin", "LOG": str(tmp_path), "PKE_VSPHERE_ROOT": str(tmp_path)}
    reported = subprocess.run(
        ["bash", "-c", f"set -euo pipefail\n{part}\nreport joined 10.0.0.7"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert reported.stdout == "pke-vsphere: reported joined\n"
    argv = (tmp_path / "argv").read_text()
    assert "header.payload.signature" not in argv and "-H\n@" in argv
    assert '{"kind": "joined", "address": "10.0.0.7"}' in argv.splitlines()
    headers = (tmp_path / "headers").read_text().splitlines()
    assert headers[0] == "Authorization: Bearer header.payload.signature"
    name, _, key = headers[1].partition(": ")
    assert name == "X-PKE-Node-Key" and len(key) == 43 and key.replace("-", "").replace("_", "").isalnum()
    assert (tmp_path / "modes").read_text().split() == ["600"]
    assert not token.exists()
    assert not (tmp_path / "run" / "pke-vsphere" / "api-headers").exists()
