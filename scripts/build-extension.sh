#!/usr/bin/env bash
# Builds the extension from the root manifest.json, extension/ and the wasm
# brain (wasm/):
#   dist/chromium/, dist/firefox/   to load unpacked (Chromium's keeps the `key`,
#                                   so its id is the development id the host allows)
#   dist/peercache-chromium.zip     for the Chrome Web Store (no `key`)
#   dist/peercache-firefox.zip/.xpi for addons.mozilla.org (signing happens there)
set -euo pipefail
cd "$(dirname "$0")/.."

want=$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
  echo "wasm-bindgen-cli $want is needed (found: ${have:-none}); run: cargo install wasm-bindgen-cli --version $want" >&2
  exit 1
fi

cargo build -q -p peercache-wasm --target wasm32-unknown-unknown --release
wasm=target/wasm32-unknown-unknown/release/peercache_wasm.wasm

for browser in chromium firefox; do
  out=dist/$browser
  rm -rf "$out"
  mkdir -p "$out/wasm"
  cp extension/*.js extension/*.html extension/*.css "$out/"
  cp -r extension/icons "$out/"
  if [ "$browser" = chromium ]; then cp extension/managed_schema.json "$out/"; fi
  wasm-bindgen --target web --no-typescript --out-dir "$out/wasm" "$wasm"
  node scripts/package-manifest.mjs "$browser" manifest.json > "$out/manifest.json"
  if [ "$browser" = chromium ]; then
    # The store package: the same files, the manifest without `key`.
    store=dist/chromium-store
    rm -rf "$store" && cp -r "$out" "$store"
    node scripts/package-manifest.mjs chromium-store manifest.json > "$store/manifest.json"
    (cd "$store" && rm -f ../peercache-chromium.zip && python3 -m zipfile -c ../peercache-chromium.zip ./* >/dev/null)
    rm -rf "$store"
  else
    (cd "$out" && rm -f "../peercache-$browser.zip" && python3 -m zipfile -c "../peercache-$browser.zip" ./* >/dev/null)
  fi
done
# Firefox installs an .xpi directly (about:addons → Install Add-on From File); AMO takes either.
cp dist/peercache-firefox.zip dist/peercache-firefox.xpi
echo "built dist/chromium and dist/firefox ($(du -b dist/chromium/wasm/peercache_wasm_bg.wasm | cut -f1) bytes of wasm)"
