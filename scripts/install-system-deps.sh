#!/usr/bin/env bash
# Debian packages the project needs: Go, govmomi's source and patch (the vCenter
# simulator build) and keepalived (the tests check every rendered configuration
# with `keepalived --config-test`) and etcd (the external-etcd topology is tested
# against a real etcd server with client-certificate authentication), and curl and
# python3 (the simulated nodes run the real bootstrap script, which uses both), and
# docker-compose (the tests validate docker-compose.temporal.yml with `docker-compose
# config`, which needs no Docker engine).
# Installs only what is missing; runs apt-get update once first.
set -euo pipefail
packages=(golang-go golang-github-vmware-govmomi-dev patch keepalived etcd-server curl python3 docker-compose)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "need the Debian packages: ${missing[*]} (no apt-get here)" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
