#!/usr/bin/env bash
# Installs what building and testing peercache needs on a fresh Debian machine,
# skipping whatever is already there. Idempotent. Needs root for apt.
#   scripts/setup.sh          everything (browsers included)
#   scripts/setup.sh --demo   only what the demo needs
set -euo pipefail
cd "$(dirname "$0")/.."

demo_only=false
[ "${1:-}" = "--demo" ] && demo_only=true

need_apt=()
command -v openssl >/dev/null || need_apt+=(openssl)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v nft >/dev/null || $demo_only || need_apt+=(nftables)
command -v curl >/dev/null || need_apt+=(curl)
command -v redis-server >/dev/null || $demo_only || need_apt+=(redis-server)
if ! $demo_only; then
  [ -x /usr/lib/chromium/chromium ] || need_apt+=(chromium)
  command -v firefox-esr >/dev/null || need_apt+=(firefox-esr)
  command -v node >/dev/null || need_apt+=(nodejs npm)
  # The Windows cross-check compiles C in ring's and aws-lc-sys's build scripts.
  command -v x86_64-w64-mingw32-gcc >/dev/null || need_apt+=(gcc-mingw-w64-x86-64-posix)
  command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
  # The .rpm's check installs it with the rpm tool into a throw-away root.
  command -v rpm >/dev/null || need_apt+=(rpm)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: apt-get install ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if $demo_only; then
  exit 0
fi

for t in wasm32-unknown-unknown x86_64-pc-windows-gnu x86_64-apple-darwin; do
  rustup target list --installed | grep -qx "$t" || rustup target add "$t"
done

want=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "setup: cargo install wasm-bindgen-cli $want (about 4 minutes)"
  cargo install -q wasm-bindgen-cli --version "$want"
fi

# The .deb (scripts/package.sh); about 1.5 minutes of CPU to build.
if ! cargo deb --version >/dev/null 2>&1; then
  echo "setup: cargo install cargo-deb (about 2 minutes)"
  cargo install -q --locked cargo-deb --version 3.8.0
fi
if [ "$(cargo generate-rpm --version 2>/dev/null | awk '{print $2}')" != 0.21.1 ]; then
  echo "setup: cargo install cargo-generate-rpm (about 2 minutes)"
  cargo install -q --locked cargo-generate-rpm --version 0.21.1
fi

if [ ! -d tests/e2e/node_modules/playwright-core ] || [ ! -x tests/e2e/node_modules/.bin/web-ext ]; then
  (cd tests/e2e && npm ci --silent --no-audit --no-fund)
fi
