"""The pure validation behind the cluster workflow's update validators."""

from __future__ import annotations

import pytest
from temporalio.exceptions import ApplicationError

from pke_vsphere.contracts import ids
from pke_vsphere.contracts.commands import AddPoolRequest, RemovePoolRequest, ScaleRequest
from pke_vsphere.contracts.spec import NodePoolSpec
from tests.conftest import cluster_spec
from workflows import validation

HA = cluster_spec("ha", masters=3, workers=2)
SINGLE = cluster_spec("single", masters=1, workers=2)


def refused(call: object) -> str:
    assert callable(call)
    with pytest.raises(ApplicationError) as info:
        call()
    assert info.value.non_retryable
    return info.value.message


def test_every_command_is_refused_while_the_cluster_is_being_deleted() -> None:
    worker_pool = NodePoolSpec(name="extra", role="worker", count=1)
    calls = [
        lambda: validation.scale(HA, ScaleRequest(pool="workers", size=3), deleting=True),
        lambda: validation.add_pool(HA, AddPoolRequest(pool=worker_pool), deleting=True),
        lambda: validation.remove_pool(HA, RemovePoolRequest(pool="workers"), deleting=True),
        lambda: validation.not_deleting(True, HA),
    ]
    for call in calls:
        assert refused(call) == "cluster ha is being deleted"


def test_worker_pools_scale_freely_within_bounds() -> None:
    validation.scale(HA, ScaleRequest(pool="workers", size=0), deleting=False)
    validation.scale(HA, ScaleRequest(pool="workers", size=997), deleting=False)  # 3 + 997 = 1000
    assert refused(lambda: validation.scale(HA, ScaleRequest(pool="workers", size=998), deleting=False)) == (
        "pool workers: 998 nodes would make 1001 in the cluster, more than 1000"
    )


def test_node_names_keep_two_digits_up_to_99_and_count_on_to_999() -> None:
    assert [ids.node_name("c", "w", i) for i in (1, 9, 99, 100, 999)] == [
        "c-w-01",
        "c-w-09",
        "c-w-99",
        "c-w-100",
        "c-w-999",
    ]


def test_master_pool_rules() -> None:
    validation.scale(HA, ScaleRequest(pool="master", size=5), deleting=False)
    assert "a master pool has 1, 3 or 5 nodes (etcd needs an odd quorum), not 4" in refused(
        lambda: validation.scale(HA, ScaleRequest(pool="master", size=4), deleting=False)
    )
    assert "removing masters is not supported" in refused(
        lambda: validation.scale(HA, ScaleRequest(pool="master", size=1), deleting=False)
    )
    assert "needs control_plane.vip" in refused(
        lambda: validation.scale(SINGLE, ScaleRequest(pool="master", size=3), deleting=False)
    )


def test_api_servers_on_an_external_etcd_grow_and_shrink_between_one_and_five() -> None:
    etcd = {"endpoints": ["https://10.0.0.5:2379"], "credential": "shared-etcd"}
    spec = cluster_spec(
        "ext",
        masters=2,
        workers=1,
        control_plane={"vip": "10.0.0.100", "topology": "external_etcd", "external_etcd": etcd},
    )
    validation.scale(spec, ScaleRequest(pool="master", size=3), deleting=False)
    validation.scale(spec, ScaleRequest(pool="master", size=4), deleting=False)
    assert refused(lambda: validation.scale(spec, ScaleRequest(pool="master", size=6), deleting=False)) == (
        "pool master: the external_etcd topology runs 1 to 5 API servers, not 6"
    )
    validation.scale(spec, ScaleRequest(pool="master", size=1), deleting=False)  # API servers only


def test_a_shared_control_plane_stays_at_three_or_five() -> None:
    spec = cluster_spec(
        "shr", masters=3, workers=0, control_plane={"vip": "10.0.0.100", "topology": "shared"}
    )
    validation.scale(spec, ScaleRequest(pool="master", size=5), deleting=False)
    assert "on 3 or 5 nodes; not 4" in refused(
        lambda: validation.scale(spec, ScaleRequest(pool="master", size=4), deleting=False)
    )


def test_unknown_pools_are_named_with_the_known_ones() -> None:
    message = refused(lambda: validation.scale(HA, ScaleRequest(pool="gpu", size=1), deleting=False))
    assert message == "cluster ha has no pool 'gpu' (pools: master, workers)"


def test_parse_names_each_field_and_rule() -> None:
    message = refused(lambda: validation.parse(ScaleRequest, {"pool": "", "size": 1000}))
    assert message.startswith("invalid ScaleRequest: ")
    assert "pool: String should have at least 1 character" in message
    assert "size: Input should be less than or equal to 999" in message


def test_an_added_pool_must_keep_the_spec_valid() -> None:
    extra = NodePoolSpec(name="big", role="worker", count=1, cpus=4)
    validation.add_pool(HA, AddPoolRequest(pool=extra), deleting=False)
    clash = NodePoolSpec(name="master", role="worker", count=1)
    assert "already has a pool 'master'" in refused(
        lambda: validation.add_pool(HA, AddPoolRequest(pool=clash), deleting=False)
    )
