"""A node's cloud-config: host name, the ``pke`` user, the node API URL and the
node's own token, and the bootstrap script that runs ``pke install``.

The token is the only credential a node gets here, and it works only while the
node bootstraps; once the node reported, the orchestrator takes it out of the
VM's guestinfo (:func:`without_token`). vCenter credentials and cluster keys
never enter a cloud-config (masters fetch the CAs from the node API).
"""

from __future__ import annotations

import shlex
from importlib import resources

import yaml

from pke_vsphere.contracts.messages import NodeBootstrapSettings
from pke_vsphere.contracts.protocol import NODE_REQUEST_SECONDS
from pke_vsphere.contracts.state import NodeIdentity
from pke_vsphere.render import pke

CONFIG_DIR = "/etc/pke-vsphere"
ENV_FILE = f"{CONFIG_DIR}/node.env"
TOKEN_FILE = f"{CONFIG_DIR}/token"
SCRIPT_FILE = f"{CONFIG_DIR}/bootstrap.sh"
NODE_API_CA_FILE = f"{CONFIG_DIR}/node-api-ca.pem"
BOOTSTRAP_USER = "pke"


def spec_sources(settings: NodeBootstrapSettings) -> dict[str, int]:
    """How many bytes each spec field that can grow without bound adds to a node's
    cloud-config (for the guestinfo size check's message)."""
    return {
        "ssh_authorized_keys": sum(len(k.encode()) for k in settings.ssh_authorized_keys),
        "control_plane.dns_name": sum(len(s.encode()) for s in settings.api_server_cert_sans),
        "control_plane.external_etcd.endpoints": sum(len(e.encode()) for e in settings.etcd_endpoints),
    }


def bootstrap_script(identity: NodeIdentity, settings: NodeBootstrapSettings) -> str:
    template = resources.files("pke_vsphere.render").joinpath("script.sh").read_text()
    return template.replace("__PKE_INSTALL_ARGS__", " ".join(pke.install_args(identity, settings))).replace(
        "__NODE_REQUEST_SECONDS__", str(NODE_REQUEST_SECONDS)
    )


def node_env(
    identity: NodeIdentity, settings: NodeBootstrapSettings, node_api_url: str, verify_with_ca: bool = False
) -> str:
    values = {
        "PKE_VSPHERE_NODE_API": node_api_url.rstrip("/"),
        "PKE_VSPHERE_CLUSTER": identity.cluster,
        "PKE_VSPHERE_NODE": identity.name,
        "PKE_VSPHERE_POOL": identity.pool,
        "PKE_VSPHERE_KIND": identity.kind.value,
        "PKE_VSPHERE_API_PORT": str(settings.api_port),
    }
    if settings.api_endpoint:
        values["PKE_VSPHERE_API_ENDPOINT"] = settings.api_endpoint
    if verify_with_ca:
        values["PKE_VSPHERE_NODE_API_CA"] = NODE_API_CA_FILE
    # Sourced by the script: every value one shell word, whatever it holds.
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


# libyaml's safe loader and dumper when PyYAML has them (its wheels do): the pure
# Python ones spent most of a worker's CPU on a thousand nodes' cloud-configs.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _dump(config: object) -> str:
    return str(yaml.dump(config, Dumper=_DUMPER, sort_keys=False, width=1000))


def render(
    identity: NodeIdentity,
    settings: NodeBootstrapSettings,
    *,
    node_api_url: str,
    node_token: str | None,
    node_api_ca_pem: str | None = None,
) -> str:
    """The ``#cloud-config`` document for one node; with ``node_token`` None, the one
    its guestinfo keeps once the node has its address (:func:`without_token`)."""

    def file(path: str, permissions: str, content: str) -> dict[str, str]:
        return {"path": path, "permissions": permissions, "owner": "root:root", "content": content}

    files = [file(ENV_FILE, "0644", node_env(identity, settings, node_api_url, node_api_ca_pem is not None))]
    if node_token is not None:
        files.append(file(TOKEN_FILE, "0600", node_token))
    files.append(file(SCRIPT_FILE, "0755", bootstrap_script(identity, settings)))
    if node_api_ca_pem is not None:
        # A public certificate: how the node knows it talks to this orchestrator.
        files.append(file(NODE_API_CA_FILE, "0644", node_api_ca_pem))
    config = {
        "hostname": identity.name,
        "fqdn": identity.name,
        "prefer_fqdn_over_hostname": False,
        "manage_etc_hosts": True,
        "users": [
            {
                "name": BOOTSTRAP_USER,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
                "lock_passwd": True,
                # cloud-init's schema wants at least one key when the list is there.
                **({"ssh_authorized_keys": list(keys)} if (keys := settings.ssh_authorized_keys) else {}),
            }
        ],
        "write_files": files,
        "runcmd": [[SCRIPT_FILE]],
    }
    return "#cloud-config\n" + _dump(config)


def without_token(document: str) -> str:
    """The cloud-config with the node's token file taken out: what guestinfo keeps
    once the node bootstrapped (cloud-init runs once per instance, so a reboot
    needs nothing from it). The same document when it holds no token."""
    config = parse(document)
    files = config.get("write_files")
    if not isinstance(files, list):
        return document
    kept = [f for f in files if not (isinstance(f, dict) and f.get("path") == TOKEN_FILE)]
    if len(kept) == len(files):
        return document
    config["write_files"] = kept
    return "#cloud-config\n" + _dump(config)


def parse(document: str) -> dict[str, object]:
    """Parse a cloud-config back (tests and the simulated nodes use this)."""
    if not document.startswith("#cloud-config\n"):
        raise ValueError("not a cloud-config document")
    parsed = yaml.load(document, Loader=_LOADER)  # noqa: S506 - a safe loader (libyaml's)
    if not isinstance(parsed, dict):
        raise ValueError("cloud-config is not a mapping")
    return parsed


def written_file(config: dict[str, object], path: str) -> str:
    files = config.get("write_files")
    if isinstance(files, list):
        for entry in files:
            if isinstance(entry, dict) and entry.get("path") == path:
                return str(entry["content"])
    raise KeyError(path)
