"""Talking to a cluster's Kubernetes API with lightkube: TLS verified against
the cluster CA the orchestrator generated, authenticated by a short-lived admin
client certificate minted from that CA (no kubeconfig is copied off a node)."""
