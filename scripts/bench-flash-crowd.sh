#!/bin/sh
# The flash-crowd benchmark of issue 12 in one command: builds the release
# binaries, then runs peercache, nginx and BitTorrent (aria2c + opentracker) on
# the same crowd in network namespaces with tc caps, and writes
# flash-crowd.json and flash-crowd.md (see BENCHMARKS.md).
#
# Needs root, iproute2, curl, and: apt-get install nginx aria2 opentracker mktorrent
#
#   sudo scripts/bench-flash-crowd.sh                 # N = 8, 16, 32
#   sudo scripts/bench-flash-crowd.sh --n 8 --systems peercache,bittorrent --out /tmp/fc
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bins -p peercache-server -p peercache-host -p peercache-tests
if [ "$#" -eq 0 ]; then
    set -- --n 8,16,32
fi
exec ./target/release/peercache-bench flash-crowd "$@"
