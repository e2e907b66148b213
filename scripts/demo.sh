#!/usr/bin/env bash
# demo.sh — the main job (README Quickstart), on a fresh machine without
# Kafka. Installs what is missing, builds kreq, then:
#   1. starts an embedded Kafka-protocol cluster on 127.0.0.1 (librdkafka's
#      mock cluster, as the kreq-mockcluster process);
#   2. makes a key file with `kreq keygen`;
#   3. starts two kreqd replicas of the service "demo" (built-in handlers
#      echo, sleep, fail) in one consumer group, each with its metrics
#      endpoint and admin socket;
#   4. runs kreq-demo, a client that makes a burst of calls: most succeed,
#      one times out, one is cancelled, one operation is retried with the
#      same idempotency key and hits the dedup store; it shows `kreq pending`
#      while calls are in flight;
#   5. prints what each replica handled (from its metrics), stops them with
#      SIGTERM (graceful) and checks they exited cleanly.
# Safe to run twice; stops everything and removes its files on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# the same librdkafka (2.12.1, built once into ~/.cache/kreq) as the tests;
# why not Debian's: scripts/librdkafka.sh
mkdir -p build
echo "demo: building librdkafka (once) and kreq (log: build/demo-build.log)"
if ! { RDKAFKA_PREFIX=$(scripts/librdkafka.sh) &&
       export PKG_CONFIG_PATH="$RDKAFKA_PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}" &&
       cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
       cmake --build build -j2 --target kreq-mockcluster kreq-demo kreqd kreq-cli; } \
       >build/demo-build.log 2>&1; then
  tail -n 40 build/demo-build.log >&2
  echo "demo: build failed" >&2
  exit 1
fi
KREQ=build/cli/kreq
KREQD=build/broker/kreqd/kreqd

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

mkfifo "$work/mock.out"
# The mock serves no CreateTopics: the service's topics (6 partitions, as
# worker.topic.partitions below) and kreq-demo's reply topic come up front.
build/tools/kreq-mockcluster --brokers 1 --topic kreq.demo.requests:6 --topic kreq.demo.results:6 \
  --topic kreq.reply.demo-client >"$work/mock.out" 2>"$work/mock.err" &
pids+=($!)
read -r -t 30 line <"$work/mock.out" ||
  { cat "$work/mock.err" >&2; echo "demo: mock cluster did not start" >&2; exit 1; }
bootstrap=${line#KREQ_MOCK_BOOTSTRAP=}
echo "embedded Kafka-protocol cluster at $bootstrap"

"$KREQ" keygen --type ed25519 --id demo-key --out "$work/demo.key" >/dev/null
echo "key file $work/demo.key (Ed25519, mode 0600)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_replica() { # n
  local n=$1 port
  port=$(free_port)
  cat >"$work/kreqd-$n.conf" <<EOF
service = demo
client.id = kreqd-$n
kafka.bootstrap.servers = $bootstrap
keyring.file = $work/demo.key
kreqd.builtins = echo, sleep, fail
worker.topic.partitions = 6
kreqd.metrics.port = $port
admin.socket = $work/kreqd-$n.sock
log.level = 5
EOF
  "$KREQD" --config "$work/kreqd-$n.conf" 2>"$work/kreqd-$n.log" &
  pids+=($!)
  echo "$port" >"$work/kreqd-$n.port"
  echo "kreqd replica $n: pid $!, metrics http://127.0.0.1:$port/metrics"
}

metric() { # n series -> value (0 if absent)
  curl_get "$(cat "$work/kreqd-$1.port")" | awk -v s="$2" 'index($0, s) == 1 { print $2; f=1 } END { if (!f) print 0 }'
}
curl_get() { # port
  python3 - "$1" <<'EOF'
import sys, urllib.request
print(urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode())
EOF
}

start_replica 1
start_replica 2
# both replicas serve once the group has given each its partitions
for n in 1 2; do
  for _ in $(seq 1 300); do
    [ "$(metric "$n" 'kreq_worker_rebalances_total{' 2>/dev/null || echo 0)" -ge 1 ] && break
    sleep 0.1
  done
  [ "$(metric "$n" 'kreq_worker_rebalances_total{')" -ge 1 ] ||
    { echo "demo: replica $n did not join the group" >&2; cat "$work/kreqd-$n.log" >&2; exit 1; }
done
echo

build/tools/kreq-demo --bootstrap "$bootstrap" --keyfile "$work/demo.key" \
  --admin-socket "$work/client.sock" --kreq "$KREQ"

echo
echo "what each replica did (kreq_worker_handled_total by outcome, transactions):"
handled() { # n outcome
  metric "$1" 'kreq_worker_handled_total{service="demo",worker="kreqd-'"$1"'",outcome="'"$2"'"}'
}
for n in 1 2; do
  printf '  kreqd-%s: ok %s, error status %s, dedup %s, conflict %s, cancelled %s, transactions %s\n' \
    "$n" "$(handled "$n" ok)" "$(handled "$n" error_status)" "$(handled "$n" dedup)" \
    "$(handled "$n" conflict)" "$(handled "$n" cancelled)" \
    "$(metric "$n" 'kreq_worker_txn_commits_total{')"
done

# graceful stop: SIGTERM, in-flight work finishes, offsets commit, exit 0
for i in 1 2; do
  pid=${pids[$i]}
  kill -TERM "$pid"
  if ! wait "$pid"; then
    echo "demo: kreqd-$i did not stop cleanly" >&2
    cat "$work/kreqd-$i.log" >&2
    exit 1
  fi
done
pids=("${pids[0]}")
echo "both replicas stopped cleanly (SIGTERM)"
echo "demo: done"
