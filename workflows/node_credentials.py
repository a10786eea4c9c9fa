"""The credentials a node's workflow hands out and takes back: the node's own
kubeadm bootstrap token (minted ahead by its cluster or when the node first asks
to join; deleted by its cluster once the node joined, a round of nodes at a time,
or by the node's workflow when it ends otherwise) and the node token in
its VM's guestinfo (taken out once the node reported).

``local=True`` runs a join-token step as a local activity (a marker in the
node's history instead of an activity's three events and a workflow task); the
node workflow of 0.2 (workflows/node_v1.py) calls them without, as it always
did, and is the one caller of ``remove_node_token`` (0.3's ``provision_vm``
takes the token out itself)."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities import kube as kube_activities
    from activities.vms import VSphereActivities
    from pke_vsphere.contracts.messages import (
        CreateTokenInput,
        DeleteTokenInput,
        DeleteTokensInput,
        NodeJoinContext,
        RemoveNodeTokenInput,
    )
    from pke_vsphere.contracts.pki import BootstrapToken
    from pke_vsphere.runtime.failures import failure_reason
    from workflows.policies import (
        JOIN_TOKEN_TTL,
        KUBE_CALL_TIMEOUT,
        KUBE_RETRY,
        VSPHERE_HEARTBEAT,
        VSPHERE_RETRY,
        vcenter_queue,
    )

# Taking credentials back is worth a few tries, not a stuck node: a token left
# in the cluster expires within JOIN_TOKEN_TTL, and the node token in guestinfo
# is refused by the node API once the node reported.
CLEANUP_DEADLINE = timedelta(minutes=2)
# A cancelled node (removed, or its cluster deleted) takes its join token back within
# this: a delete waits for its node workflows, and the API server may be going too.
CANCELLED_CLEANUP_DEADLINE = timedelta(seconds=15)


async def mint_join_token(
    cluster: str, node: str, join: NodeJoinContext, local: bool = False
) -> BootstrapToken:
    request = CreateTokenInput(
        cluster=cluster, access=join.access, ttl_seconds=int(JOIN_TOKEN_TTL.total_seconds()), node=node
    )
    run = workflow.execute_local_activity if local else workflow.execute_activity
    return await run(
        kube_activities.create_bootstrap_token,
        request,
        schedule_to_close_timeout=timedelta(minutes=2),
        start_to_close_timeout=KUBE_CALL_TIMEOUT,
        retry_policy=KUBE_RETRY,
    )


async def delete_join_tokens(
    cluster: str,
    join: NodeJoinContext,
    tokens: list[BootstrapToken],
    local: bool = False,
    deadline: timedelta = CLEANUP_DEADLINE,
) -> None:
    """Delete the node's bootstrap tokens from the cluster; one that cannot be deleted
    within ``deadline`` is logged and left to expire."""
    run = workflow.execute_local_activity if local else workflow.execute_activity
    for token in tokens:
        token_id = token.token_id
        try:
            await run(
                kube_activities.delete_bootstrap_token,
                DeleteTokenInput(cluster=cluster, access=join.access, token_id=token_id),
                schedule_to_close_timeout=deadline,
                start_to_close_timeout=min(KUBE_CALL_TIMEOUT, deadline),
                retry_policy=KUBE_RETRY,
            )
        except ActivityError as err:
            workflow.logger.warning(
                "bootstrap token %s stays until it expires: %s", token_id, failure_reason(err)
            )


async def delete_joined_nodes_tokens(cluster: str, join: NodeJoinContext, token_ids: list[str]) -> None:
    """Delete the join tokens the nodes of a round of outcomes handed back (they
    joined); one that cannot be deleted within ``CLEANUP_DEADLINE`` is logged and
    left to expire."""
    try:
        await workflow.execute_activity(
            kube_activities.delete_bootstrap_tokens,
            DeleteTokensInput(cluster=cluster, access=join.access, token_ids=token_ids),
            schedule_to_close_timeout=CLEANUP_DEADLINE,
            start_to_close_timeout=KUBE_CALL_TIMEOUT * 4,
            retry_policy=KUBE_RETRY,
        )
    except ActivityError as err:
        workflow.logger.warning(
            "%d bootstrap tokens stay until they expire: %s", len(token_ids), failure_reason(err)
        )


async def remove_node_token(vm_ref: str, name: str) -> None:
    """Take the node's token out of its VM's guestinfo."""
    try:
        await workflow.execute_activity_method(
            VSphereActivities.remove_node_token,
            RemoveNodeTokenInput(vm_ref=vm_ref, name=name),
            task_queue=vcenter_queue(),
            schedule_to_close_timeout=CLEANUP_DEADLINE,
            heartbeat_timeout=VSPHERE_HEARTBEAT,
            retry_policy=VSPHERE_RETRY,
        )
    except ActivityError as err:
        workflow.logger.warning("the token of %s stays in its guestinfo: %s", name, failure_reason(err))
