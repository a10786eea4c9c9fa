"""keepalived for the control-plane VIP: every configuration a master receives
is accepted by the real ``keepalived --config-test`` (Debian's package), for 1,
3 and 5 masters; router ids are unique per network."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from pke_vsphere.pki.cluster import generate_cluster_pki
from pke_vsphere.render import keepalived

KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"
VIP = "10.0.0.100"


def local_nic() -> str:
    """keepalived checks that the interface exists (and is not loopback): use one of
    this machine's, as a node's bootstrap script uses one of the node's."""
    nics = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name != "lo")
    if not nics:
        pytest.fail("keepalived --config-test needs a network interface other than lo")
    return next((n for n in nics if n.startswith(("eth", "en"))), nics[0])


def config_test(conf: str, tmp_path: Path) -> tuple[int, str]:
    """keepalived's verdict on a configuration file: exit code and what it printed."""
    if not Path(KEEPALIVED).exists():
        pytest.fail("keepalived is not installed: run `make system-deps` (Debian package keepalived)")
    path = tmp_path / "keepalived.conf"
    path.write_text(conf)
    done = subprocess.run(
        [KEEPALIVED, "--config-test", "--use-file", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, (done.stdout + done.stderr).strip()


def masters_configs(count: int, interface: str | None) -> list[str]:
    """What the node API serves each master of a cluster (see nodeapi/app.py)."""
    pki = generate_cluster_pki("prod")
    router = keepalived.choose_router_id("uid-1", None, {})
    return [
        keepalived.render(
            cluster="prod",
            vip=VIP,
            interface=interface,
            router=router,
            node_priority=keepalived.priority(index),
            password=pki.vrrp_password.get_secret_value(),
            api_port=6443,
        )
        for index in range(1, count + 1)
    ]


@pytest.mark.parametrize("masters", [1, 2, 3, 5])
@pytest.mark.parametrize("from_spec", [False, True], ids=["found-at-boot", "from-spec"])
def test_every_master_config_passes_keepalived_config_test(
    masters: int, from_spec: bool, tmp_path: Path
) -> None:
    nic = local_nic()
    configs = masters_configs(masters, nic if from_spec else None)
    for index, conf in enumerate(configs, start=1):
        if not from_spec:  # what the bootstrap script does with the interface it finds
            conf = conf.replace(keepalived.INTERFACE_PLACEHOLDER, nic)
        code, output = config_test(conf, tmp_path)
        assert (code, output) == (0, ""), f"master {index} of {masters}:\n{output}\n{conf}"


@pytest.mark.parametrize("masters", [2, 3, 5])
def test_one_vrrp_instance_per_cluster_with_the_leader_ahead_and_a_health_check(masters: int) -> None:
    configs = masters_configs(masters, "ens192")
    priorities = [int(_value(c, "priority")) for c in configs]
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == masters
    assert [_value(c, "state") for c in configs] == ["MASTER"] + ["BACKUP"] * (masters - 1)
    # The health check's weight takes a failed leader below every healthy follower.
    assert priorities[0] + keepalived.HEALTH_CHECK_WEIGHT < min(priorities[1:])
    for key in ("virtual_router_id", "auth_pass", "interface"):
        assert len({_value(c, key) for c in configs}) == 1, key
    assert all("https://127.0.0.1:6443/healthz" in c for c in configs)


def test_keepalived_itself_rejects_a_broken_config(tmp_path: Path) -> None:
    """The check above can fail: keepalived names what is wrong."""
    (conf,) = masters_configs(1, local_nic())
    broken = conf.replace("advert_int 1", "advert_int one")
    code, output = config_test(broken, tmp_path)
    assert code != 0
    assert "advert_int" in output or "invalid" in output.lower()


def test_the_bootstrap_script_fills_in_the_interface_it_finds() -> None:
    assert keepalived.INTERFACE_PLACEHOLDER in masters_configs(1, None)[0]
    script = resources.files("pke_vsphere.render").joinpath("script.sh").read_text()
    assert f"s/{keepalived.INTERFACE_PLACEHOLDER}/$VRRP_INTERFACE/" in script


def test_router_ids_are_unique_on_a_network() -> None:
    derived = keepalived.router_id("uid-1")
    assert keepalived.choose_router_id("uid-1", None, {}) == derived
    # The derived id is taken: the next free one, wrapping after 255.
    taken = {derived: "other", derived % 255 + 1: "third"}
    assert keepalived.choose_router_id("uid-1", None, taken) == (derived + 1) % 255 + 1
    assert keepalived.choose_router_id("uid-1", 42, {derived: "other"}) == 42
    with pytest.raises(keepalived.RouterIdTaken, match="vrrp_router_id 42 is already used by cluster 'blue'"):
        keepalived.choose_router_id("uid-1", 42, {42: "blue"})
    with pytest.raises(keepalived.RouterIdTaken, match="all 255"):
        keepalived.choose_router_id("uid-1", None, {i: "x" for i in range(1, 256)})


@pytest.mark.parametrize("password", ["", "nine-char", "toolongpw", "sp ace"])
def test_a_password_keepalived_would_truncate_or_reject_is_refused(password: str) -> None:
    with pytest.raises(ValueError, match="VRRP password"):
        keepalived.render(
            cluster="c",
            vip=VIP,
            interface="eth0",
            router=1,
            node_priority=150,
            password=password,
            api_port=6443,
        )


def _value(conf: str, key: str) -> str:
    return next(line.split()[1] for line in conf.splitlines() if line.strip().startswith(f"{key} "))
