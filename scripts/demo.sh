#!/usr/bin/env bash
# The demo: a coordination server with the embedded (in-memory) look-up table,
# capped at 8 MiB/s, serves a 32 MiB file; five clients fetch it one after the
# other and each then serves it to the next. Prints where every client's bytes
# came from and the server's offload, then keeps the server and the peers up
# (admin page included) until Ctrl-C when run from a terminal.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --demo
echo "building (release; the first build takes several minutes, later ones seconds)…"
cargo build --release --bins
bin=target/release

work=$(mktemp -d /tmp/peercache-demo.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

mkdir -p "$work/site/static"
head -c $((32 << 20)) /dev/urandom > "$work/site/static/video.bin"
echo '<!doctype html><title>demo</title><a href="/static/video.bin">video</a>' > "$work/site/index.html"

"$bin/peercache-server" --root "$work/site" --listen 127.0.0.1:0 --egress-limit 8MiB --target-period 1s \
  > "$work/server.out" 2> "$work/server.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "listening on" "$work/server.out" 2>/dev/null && break; sleep 0.1; done
server="http://$(sed -n 's/^listening on //p' "$work/server.out")"
admin="http://$(sed -n 's/^admin on //p' "$work/server.out")"
echo "server: $server (admin page, on the operator listener: $admin/admin)"

for i in 1 2 3 4 5; do
  t0=$(date +%s.%N)
  msg=$(RUST_LOG=warn "$bin/peercache-host" fetch --server "$server" /static/video.bin \
        -o "$work/out$i" --cache "$work/peer$i" --state "$work/peer$i-state" 2>&1 | tail -n 1)
  t1=$(date +%s.%N)
  cmp -s "$work/out$i" "$work/site/static/video.bin" || { echo "client $i: bytes differ!"; exit 1; }
  printf 'client %d: %s (%.1f s, verified)\n' "$i" "${msg%% into *}" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
  RUST_LOG=warn "$bin/peercache-host" serve --server "$server" --cache "$work/peer$i" --state "$work/peer$i-state" --listen 127.0.0.1:0 \
    > "$work/peer$i.out" 2> "$work/peer$i.log" &
  pids+=($!)
  for _ in $(seq 100); do grep -q "announced" "$work/peer$i.out" 2>/dev/null && break; sleep 0.1; done
done

metrics=$(curl -s "$admin/metrics")
value() { echo "$metrics" | awk -v n="$1" '$1 == n {print $2}'; }
served=$(value peercache_served_bytes_total)
from_peers=$(value peercache_reported_from_peers_bytes_total)
echo
echo "bytes sent by the server:    ${served:-0}"
echo "bytes clients got from peers: ${from_peers:-0}"
echo "referrals: $(value peercache_requests_referred_total), served directly: $(value peercache_requests_served_total)"
awk -v s="${served:-0}" -v p="${from_peers:-0}" 'BEGIN { if (s + p > 0) printf "offload: %.0f%% of the bytes came from peers\n", 100 * p / (s + p) }'

echo
if [ -t 0 ] && [ -z "${PEERCACHE_DEMO_EXIT:-}" ]; then
  echo "the server and the five peers keep running: open $admin/admin"
  echo "press Ctrl-C to stop"
  trap 'echo; echo stopping; exit 0' INT
  while :; do sleep 3600 & wait $!; done
fi
