"""Timeouts and retry policies shared by the workflows."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from pke_vsphere.contracts.protocol import vcenter_task_queue


def vcenter_queue() -> str:
    """Where this workflow's vCenter activities run (its own task queue's
    vCenter twin). Deterministic: Temporal matches a replayed activity by its id
    and type, not by its task queue, so histories recorded with every activity on
    one queue replay."""
    return vcenter_task_queue(workflow.info().task_queue)


# vCenter calls: back off from 2 s to 30 s; each step's own deadline bounds the attempts.
VSPHERE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
# A long vCenter activity on a dead worker is retried this soon.
VSPHERE_HEARTBEAT = timedelta(seconds=10)

# Short local work (key generation, a few API calls): a crashed worker's attempt is
# retried after this, so it stays short.
LOCAL_WORK_TIMEOUT = timedelta(seconds=15)
LOCAL_WORK_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=5)

# An external etcd on a delete: each try walks the endpoints (5 s to connect to each,
# 30 s for the delete itself); 5 tries 2-16 s apart, then the delete finishes and
# says which keys were left.
ETCD_CALL_TIMEOUT = timedelta(minutes=2)
ETCD_RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0, maximum_attempts=5)

# A node's own kubeadm bootstrap token: valid this long, served again to the node's
# repeats only while it stays valid at least JOIN_TOKEN_MARGIN.
JOIN_TOKEN_TTL = timedelta(minutes=15)
JOIN_TOKEN_MARGIN = timedelta(minutes=5)
# The credential node workflows install join tokens with outlives a bootstrap window by this.
JOIN_ACCESS_SLACK = timedelta(minutes=15)

# The cluster's API server: it may be briefly unreachable while a VIP moves.
# One call to the cluster's API server; a longer wait (a drain) heartbeats instead.
KUBE_CALL_TIMEOUT = timedelta(seconds=20)
KUBE_HEARTBEAT = timedelta(seconds=10)
KUBE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=15),
)

# Node workflows started by activity: so many per activity (each input a few KB), each
# start a quick call; their awaiting activity heartbeats and outlives a bootstrap window.
NODE_STARTS_PER_ACTIVITY = 50
NODE_START_ACTIVITIES = 4  # start activities in flight at once
# Node workflows that ended are settled at most so many per workflow task: 900 at
# once made a task outlast its 10 s timeout on a loaded worker.
NODE_OUTCOMES_PER_ROUND = 100
NODE_STARTS_TIMEOUT = timedelta(minutes=2)
NODE_WORKFLOWS_HEARTBEAT = timedelta(seconds=30)
NODE_WORKFLOWS_SLACK = timedelta(minutes=5)
