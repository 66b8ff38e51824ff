#!/usr/bin/env bash
# `peercache-bench peer-serving` at a visitor's uplink (issue 12's caps: 40 Mbit/s
# up): the whole benchmark runs in a network namespace of its own whose
# loopback is capped by `tc` (tbf) at that rate, with an internet MTU (1500).
# Every transfer there (nginx, the peer, the plain GET, the verified fetch)
# crosses the same cap, so the ratios say whether peercache keeps up with a
# static web server on a home uplink; the uncapped run on loopback
# (`peercache-bench peer-serving`) says what each costs in CPU.
# Needs root (ip netns, tc) and the release binaries:
#   cargo build --release --bins -p peercache-server -p peercache-host -p peercache-tests
# Rate: RATE=100mbit scripts/bench-peer-serving-capped.sh. Takes ~14 min at 40 Mbit/s.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${RATE:-40mbit}
ns=pcbench-serve-$$
ip netns add "$ns"
trap 'ip netns del "$ns"' EXIT
ip -n "$ns" link set lo mtu 1500
ip -n "$ns" link set lo up
# A burst well above one packet: a tbf bucket smaller than a packet never sends it.
ip netns exec "$ns" tc qdisc add dev lo root tbf rate "$rate" burst 256kb latency 50ms
echo "loopback of namespace $ns capped at $rate (tbf), MTU 1500"
ip netns exec "$ns" ./target/release/peercache-bench peer-serving
