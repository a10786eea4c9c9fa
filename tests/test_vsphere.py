"""The pyvmomi wrapper against the real simulator: lookups, session renewal,
fault mapping, and which guest address counts as the node's IP."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import SecretStr
from pyVim import connect
from pyVmomi import vim, vmodl
from temporalio.exceptions import ApplicationError

from pke_vsphere.config import VCenterSettings
from pke_vsphere.contracts.spec import VSpherePlacement
from pke_vsphere.vsphere import hardware, inventory, properties, vms
from pke_vsphere.vsphere.errors import PermanentError, TransientError, as_activity_errors, classify
from pke_vsphere.vsphere.session import VCenterSession
from pke_vsphere.vsphere.vms import pick_ip
from pke_vsphere.vsphere.waits import wait_for_task
from sim import vcenter
from tests.conftest import cluster_spec
from tests.harness import STATE_DIR


def settings_for(sim: vcenter.Simulator, password: str | None = None) -> VCenterSettings:
    return VCenterSettings(
        vcenter_url=sim.url,
        vcenter_username=sim.username,
        vcenter_password=SecretStr(password or sim.password),
        vcenter_insecure=True,  # the simulator serves plain HTTP on loopback
        installation_id="tests",
    )


@pytest.fixture(scope="module")
def expiring_sim() -> Iterator[vcenter.Simulator]:
    """A second simulator whose sessions expire after 2 s idle."""
    sim = vcenter.start(STATE_DIR, session_idle_timeout="2s", prepare=False)
    yield sim
    sim.stop()


def test_an_expired_session_is_renewed_transparently(expiring_sim: vcenter.Simulator) -> None:
    session = VCenterSession(settings_for(expiring_sim))

    def datacenters(si: object) -> list[str]:
        return [p["name"] for _, p in properties.find_all(si, vim.Datacenter, ["name"])]

    assert session.run(datacenters) == ["DC0"]
    time.sleep(4.5)  # idle past the timeout; the simulator reaps sessions on its own clock
    assert session.run(datacenters) == ["DC0"]
    assert session.logins == 2
    session.close()


def test_after_an_expiry_reads_are_answered_and_a_write_is_not_sent_again(
    expiring_sim: vcenter.Simulator,
) -> None:
    """The simulator answers a property read on an expired session with every
    property "missing" (NotAuthenticated in missingSet), not with a fault: the
    read logs in again and is answered, rather than report no VM. A write that
    meets an expired session logs in again too but fails, unsent: its activity's
    retry looks at vCenter before doing anything."""
    session = VCenterSession(settings_for(expiring_sim))
    path = f"{vcenter.DATACENTER}/vm/{vcenter.SOURCE_VM}"
    vm = session.run(lambda si: inventory.find_path(si, path))
    assert vm is not None
    time.sleep(4.5)  # idle past the timeout
    assert session.run(lambda si: properties.read(si, vm, ["name"])) == {"name": vcenter.SOURCE_VM}
    assert session.logins == 2

    time.sleep(4.5)
    with pytest.raises(vim.fault.NotAuthenticated):
        session.run(lambda si: vm.Rename_Task(newName="renamed-after-expiry"))
    assert session.logins == 3
    time.sleep(1)  # a rename that had been sent would have finished by now
    assert session.run(lambda si: properties.read(si, vm, ["name"])) == {"name": vcenter.SOURCE_VM}
    session.close()


def test_wrong_credentials_are_a_permanent_error_that_names_the_cause(
    vcsim: vcenter.Simulator,
) -> None:
    session = VCenterSession(settings_for(vcsim, password="wrong"))
    with pytest.raises(ApplicationError) as info, as_activity_errors("log in"):
        session.run(lambda si: si)
    assert info.value.non_retryable
    assert "vCenter rejected the user name or password" in info.value.message


def test_resolve_reports_every_missing_object_at_once(vcsim: vcenter.Simulator) -> None:
    session = VCenterSession(settings_for(vcsim))
    spec = VSpherePlacement(
        datacenter="DC0",
        template="DC0_H0_VM0-missing",
        folder="nope",
        resource_pool="DC0_C0/Resources/missing",
        datastore="LocalDS_0",
        network="no-such-network",
    )
    with pytest.raises(PermanentError) as info:
        session.run(lambda si: inventory.resolve(si, spec))
    message = str(info.value)
    for field in ("vsphere.template", "vsphere.folder", "vsphere.resource_pool", "vsphere.network"):
        assert field in message
    assert "vsphere.datastore" not in message
    session.close()


def test_resolve_refuses_a_vm_that_is_not_a_template(vcsim: vcenter.Simulator) -> None:
    session = VCenterSession(settings_for(vcsim))
    si = session.service_instance()
    spec = VSpherePlacement(
        datacenter="DC0",
        template=vcenter.PLAIN_VM,
        folder="pke",
        compute_cluster="DC0_C0",
        datastore="LocalDS_0",
    )
    with pytest.raises(PermanentError, match="is a VM, not a template"):
        inventory.resolve(si, spec)
    session.close()


def test_reading_a_deleted_vm_finds_nothing_and_leaves_the_others(vcsim: vcenter.Simulator) -> None:
    """vCenter fails a whole property read for one deleted object; a destroy that
    is retried after a crash must see "gone", not an error."""
    session = VCenterSession(settings_for(vcsim))
    si = session.service_instance()
    placement = inventory.resolve(
        si,
        VSpherePlacement(
            datacenter=vcenter.DATACENTER,
            template=vcenter.TEMPLATE,
            folder=vcenter.FOLDER,
            compute_cluster=vcenter.COMPUTE_CLUSTER,
            datastore=vcenter.DATASTORE,
        ),
    )
    template = placement.template
    task = vms.start_clone(
        si,
        placement,
        inventory.refs(si, placement),
        name=f"gone-{time.monotonic_ns()}",
        instance_uuid=str(uuid.uuid4()),
        cpus=1,
        memory_mb=64,
        extra_config={},
        power_on=False,
    )
    wait_for_task(si, task, timeout=30, on_wake=lambda: None)
    doomed = task.info.result
    wait_for_task(si, doomed.Destroy_Task(), timeout=30, on_wake=lambda: None)

    assert properties.read(si, doomed, ["name"]) == {}
    both = properties.read_many(si, [doomed, template], ["name"])
    assert list(both) == [template._moId]
    assert both[template._moId]["name"] == vcenter.TEMPLATE
    session.close()


def test_single_extra_config_entries_are_read_by_key_and_the_sweep_finds_vms_by_them(
    vcsim: vcenter.Simulator,
) -> None:
    """vCenter answers ``config.extraConfig["key"]`` with that one entry (the
    simulator is patched to, as govmomi's newer ones do): a sweep reads a VM's
    markers without its cloud-config. A key a VM lacks is left out of the answer."""
    session = VCenterSession(settings_for(vcsim))
    si = session.service_instance()
    placement = inventory.resolve(
        si,
        VSpherePlacement(
            datacenter=vcenter.DATACENTER,
            template=vcenter.TEMPLATE,
            folder=vcenter.FOLDER,
            compute_cluster=vcenter.COMPUTE_CLUSTER,
            datastore=vcenter.DATASTORE,
        ),
    )
    cluster = f"keys-{time.monotonic_ns()}"
    markers = {"pke-vsphere.managed-by": "pke-vsphere", "pke-vsphere.cluster": cluster}
    task = vms.start_clone(
        si,
        placement,
        inventory.refs(si, placement),
        name=cluster,
        instance_uuid=str(uuid.uuid4()),
        cpus=1,
        memory_mb=64,
        extra_config={**markers, "pke-vsphere.node": "n-01", "guestinfo.userdata": "x" * 4000},
        power_on=False,
    )
    wait_for_task(si, task, timeout=30, on_wake=lambda: None)
    vm = task.info.result
    # A key given again: the simulator appends it, vCenter replaces it; the last wins.
    again = vms.start_set_extra_config(vm, {"pke-vsphere.node": "n-02"})
    wait_for_task(si, again, timeout=30, on_wake=lambda: None)

    paths = properties.extra_config_paths(["pke-vsphere.node", "pke-vsphere.cluster", "pke-vsphere.absent"])
    props = properties.read(si, vm, ["name", *paths])
    assert properties.extra_config_entries(props) == {
        "pke-vsphere.node": "n-02",
        "pke-vsphere.cluster": cluster,
    }
    assert not any("absent" in path for path in props)

    found = vms.marked_vms(si, None, markers, also=["pke-vsphere.node"])
    assert [(v._moId, p["extra"]) for v, p in found] == [(vm._moId, {**markers, "pke-vsphere.node": "n-02"})]
    assert vms.marked_vms(si, None, {**markers, "pke-vsphere.cluster": "another"}) == []
    wait_for_task(si, vm.Destroy_Task(), timeout=30, on_wake=lambda: None)
    session.close()


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (vim.fault.InvalidLogin(), PermanentError),
        (vim.fault.NoPermission(privilegeId="VirtualMachine.Provisioning.Clone"), PermanentError),
        (vim.fault.NoDiskSpace(datastore="ds1"), PermanentError),
        (vim.fault.FileAlreadyExists(file="[ds1] n1/n1.vmx"), PermanentError),
        (vmodl.fault.InvalidArgument(invalidProperty="spec.location.pool"), PermanentError),
        (vim.fault.TaskInProgress(), TransientError),
        (vim.fault.NotAuthenticated(), TransientError),
        (ConnectionResetError(), TransientError),
        (TimeoutError(), TransientError),
    ],
)
def test_faults_are_sorted_into_permanent_and_transient(fault: BaseException, kind: type) -> None:
    assert isinstance(classify(fault), kind)


def test_an_invalid_argument_names_the_property() -> None:
    error = classify(vmodl.fault.InvalidArgument(invalidProperty="spec.location.pool"))
    assert "spec.location.pool" in str(error)


def nic(*addresses: str, device: int = 4000, network: str = "cluster-pg") -> SimpleNamespace:
    return SimpleNamespace(ipAddress=list(addresses), deviceConfigId=device, network=network)


STORAGE_NIC_FIRST = [nic("10.9.0.5", device=4001, network="storage"), nic("10.0.0.9")]


@pytest.mark.parametrize(
    ("net", "primary", "network", "expected"),
    [
        ([nic("10.0.0.5")], None, None, "10.0.0.5"),
        ([nic("169.254.3.4", "fe80::1", "10.0.0.6")], None, None, "10.0.0.6"),
        ([nic("172.17.0.1", device=-1), nic("10.0.0.7")], "172.17.0.1", None, "10.0.0.7"),
        ([nic("169.254.1.1")], "169.254.1.1", None, None),
        ([], "10.0.0.8", None, "10.0.0.8"),
        ([nic("2001:db8::5")], None, None, None),
        (None, None, None, None),
        # Two NICs, the guest listing the storage one first: the spec's port group decides.
        (
            [nic("10.9.0.5", device=4001, network="storage"), nic("10.0.0.9")],
            "10.9.0.5",
            "cluster-pg",
            "10.0.0.9",
        ),
        # Without a port group in the spec: the VM's first NIC (key 4000), not the guest's first.
        (STORAGE_NIC_FIRST, "10.9.0.5", None, "10.0.0.9"),
        # The cluster NIC has no address yet: keep waiting rather than take another's.
        ([nic("10.9.0.5", device=4001, network="storage"), nic()], "10.9.0.5", "cluster-pg", None),
    ],
)
def test_the_node_ip_is_the_cluster_nics_and_ignores_link_local_ipv6_and_foreign_bridges(
    net: list[SimpleNamespace] | None, primary: str | None, network: str | None, expected: str | None
) -> None:
    assert pick_ip(net, primary, network, nic_key=None if network else 4000) == expected


def test_a_port_group_path_names_the_port_group() -> None:
    assert vms.portgroup_name("dvs/Cluster PG") == "Cluster PG"
    assert vms.portgroup_name("/pg/") == "pg"
    assert vms.portgroup_name(None) is None


def test_the_simulator_binary_is_cached_by_source(tmp_path: Path) -> None:
    assert vcenter.binary_path(STATE_DIR).exists()
    assert vcenter.build(STATE_DIR) == vcenter.binary_path(STATE_DIR)


@pytest.mark.parametrize(
    ("cpus", "template_cores", "expected"),
    [(4, 2, 2), (3, 2, 1), (6, 4, 2), (1, 2, 1), (16, 8, 8), (5, None, 1)],
)
def test_cores_per_socket_divide_every_cpu_count(
    cpus: int, template_cores: int | None, expected: int
) -> None:
    assert vms.cores_per_socket(cpus, template_cores) == expected
    assert cpus % expected == 0


@pytest.mark.parametrize(
    ("version", "cpus", "memory_mb", "problems"),
    [
        ("vmx-13", 128, 1048576, 0),
        ("vmx-10", 64, 4096, 0),
        ("vmx-10", 65, 4096, 1),
        ("vmx-08", 40, 2048 * 1024, 2),
        ("vmx-12", 128, 4096, 0),  # between known versions: the lower one's limits
        ("vmx-99", 999, 4096, 1),  # newer than the table: the newest known limits
        ("weird", 999, 4096, 0),
    ],
)
def test_hardware_version_limits(version: str, cpus: int, memory_mb: int, problems: int) -> None:
    assert len(hardware.problems(version, [(1, cpus, memory_mb)])) == problems


def test_a_clone_with_a_cpu_count_the_template_topology_does_not_divide_works(
    vcsim: vcenter.Simulator,
) -> None:
    """The simulator's template has 2 cores per socket, as templates often do:
    vCenter refuses 3 CPUs at 2 per socket, so the clone asks for 1 per socket."""
    si = vcsim.connect()
    try:
        placement = inventory.resolve(si, cluster_spec("topology").vsphere)
        made = []
        for cpus in (3, 4):
            task = vms.start_clone(
                si,
                placement,
                inventory.refs(si, placement),
                name=f"topology-{uuid.uuid4().hex[:6]}",
                instance_uuid=str(uuid.uuid4()),
                cpus=cpus,
                memory_mb=2048,
                extra_config={},
                power_on=False,
            )
            vm = wait_for_task(si, task, timeout=30)
            made.append(vm)
            hw = properties.read(si, vm, ["config.hardware.numCPU", "config.hardware.numCoresPerSocket"])
            assert hw == {
                "config.hardware.numCPU": cpus,
                "config.hardware.numCoresPerSocket": 1 if cpus == 3 else 2,
            }
        bad = vim.vm.ConfigSpec(numCPUs=3, numCoresPerSocket=2)
        with pytest.raises(vmodl.fault.InvalidArgument):
            wait_for_task(si, made[0].ReconfigVM_Task(spec=bad), timeout=30)
        for vm in made:
            wait_for_task(si, vm.Destroy_Task(), timeout=30)
    finally:
        connect.Disconnect(si)


def test_the_session_logs_out_so_a_vcenter_out_of_sessions_lets_the_next_one_in() -> None:
    """vCenter limits sessions (here: one); a worker that stops gives its session back."""
    sim = vcenter.start(STATE_DIR, session_limit=1, prepare=False)
    try:
        first = VCenterSession(settings_for(sim))
        assert first.run(lambda si: inventory.find_path(si, vcenter.DATACENTER)) is not None
        second = VCenterSession(settings_for(sim))
        with pytest.raises(ApplicationError) as info, as_activity_errors("connect"):
            second.run(lambda si: inventory.find_path(si, vcenter.DATACENTER))
        assert "503" in info.value.message and not info.value.non_retryable
        first.close()
        assert second.run(lambda si: inventory.find_path(si, vcenter.DATACENTER)) is not None
        second.close()
    finally:
        sim.stop()
