#!/bin/bash
# pke-vsphere node bootstrap: rendered into every node's cloud-config.
# Talks to the pke-vsphere node API with this node's token, then runs `pke install`.
# Its progress goes to stdout (cloud-init-output.log), one "pke-vsphere: ..." line a step.
set -euo pipefail
# Every path is under $PKE_VSPHERE_ROOT: empty on a node; the simulated nodes run
# this very script, unprivileged, each under a directory of its own.
ROOT="${PKE_VSPHERE_ROOT:-}"
# The base of the pause between asking again (seconds; each pause is 1-2 times it).
RETRY_SECONDS="${PKE_VSPHERE_RETRY_SECONDS:-5}"
. "$ROOT/etc/pke-vsphere/node.env"
TOKEN_FILE="$ROOT/etc/pke-vsphere/token"
INSTALL_LOG="$ROOT/var/log/pke-vsphere-install.log"

# The credentials of every call, in a file curl reads (-H @file): never on a command
# line. The node key is drawn here and kept only in /run (memory): the first call
# binds this node's bootstrap to it, so a token read from guestinfo by anyone else
# gets nothing. Both end with the report.
install -d -m 0700 "$ROOT/run/pke-vsphere"
HEADERS="$ROOT/run/pke-vsphere/api-headers"
(
  umask 077
  printf 'Authorization: Bearer %s\n' "$(tr -d '\n' < "$TOKEN_FILE")" > "$HEADERS"
  printf 'X-PKE-Node-Key: %s\n' "$(head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')" >> "$HEADERS"
)
forget_credentials() { rm -f "$TOKEN_FILE" "$HEADERS"; }
say() { echo "pke-vsphere: $*"; }
pause() { awk -v b="$RETRY_SECONDS" -v r="$RANDOM" 'BEGIN { printf "%.2f", b * (1 + r / 32767) }'; }

api() { # METHOD PATH [JSON]
  curl --fail-with-body --silent --show-error --max-time __NODE_REQUEST_SECONDS__ \
    ${PKE_VSPHERE_NODE_API_CA:+--cacert "$ROOT$PKE_VSPHERE_NODE_API_CA"} \
    -X "$1" -H @"$HEADERS" -H "Content-Type: application/json" \
    ${3:+--data "$3"} "$PKE_VSPHERE_NODE_API$2"
}
report() { # KIND [ADDRESS|MESSAGE]: the one report of this bootstrap; retried while the orchestrator is busy
  local body
  body="$(python3 -c 'import json,sys; k, v = sys.argv[1], sys.argv[2]; print(json.dumps({"kind": k, ("message" if k == "failed" else "address"): v}))' "$1" "${2:-}")"
  for _ in $(seq 20); do
    if api POST /v1/nodes/self/report "$body" > /dev/null; then say "reported $1"; break; fi
    sleep "$(pause)"
  done
  forget_credentials
}
report_failure() { # LINE EXIT: the failure, with the last line pke install wrote
  trap - ERR
  local msg detail
  msg="$(printf 'bootstrap failed at line %s (exit %s)' "$1" "$2")"
  detail="$(tail -n 1 "$INSTALL_LOG" 2>/dev/null | cut -c1-300 || true)"
  report failed "$msg${detail:+: $detail}" || true
}
trap 'report_failure $LINENO $?' ERR
json() { # KEY.PATH: print one string of the JSON document on stdin; fails if it is absent or null
  python3 -c 'import functools,json,sys; v = functools.reduce(lambda d, k: d[k], sys.argv[1].split("."), json.load(sys.stdin)); sys.exit(f"{sys.argv[1]} is null") if v is None else print(v)' "$1"
}
has() { # KEY.PATH: whether the JSON document on stdin holds a value there (absent or null: no)
  python3 -c 'import functools,json,sys; sys.exit(functools.reduce(lambda d, k: (d or {}).get(k), sys.argv[1].split("."), json.load(sys.stdin)) is None)' "$1"
}
fetch() { # PATH: GET it, retrying while the orchestrator answers "not now" (409, 503) or not at all
  local body
  for _ in $(seq 60); do
    if body="$(api GET "$1")"; then printf '%s\n' "$body"; return 0; fi
    sleep "$(pause)"
  done
  return 1
}
own_address() { # ADDRESS: fail unless one of this node's interfaces holds it
  ip -o -4 addr show | awk '{print $4}' | grep -qx "${1//./\\.}/[0-9]*" && return 0
  echo "the orchestrator's address for this node, $1, is on none of its interfaces" >&2
  return 1
}

# --- the bootstrap ---
# This node's address is the one VMware Tools reported on the NIC of the cluster's
# network, as the orchestrator saw it (the node API says which), not whatever a
# default route would pick on a multi-NIC node or a network without one.
if [ "$PKE_VSPHERE_KIND" != worker ]; then
  material="$(fetch /v1/nodes/self/bootstrap)"
  say "fetched the bootstrap material"
  ADVERTISE_ADDRESS="$(echo "$material" | json node_address)"
  own_address "$ADVERTISE_ADDRESS"
  PKI="$ROOT/etc/kubernetes/pki"
  install -d -m 0700 "$PKI" "$PKI/etcd"
  umask 077
  echo "$material" | json pki.kubernetes_ca.cert_pem > "$PKI/ca.crt"
  echo "$material" | json pki.kubernetes_ca.key_pem > "$PKI/ca.key"
  if echo "$material" | has pki.etcd_ca; then # the masters run etcd
    echo "$material" | json pki.etcd_ca.cert_pem > "$PKI/etcd/ca.crt"
    echo "$material" | json pki.etcd_ca.key_pem > "$PKI/etcd/ca.key"
  fi
  if echo "$material" | has external_etcd; then # pke install --etcd-*-file
    echo "$material" | json external_etcd.certificate.ca_cert_pem > "$PKI/etcd/external-ca.crt"
    echo "$material" | json external_etcd.certificate.cert_pem > "$PKI/apiserver-etcd-client.crt"
    echo "$material" | json external_etcd.certificate.key_pem > "$PKI/apiserver-etcd-client.key"
  fi
  echo "$material" | json pki.front_proxy_ca.cert_pem > "$PKI/front-proxy-ca.crt"
  echo "$material" | json pki.front_proxy_ca.key_pem > "$PKI/front-proxy-ca.key"
  echo "$material" | json pki.service_account_key_pem > "$PKI/sa.key"
  echo "$material" | json pki.service_account_public_pem > "$PKI/sa.pub"
  if echo "$material" | has keepalived_conf; then
    keepalived_conf="$(echo "$material" | json keepalived_conf)"
    # The interface holding this node's address, unless the spec named one.
    VRRP_INTERFACE="$(ip -o -4 addr show | awk -v a="$ADVERTISE_ADDRESS/" 'index($4, a) == 1 {print $2; exit}')"
    install -d -m 0755 "$ROOT/etc/keepalived"
    echo "$keepalived_conf" | sed "s/@VRRP_INTERFACE@/$VRRP_INTERFACE/" > "$ROOT/etc/keepalived/keepalived.conf"
    systemctl enable --now keepalived
    say "started keepalived on $VRRP_INTERFACE"
  fi
fi

if [ "$PKE_VSPHERE_KIND" != leader ]; then
  join="$(fetch /v1/nodes/self/join)"
  say "fetched the join information"
  JOIN_TOKEN="$(echo "$join" | json token)"
  CA_CERT_HASH="$(echo "$join" | json ca_cert_hash)"
  API_ENDPOINT="$(echo "$join" | json api_endpoint)"
  ADVERTISE_ADDRESS="$(echo "$join" | json node_address)"
  own_address "$ADVERTISE_ADDRESS"
fi
API_PORT="$PKE_VSPHERE_API_PORT"
API_ENDPOINT="${API_ENDPOINT:-${PKE_VSPHERE_API_ENDPOINT:-$ADVERTISE_ADDRESS:$API_PORT}}"

install -d -m 0755 "$(dirname "$INSTALL_LOG")"
pke install __PKE_INSTALL_ARGS__ 2>&1 | tee -a "$INSTALL_LOG"
say "pke install finished"

if [ "$PKE_VSPHERE_KIND" = leader ]; then
  # Add-ons (MetalLB, the vSphere CSI driver): each release's own manifests, then
  # the objects the node API made for this cluster (the CSI Secret among them).
  export KUBECONFIG="$ROOT/etc/kubernetes/admin.conf"
  addons_file="$(umask 077; mktemp)"
  fetch /v1/nodes/self/addons > "$addons_file"
  python3 - "$addons_file" <<'PY'
import json, subprocess, sys
for addon in json.load(open(sys.argv[1]))["addons"]:
    kubectl = ["kubectl", "--request-timeout=60s"]
    def apply_objects():
        subprocess.run([*kubectl, "apply", "-f", "-"], input=addon["manifest"].encode(), check=True)
    if addon.get("objects_first"):
        apply_objects()
    selector = ["-l", addon["install_selector"]] if addon.get("install_selector") else []
    subprocess.run([*kubectl, "apply", "-f", addon["install_url"], *selector], check=True)
    subprocess.run([*kubectl, "wait", "--for=condition=Established", "crd", "--all", "--timeout=300s"], check=True)
    if addon["wait_for_release"]:
        subprocess.run([*kubectl, "-n", addon["namespace"], "wait", "--for=condition=Available",
                        "deployment", "--all", "--timeout=600s"], check=True)
    if not addon.get("objects_first"):
        apply_objects()
    print(f"pke-vsphere: applied add-on {addon['name']}@{addon['version']}", flush=True)
PY
  rm -f "$addons_file"
  report ready "$ADVERTISE_ADDRESS"
else
  report joined "$ADVERTISE_ADDRESS"
fi
