#!/bin/bash
# Runs the RFC 9111 conformance suite http-tests/cache-tests (cache-tests.fyi)
# against `peercache-server --upstream` and nginx (stock proxy_cache config) in
# the same run, and prints the required tests each passed.
#
# Usage: scripts/cache-tests.sh CACHE_TESTS_CHECKOUT [PEERCACHE_SERVER_BIN]
# The checkout needs `npm install --omit=dev undici@7` once; nginx from apt.
# Ports 18000 (the suite's origin), 18002 (peercache), 18003 (nginx).
set -u
CT=$(realpath "${1:?path to a cache-tests checkout}")
BIN=$(realpath "${2:-target/debug/peercache-server}")
W=$(mktemp -d /tmp/cache-tests-run.XXXXXX)
mkdir -p "$W/nginx-cache/tmp"
# nginx workers (www-data) write the cache: mktemp made the directory 0700.
chmod 755 "$W"; chmod -R 777 "$W/nginx-cache"
cat > "$CT/.peercache-count.mjs" <<'JS'
// Counts required passes (dependencies honoured) in a result JSON.
import fs from 'fs'
import tests from './tests/index.mjs'
import { determineTestResult, resultTypes } from './test-engine/lib/results.mjs'
const results = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'))
let required = 0; let passed = 0; const failed = []
for (const suite of tests) {
  for (const test of suite.tests) {
    if (test.kind !== undefined && test.kind !== 'required') continue
    required++
    const r = determineTestResult(tests, test.id, results)
    if (r === resultTypes.pass) passed++; else failed.push(`${test.id} ${r[2]} ${JSON.stringify(results[test.id])}`)
  }
}
console.log(`${passed} of ${required}`)
fs.writeFileSync(process.argv[3], failed.join('\n') + '\n')
JS
cd "$CT"
npm_config_protocol=http npm_config_port=18000 npm_config_pidfile="$W/origin.pid" \
  node test-engine/server/server.mjs > "$W/origin.log" 2>&1 &
ORIGIN=$!
cat > "$W/nginx.conf" <<NG
worker_processes 1;
pid $W/nginx.pid;
error_log $W/nginx-error.log;
events { worker_connections 2048; }
http {
  access_log off;
  client_body_temp_path $W/nginx-cache/body;
  proxy_cache_path $W/nginx-cache levels=1:2 keys_zone=my-cache:8m max_size=1000m inactive=600m;
  proxy_temp_path $W/nginx-cache/tmp;
  server {
    listen 127.0.0.1:18003;
    location / {
      proxy_pass http://127.0.0.1:18000;
      proxy_cache my-cache;
      proxy_cache_revalidate on;
      proxy_http_version 1.1;
    }
  }
}
NG
nginx -c "$W/nginx.conf" -e "$W/nginx-error.log"
RUST_LOG=warn "$BIN" --upstream http://127.0.0.1:18000 --listen 127.0.0.1:18002 \
  --upstream-cache "$W/pc-cache" --no-relay --ping-interval 0s > "$W/pc.log" 2>&1 &
PC=$!
sleep 2
for target in peercache:18002 nginx:18003; do
  name=${target%%:*}; port=${target##*:}
  npm_config_base=http://127.0.0.1:$port npm_config_id= npm_package_config_id= \
    node --no-warnings test-engine/cli.mjs > "$W/$name.json" 2> "$W/$name.err"
done
P=$(node .peercache-count.mjs "$W/peercache.json" "$W/peercache-failed.txt")
N=$(node .peercache-count.mjs "$W/nginx.json" "$W/nginx-failed.txt")
echo "required tests passed: peercache $P / nginx $N (details in $W)"
kill "$PC" "$ORIGIN"; kill "$(cat "$W/nginx.pid")"; rm -f .peercache-count.mjs
