#!/usr/bin/env bash
# Runs every check and test: formatting, lints, unit and property tests, the
# integration tests with real processes, the wasm tests under Node, the
# extension's JS modules under Node, and the end-to-end tests in real headless
# browsers. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - start ))s)"; }

step setup
scripts/setup.sh

step "cargo fmt --check"
cargo fmt --all --check

step "no import circles between modules"
python3 scripts/check-module-cycles.py

step "cargo clippy"
cargo clippy --workspace --all-targets -q -- -D warnings

step "cargo doc (broken links and HTML are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q

step "the host and its tests build for Windows (cargo clippy, x86_64-pc-windows-gnu)"
cargo clippy -q -p peercache-host --all-targets --target x86_64-pc-windows-gnu -- -D warnings

# No macOS SDK here: the crypto crates' C is stood in for (see the script);
# the Rust code under target_os = "macos" is checked, nothing is linked.
step "the host and its tests build for macOS (cargo clippy, x86_64-apple-darwin)"
CC_x86_64_apple_darwin="$PWD/scripts/cc-without-sdk" AR_x86_64_apple_darwin=ar \
  cargo clippy -q -p peercache-host --all-targets --target x86_64-apple-darwin -- -D warnings

step "build binaries"
cargo build -q --bins

step "unit, property and integration tests"
cargo test -q --workspace

step "wasm tests (wasm-bindgen-test under Node)"
cargo test -p peercache-wasm --target wasm32-unknown-unknown --test brain

step "build the extension"
scripts/build-extension.sh

step "web-ext lint of the Firefox package (no errors)"
(cd tests/e2e && node_modules/.bin/web-ext lint --source-dir ../../dist/firefox --output=text)

step "packages: .deb, .rpm and tar.gz (of the debug build), checked in a throw-away root"
PEERCACHE_PACKAGE_PROFILE=dev scripts/package.sh
scripts/check-packages.sh

step "extension modules under Node (node --test, against the built wasm brain)"
node --test extension/test/*.test.mjs

step "end to end in headless browsers"
if [ "$(id -u)" -ne 0 ]; then
  echo "the end-to-end tests create network namespaces and must run as root" >&2
  exit 1
fi
# PEERCACHE_SCREENSHOTS: the tests also write the screenshots in docs/ (README).
(cd tests/e2e && PEERCACHE_SCREENSHOTS=1 node --test --test-concurrency=1 --test-timeout=600000 ./*.test.mjs)

step "all passed"
