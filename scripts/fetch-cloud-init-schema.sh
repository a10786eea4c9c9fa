#!/usr/bin/env bash
# cloud-init's own JSON schema for cloud-config, taken from Debian's cloud-init
# package without installing it (the tests validate every rendered cloud-config
# against it). Writes .state/cloud-init/schema-cloud-config-v1.json once.
set -euo pipefail
dest=.state/cloud-init
schema=$dest/schema-cloud-config-v1.json
[ -s "$schema" ] && exit 0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
chmod a+rwx "$work"  # apt downloads as its own user
(cd "$work" && apt-get download cloud-init >/dev/null)
dpkg-deb -x "$work"/cloud-init_*.deb "$work/root"
mkdir -p "$dest"
cp "$work"/root/usr/lib/python3/dist-packages/cloudinit/config/schemas/schema-cloud-config-v1.json "$schema"
dpkg-deb -f "$work"/cloud-init_*.deb Version > "$dest/VERSION"
echo "cloud-init schema: $schema ($(cat "$dest/VERSION"))"
