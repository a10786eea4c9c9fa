"""An etcd cluster outside the Kubernetes cluster (the external-etcd topology):
its client certificates and its v3 API."""
