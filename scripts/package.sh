#!/usr/bin/env bash
# Builds the native host's release artefacts into dist/:
#   dist/peercache_VERSION_ARCH.deb           (cargo-deb) the host in /usr/bin and its
#                                             manifest in every browser's system-wide dir
#   dist/peercache-host-VERSION-TARGET.tar.gz the host, install.sh and the README, for
#                                             other Linux systems (and macOS, built there)
# Then checks them: scripts/check-packages.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)
target=$(rustc -vV | awk '/^host:/{print $2}')

echo "package: cargo build --release -p peercache-host"
cargo build --release -p peercache-host
bin=target/release/peercache-host

# The system-wide manifests, from the same browser table `install` uses.
rm -rf target/pkg && mkdir -p target/pkg/root dist
"$bin" install --system --stage-root target/pkg/root --host-path /usr/bin/peercache-host >/dev/null

echo "package: cargo deb"
cargo deb -p peercache-host --no-build --no-strip -o dist/ >/dev/null

name=peercache-host-$version-$target
mkdir -p "target/pkg/$name"
cp "$bin" scripts/install-host.sh README.md "target/pkg/$name/"
mv "target/pkg/$name/install-host.sh" "target/pkg/$name/install.sh"
tar -C target/pkg -czf "dist/$name.tar.gz" "$name"
ls -l dist/*.deb "dist/$name.tar.gz"
