"""pke-vsphere: PKE Kubernetes clusters on VMware vSphere, driven by Temporal workflows.

The Temporal-facing code is at the top of the source tree (``workflows``, ``activities``,
``worker``, ``starter``); this package holds everything they stand on:

- ``contracts``: the pydantic models of every call boundary and the protocol's names;
- ``config``: settings and credential files;
- ``vsphere``, ``kube``, ``etcd``: the adapters to vCenter, the cluster's API and external etcd;
- ``render``: cloud-init, the bootstrap script, keepalived and the add-on manifests (pure);
- ``pki``: the cluster's certificates and the node tokens;
- ``codec``: payload encryption and its codec server;
- ``nodeapi``: the HTTP API booting nodes call;
- ``runtime``: the Temporal client, logging, binaries and crash points.
"""
