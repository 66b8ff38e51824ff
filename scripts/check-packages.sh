#!/usr/bin/env bash
# Checks the artefacts scripts/package.sh built, without a container:
# - the .deb unpacked into a throw-away root (dpkg -x) holds the host and, in
#   every browser's system-wide directory, a manifest naming /usr/bin/peercache-host
#   and allowing peercache's extension; the unpacked host runs;
# - the .rpm likewise, installed by the rpm tool into a throw-away root with its
#   own package database (Firefox's lib64 directory as well);
# - the archive's install.sh, run with a throw-away HOME and a browser on PATH,
#   installs the host and registers it for that browser.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

# A native-messaging manifest naming /usr/bin/peercache-host and peercache's extension.
check_manifest() {
  python3 - "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
assert m["name"] == "org.peercache.host", m
assert m["path"] == "/usr/bin/peercache-host", m
assert m["type"] == "stdio", m
ids = m.get("allowed_origins", []) + m.get("allowed_extensions", [])
assert "chrome-extension://fmfjkafobffmfmdigggcgcdafihpelgn/" in ids or "peercache@peercache.org" in ids, m
PY
}

deb=$(ls -t dist/peercache_*.deb | head -1)
dpkg -x "$deb" "$root/deb"
"$root/deb/usr/bin/peercache-host" --version
for dir in etc/opt/chrome etc/chromium etc/opt/edge etc/brave usr/lib/mozilla; do
  check_manifest "$root/deb/$dir/native-messaging-hosts/org.peercache.host.json"
  echo "deb: $dir/native-messaging-hosts/org.peercache.host.json"
done
# The package database agrees: dpkg lists every manifest as the package's.
dpkg --contents "$deb" | grep -c 'native-messaging-hosts/org.peercache.host.json' | grep -qx 5

# The .rpm, installed by the rpm tool into a throw-away root (its own
# database; no dependencies or scripts, as the root has no system).
rpmfile=$(ls -t dist/peercache-*.rpm | head -1)
rpm -K "$rpmfile" 2>/dev/null | grep -q 'digests OK'
rpm --root "$root/rpm" --initdb
rpm --root "$root/rpm" -i --nodeps --noscripts "$rpmfile" 2> "$root/rpm.err" || { cat "$root/rpm.err"; exit 1; }
rpm --root "$root/rpm" -q peercache 2>/dev/null
rpm --root "$root/rpm" -ql peercache 2>/dev/null > "$root/rpm.list"
"$root/rpm/usr/bin/peercache-host" --version
for dir in etc/opt/chrome etc/chromium etc/opt/edge etc/brave usr/lib/mozilla usr/lib64/mozilla; do
  grep -qx "/$dir/native-messaging-hosts/org.peercache.host.json" "$root/rpm.list"
  check_manifest "$root/rpm/$dir/native-messaging-hosts/org.peercache.host.json"
  echo "rpm: $dir/native-messaging-hosts/org.peercache.host.json"
done

tarball=$(ls -t dist/peercache-host-*.tar.gz | head -1)
mkdir -p "$root/tar" "$root/home" "$root/bin"
tar -C "$root/tar" -xzf "$tarball"
printf '#!/bin/sh\n' > "$root/bin/chromium" && chmod +x "$root/bin/chromium"
HOME="$root/home" XDG_DATA_HOME="$root/home/.local/share" PATH="$root/bin:/usr/bin:/bin" \
  sh "$root"/tar/peercache-host-*/install.sh > "$root/install.log" 2>&1 || { cat "$root/install.log"; exit 1; }
test -x "$root/home/.local/bin/peercache-host"
manifest="$root/home/.config/chromium/NativeMessagingHosts/org.peercache.host.json"
grep -q "\"$root/home/.local/bin/peercache-host\"" "$manifest" || { cat "$root/install.log"; exit 1; }
grep -q "registered for Chromium" "$root/install.log"
echo "tar.gz: install.sh installed the host and registered it for Chromium"
