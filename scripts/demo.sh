#!/usr/bin/env bash
# demo.sh — the main job (README Quickstart). Installs what is missing, builds
# kreq, starts an embedded Kafka-protocol cluster (librdkafka's mock cluster,
# as the kreq-mockcluster process on 127.0.0.1), generates an Ed25519 key file
# and runs kreq-demo: signed requests through Kafka, verified on the way out,
# forged and expired ones refused. Safe to run twice; cleans up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
echo "demo: building (log: build/demo-build.log)"
mkdir -p build
if ! { cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
       cmake --build build -j2 --target kreq-mockcluster kreq-demo; } >build/demo-build.log 2>&1; then
  tail -n 40 build/demo-build.log >&2
  echo "demo: build failed" >&2
  exit 1
fi

work=$(mktemp -d)
mock_pid=""
cleanup() {
  [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null && wait "$mock_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkfifo "$work/mock.out"
build/tools/kreq-mockcluster --brokers 1 >"$work/mock.out" &
mock_pid=$!
read -r -t 30 line <"$work/mock.out" || { echo "demo: mock cluster did not start" >&2; exit 1; }
bootstrap=${line#KREQ_MOCK_BOOTSTRAP=}
echo "embedded Kafka-protocol cluster at $bootstrap"

build/tools/kreq-demo --bootstrap "$bootstrap" --keyfile "$work/demo.key"
echo "demo: done"
