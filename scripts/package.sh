#!/usr/bin/env bash
# Builds the native host's release artefacts into dist/:
#   dist/peercache_VERSION_ARCH.deb           (cargo-deb) the host in /usr/bin and its
#                                             manifest in every browser's system-wide dir
#   dist/peercache-VERSION-1.ARCH.rpm          (cargo-generate-rpm) the same files, for
#                                             Fedora, RHEL, openSUSE
#   dist/peercache-host-VERSION-TARGET.tar.gz the host, install.sh and the README, for
#                                             other Linux systems (and macOS, built there)
# Then checks them: scripts/check-packages.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(awk -F'"' '/^version = /{print $2; exit}' Cargo.toml)
target=$(rustc -vV | awk '/^host:/{print $2}')

# PEERCACHE_PACKAGE_PROFILE=dev packages the debug build (what the test command
# already built) so CI checks the packaging without a second, release build.
profile=${PEERCACHE_PACKAGE_PROFILE:-release}
if [ "$profile" = dev ]; then
  echo "package: cargo build -p peercache-host (dev profile, for the checks)"
  cargo build -q -p peercache-host
  bin=target/debug/peercache-host
else
  echo "package: cargo build --release -p peercache-host"
  cargo build --release -p peercache-host
  bin=target/release/peercache-host
fi

# The system-wide manifests, from the same browser table `install` uses.
rm -rf target/pkg && mkdir -p target/pkg/root dist
"$bin" install --system --stage-root target/pkg/root --host-path /usr/bin/peercache-host >/dev/null

# One stripped copy of the host for the .rpm and the archive.
mkdir -p target/pkg/bin
cp "$bin" target/pkg/bin/peercache-host
strip -s target/pkg/bin/peercache-host

echo "package: cargo deb"
if [ "$profile" = dev ]; then
  # Stripped: the debug build's symbols would make a 300 MB package.
  cargo deb -p peercache-host --no-build --profile dev --fast -o dist/ >/dev/null 2>&1
else
  cargo deb -p peercache-host --no-build --no-strip -o dist/ >/dev/null
fi

echo "package: cargo generate-rpm"
rm -f dist/peercache-*.rpm
cargo generate-rpm -p native-host -o dist/ >/dev/null

name=peercache-host-$version-$target
mkdir -p "target/pkg/$name"
cp target/pkg/bin/peercache-host scripts/install-host.sh README.md "target/pkg/$name/"
mv "target/pkg/$name/install-host.sh" "target/pkg/$name/install.sh"
tar -C target/pkg -czf "dist/$name.tar.gz" "$name"
ls -l dist/*.deb dist/*.rpm "dist/$name.tar.gz"
