#!/usr/bin/env bash
# kafka.sh — a REAL Apache Kafka cluster (KRaft, no ZooKeeper, no Docker) on
# loopback, for kreq's integration tests, fault tests and benchmarks.
#
# Why: the librdkafka mock cluster does not enforce read_committed or restart
# semantics, so everything that claims transactional / crash-safe behaviour is
# tested against real brokers. The broker comes as jars from Maven Central
# (fetched with Maven, see scripts/kafka/pom.xml for 3.x and pom-4.xml for
# 4.x) and runs as plain JVMs.
#
# Versions: the 3.x line (3.9.1, the default) logs through reload4j
# (log4j 1 configuration); the 4.x line (4.4.0 in CI) through log4j2, and a
# new 4.x cluster is formatted with transaction.version=2 (KIP-890 part 2:
# the producer epoch is bumped at every transaction end) unless
# KREQ_KAFKA_TX_VERSION says otherwise. Commands on an existing DIR use the
# version the cluster there was started with, whatever KREQ_KAFKA_VERSION is.
#
# Usage:
#   scripts/kafka.sh fetch
#       Download the broker jars into the cache (skipped when already there).
#   scripts/kafka.sh start --dir DIR [--nodes 1|3] [--timeout SECONDS]
#                    [--proxied-ports P1[,P2,P3]]
#       Start a fresh cluster whose state lives in DIR (pass a directory under
#       the build tree; old cluster data in DIR is deleted). Each node is a
#       combined broker+controller bound to 127.0.0.1 on free ports. Waits
#       until the cluster accepts a produce AND a consume, then prints exactly
#       one line on stdout:   KREQ_TEST_BOOTSTRAP=127.0.0.1:p1[,127.0.0.1:p2...]
#       so that callers can   export "$(scripts/kafka.sh start --dir DIR)"
#       (prefer export "$(...)" to eval "$(...)": eval of the empty output of
#       a failed start succeeds, so set -e would not stop; export "" fails.)
#       On failure: error + log tail on stderr, no JVM left running, exit 1.
#       --proxied-ports (one port per node; or KREQ_KAFKA_PROXIED_PORTS): each
#       node gets a second listener, PROXIED, on a free port of its own but
#       ADVERTISED at 127.0.0.1:P<n>, where a TCP proxy of the test listens
#       and forwards to it (tests/support/netproxy.c). Kafka answers metadata
#       with the listener a request came in on, so a client bootstrapped at
#       127.0.0.1:P1,... stays behind the proxy while clients of
#       KREQ_TEST_BOOTSTRAP reach Kafka directly. Nothing is listening at
#       P<n> until the proxy runs. Without the option: no such listener.
#   scripts/kafka.sh proxied --dir DIR
#       For a cluster started with --proxied-ports, one line
#       KREQ_TEST_PROXY_TARGETS=127.0.0.1:t1[,...]: where the proxy's port
#       for node N forwards to (node N's PROXIED listener), in node order.
#   scripts/kafka.sh stop --dir DIR
#       SIGTERM every node, wait (bounded), then SIGKILL. Idempotent.
#   scripts/kafka.sh status --dir DIR
#       One line per node. Exit 0: all nodes up; 1: some down; 3: none up.
#   scripts/kafka.sh bootstrap --dir DIR
#       Print the KREQ_TEST_BOOTSTRAP=... line of the cluster in DIR again.
#   scripts/kafka.sh kill-node --dir DIR N
#       kill -9 node N (1-based), for fault-injection tests.
#   scripts/kafka.sh stop-node --dir DIR N
#       Controlled shutdown of node N (SIGTERM: it hands its partition
#       leaderships over first), waiting until it has exited.
#   scripts/kafka.sh start-node --dir DIR N
#       Restart node N with its old config and data; waits until it rejoins.
#   scripts/kafka.sh features --dir DIR
#       Kafka 4.x only: the finalized feature levels of the running cluster
#       (kafka-features describe), e.g. "transaction.version ... 2".
#   scripts/kafka.sh txn-state --dir DIR [SUBSTRING]
#       What the transaction coordinators recorded (node 1's copy of
#       __transaction_state, decoded by DumpLogSegments), one line per
#       transactional.id containing SUBSTRING: transactions committed and
#       aborted, the producer epochs seen, and the client transaction version
#       (2: KIP-890's protocol, the epoch is bumped at every transaction end;
#       "-": the classic protocol, one epoch until the producer is re-inited).
#
# Environment:
#   KREQ_KAFKA_CACHE    jar cache root (default $HOME/.cache/kreq)
#   KREQ_KAFKA_VERSION  Apache Kafka version (default below): 3.x or 4.x, KRaft
#   KREQ_KAFKA_TX_VERSION  4.x only: transaction.version a new cluster is
#                       formatted with (default 2; 0 gives the classic
#                       transaction protocol on a 4.x cluster)
#   KREQ_KAFKA_HEAP     JVM heap options (default "-Xms256m -Xmx512m")
#   KREQ_KAFKA_BROKER_SESSION_MS  broker.session.timeout.ms of a new cluster
#                       (default 6000): how long the controller waits before
#                       it fences a Kafka broker that stopped heartbeating
#   KREQ_KAFKA_PROXIED_PORTS  default of start's --proxied-ports
#   JAVA                java binary (default: java on PATH; needs Java 17+)
#
# Needs: bash, java (17+), mvn (only for the first fetch), python3 (free
# ports, cluster id), kcat (readiness check: Debian package "kcat").
#
# Everything diagnostic goes to stderr; stdout carries only the bootstrap line
# (start, bootstrap) or the status table (status).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly SCRIPT_DIR
readonly CACHE_ROOT="${KREQ_KAFKA_CACHE:-${HOME:-/tmp}/.cache/kreq}"
readonly TX_VERSION="${KREQ_KAFKA_TX_VERSION:-2}"
readonly JAVA_BIN="${JAVA:-java}"
readonly HEAP_OPTS="${KREQ_KAFKA_HEAP:--Xms256m -Xmx512m}"
readonly BROKER_SESSION_MS="${KREQ_KAFKA_BROKER_SESSION_MS:-6000}"
readonly MARKER="kreq-kafka.env"       # identifies a DIR this script owns
readonly READY_TOPIC="__kreq_harness_ready"
readonly STOP_TIMEOUT=30

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# set_version V: the Kafka version everything below uses (jars, pom, logging
# configuration). Called once with KREQ_KAFKA_VERSION, and again by load_env
# with the version of the cluster in DIR.
set_version() {
  [[ "$1" =~ ^([0-9]+)\.[0-9]+\.[0-9]+$ ]] || die "KREQ_KAFKA_VERSION must look like 3.9.1 or 4.4.0, got '$1'"
  KAFKA_VERSION="$1"
  KAFKA_MAJOR="${BASH_REMATCH[1]}"
  ((KAFKA_MAJOR >= 3)) || die "Kafka $1: only the 3.x and 4.x lines (KRaft) are supported"
  if ((KAFKA_MAJOR >= 4)); then
    POM="$SCRIPT_DIR/kafka/pom-4.xml"
  else
    POM="$SCRIPT_DIR/kafka/pom.xml"
  fi
  KAFKA_HOME="$CACHE_ROOT/kafka-$KAFKA_VERSION"
  LIBS="$KAFKA_HOME/libs"
}
set_version "${KREQ_KAFKA_VERSION:-3.9.1}"
[[ "$BROKER_SESSION_MS" =~ ^[0-9]+$ ]] ||
  die "KREQ_KAFKA_BROKER_SESSION_MS must be a number of milliseconds, got '$BROKER_SESSION_MS'"

# The JVM option that points the logging framework of this Kafka line at the
# configuration write_log4j wrote.
log_opt() {
  if ((KAFKA_MAJOR >= 4)); then
    printf -- '-Dlog4j2.configurationFile=%s/log4j2.properties' "$DIR"
  else
    printf -- '-Dlog4j.configuration=file:%s/log4j.properties' "$DIR"
  fi
}

usage() {
  sed -n '/^# Usage:/,/^set -euo pipefail/{/^set /d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

# --- fetching ---------------------------------------------------------------

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH ($2)"; }

fetch() {
  if [[ -f "$LIBS/.complete" ]]; then
    return 0
  fi
  need mvn "install Maven (Debian package 'maven') to fetch the Kafka jars"
  mkdir -p "$CACHE_ROOT"
  # Serialise concurrent fetches of the same version; re-check under the lock.
  exec 9>"$CACHE_ROOT/.kafka-$KAFKA_VERSION.lock"
  flock 9
  if [[ ! -f "$LIBS/.complete" ]]; then
    log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central into $LIBS"
    local tmp="$KAFKA_HOME/libs.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    # (Maven 3.8 prints bare colour resets even in batch mode: strip them.)
    if ! mvn -q -B -f "$POM" -Dkafka.version="$KAFKA_VERSION" \
         dependency:copy-dependencies -DincludeScope=runtime \
         -DoutputDirectory="$tmp" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2; then
      rm -rf "$tmp"
      die "mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION"
    fi
    compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null || { rm -rf "$tmp"; die "kafka_2.13 jar missing after fetch"; }
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    touch "$LIBS/.complete"
  fi
  flock -u 9
  exec 9>&-
}

# --- small helpers ------------------------------------------------------------

# free_ports N: N distinct free TCP ports on 127.0.0.1, one per line.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
for s in socks:
    print(s.getsockname()[1])
    s.close()
PY
}

# A Kafka cluster id: 16 random bytes, url-safe base64, no padding, and not
# starting with '-' (it would read as an option on the StorageTool command line).
new_cluster_id() {
  python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s); break'
}

node_dir() { printf '%s/node%s' "$DIR" "$1"; }

# pid_alive PID: running and not a zombie (our JVMs are reparented to pid 1,
# which may take a while to reap them).
pid_alive() {
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# node_pid N: the pid of node N if it is alive and really is our JVM.
node_pid() {
  local pidfile pid cmdline
  pidfile="$(node_dir "$1")/kafka.pid"
  [[ -f "$pidfile" ]] || return 1
  pid="$(<"$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline")" || return 1
  [[ "$cmdline" == *"kafka.Kafka $(node_dir "$1")/server.properties"* ]] || return 1
  printf '%s\n' "$pid"
}

load_env() {
  [[ -f "$DIR/$MARKER" ]] || die "no kafka.sh cluster in $DIR (run: scripts/kafka.sh start --dir $DIR)"
  # shellcheck disable=SC1090
  source "$DIR/$MARKER"
  # clusters made before the version was recorded were 3.9.1 ones
  set_version "${CLUSTER_KAFKA_VERSION:-3.9.1}"
}

bootstrap_line() { printf 'KREQ_TEST_BOOTSTRAP=%s\n' "$BOOTSTRAP"; }

log_tail() {
  local n f
  for ((n = 1; n <= NODES; n++)); do
    for f in "$(node_dir "$n")/stdout.log" "$(node_dir "$n")/logs/server.log"; do
      [[ -s "$f" ]] || continue
      log "---- last lines of $f ----"
      grep -v $'^\t' "$f" | tail -n 25 >&2 || true   # skip the config dump
    done
  done
}

# --- configuration ------------------------------------------------------------

write_log4j() {
  if ((KAFKA_MAJOR >= 4)); then
    write_log4j2
    return
  fi
  cat >"$DIR/log4j.properties" <<'EOF'
# Broker logs go to <node dir>/logs/server.log only; nothing on the console.
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=${kafka.logs.dir}/server.log
log4j.appender.file.MaxFileSize=64MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
log4j.logger.org.apache.kafka.clients=WARN
EOF
}

# Kafka 4.x: the same, in log4j2's properties syntax.
write_log4j2() {
  cat >"$DIR/log4j2.properties" <<'EOF'
# Broker logs go to <node dir>/logs/server.log only; nothing on the console.
status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 64MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
logger.storage.name = org.apache.kafka.storage.internals.log
logger.storage.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
EOF
}

# write_server_properties N BROKER_PORT CONTROLLER_PORT VOTERS [PROXIED_PORT ADVERTISED_PORT]
write_server_properties() {
  local n="$1" bport="$2" cport="$3" voters="$4" d rf isr
  local listeners="PLAINTEXT://127.0.0.1:$bport,CONTROLLER://127.0.0.1:$cport"
  local advertised="PLAINTEXT://127.0.0.1:$bport" protos="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
  if [[ -n "${5:-}" ]]; then            # --proxied-ports: see the usage above
    listeners+=",PROXIED://127.0.0.1:$5"
    advertised+=",PROXIED://127.0.0.1:$6"
    protos+=",PROXIED:PLAINTEXT"
  fi
  d="$(node_dir "$n")"
  if ((NODES >= 3)); then rf=3; isr=2; else rf=1; isr=1; fi
  # Topics other than Kafka's own get Kafka's stock defaults (replication
  # factor 1, min.insync.replicas 1), as on a cluster nobody tuned: the
  # tests must see the replication kreq asks for, not one this file gives.
  cat >"$d/server.properties" <<EOF
# Generated by scripts/kafka.sh for node $n of $NODES (KRaft combined mode).
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=$protos
log.dirs=$d/data
num.network.threads=2
num.io.threads=4
num.partitions=1
auto.create.topics.enable=true
delete.topic.enable=true
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=$rf
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
transaction.state.log.num.partitions=10
group.initial.rebalance.delay.ms=0
log.cleaner.dedupe.buffer.size=16777216
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=${BROKER_SESSION_MS}
EOF
}

format_node() {
  local n="$1" d features=()
  d="$(node_dir "$n")"
  # 4.x: KIP-890's transaction protocol (transaction.version=2) is what a new
  # 4.x cluster gets by default; say so explicitly, so that the cluster under
  # test does not depend on that default (KREQ_KAFKA_TX_VERSION overrides).
  ((KAFKA_MAJOR >= 4)) && features=(--feature "transaction.version=$TX_VERSION")
  "$JAVA_BIN" -Xmx256m -cp "$LIBS/*" "$(log_opt)" \
    -Dkafka.logs.dir="$d/logs" kafka.tools.StorageTool format \
    -t "$CLUSTER_ID" -c "$d/server.properties" "${features[@]+"${features[@]}"}" >"$d/format.log" 2>&1 \
    || { cat "$d/format.log" >&2; die "formatting storage of node $n failed"; }
}

# launch_node N: start the JVM of node N in the background (own session, no
# inherited stdout so that $(kafka.sh start) returns) and record its pid.
launch_node() {
  local n="$1" d
  d="$(node_dir "$n")"
  mkdir -p "$d/logs"
  rm -f "$d/kafka.pid"
  # shellcheck disable=SC2086,SC2016   # word-split HEAP_OPTS; $$ is the child's
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$d/kafka.pid" \
    "$JAVA_BIN" $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    "$(log_opt)" -Dkafka.logs.dir="$d/logs" \
    -cp "$LIBS/*" kafka.Kafka "$d/server.properties" \
    </dev/null >>"$d/stdout.log" 2>&1 &
  local i
  for ((i = 0; i < 50; i++)); do           # the pid file appears within ms
    [[ -s "$d/kafka.pid" ]] && return 0
    sleep 0.1
  done
  die "node $n did not record its pid"
}

# --- readiness ------------------------------------------------------------------

# brokers_up BOOTSTRAP: number of brokers in the cluster metadata (0 if none).
brokers_up() {
  local out n
  out="$(kcat -b "$1" -L -m 3 2>/dev/null)" || { echo 0; return; }
  n="$(sed -n 's/^ *\([0-9]\+\) brokers:.*/\1/p' <<<"$out")"
  echo "${n:-0}"
}

# produce_consume BOOTSTRAP: one acked produce and a consume that sees it.
produce_consume() {
  local token
  token="ready-$$-$RANDOM-$(date +%s%N)"
  printf '%s\n' "$token" | kcat -b "$1" -P -t "$READY_TOPIC" -p 0 -X acks=all \
      -X message.timeout.ms=8000 -X topic.metadata.refresh.interval.ms=500 >/dev/null 2>&1 || return 1
  local seen
  seen="$(timeout 15 kcat -b "$1" -C -t "$READY_TOPIC" -p 0 -o beginning -e -q \
      -X fetch.wait.max.ms=100 2>/dev/null)" || return 1
  grep -qx -- "$token" <<<"$seen"
}

all_nodes_alive() {
  local n
  for ((n = 1; n <= NODES; n++)); do
    node_pid "$n" >/dev/null || { log "node $n exited during start-up"; return 1; }
  done
}

# wait_ready DEADLINE_EPOCH BOOTSTRAP: cluster complete and serving.
wait_ready() {
  local deadline="$1" bs="$2" up=0
  while :; do
    all_nodes_alive || return 1
    if (($(date +%s) >= deadline)); then
      log "timed out: $up of $NODES brokers registered, or produce/consume not working yet"
      return 1
    fi
    up="$(brokers_up "$bs")"
    if ((up >= NODES)) && produce_consume "$bs"; then
      return 0
    fi
    sleep 0.5
  done
}

# --- commands -------------------------------------------------------------------

# prepare_dir: DIR must be empty, new, or a previous kafka.sh cluster (stopped).
prepare_dir() {
  mkdir -p "$DIR"
  DIR="$(cd "$DIR" && pwd)"
  if [[ -f "$DIR/$MARKER" ]]; then
    ( load_env; any_alive ) && die "a cluster is already running in $DIR (stop it first)"
    rm -rf "${DIR:?}"/node[0-9]* "${DIR:?}/$MARKER" "${DIR:?}"/log4j*.properties
  elif [[ -n "$(ls -A "$DIR")" ]]; then
    die "$DIR is not empty and was not made by kafka.sh; refusing to use it"
  fi
}

any_alive() {
  local n
  for ((n = 1; n <= NODES; n++)); do
    node_pid "$n" >/dev/null && return 0
  done
  return 1
}

START_OK=0
on_start_exit() {
  if ((START_OK == 0)); then
    log "start failed; stopping any node that was started"
    log_tail
    stop_nodes || true
  fi
}

cmd_start() {
  need "$JAVA_BIN" "install a Java 17+ runtime (Debian package 'openjdk-17-jre-headless')"
  need python3 "needed to pick free ports"
  need kcat "install Debian package 'kcat' (readiness check)"
  [[ "$NODES" == 1 || "$NODES" == 3 ]] || die "--nodes must be 1 or 3"
  fetch
  prepare_dir
  local t0 ports n voters="" bs="" proxied=() targets=""
  t0="$(date +%s)"
  if [[ -n "$PROXIED_PORTS" ]]; then
    IFS=, read -r -a proxied <<<"$PROXIED_PORTS"
    ((${#proxied[@]} == NODES)) || die "--proxied-ports needs $NODES port(s), one per node, got '$PROXIED_PORTS'"
    for n in "${proxied[@]}"; do
      [[ "$n" =~ ^[0-9]+$ ]] && ((n > 0 && n < 65536)) || die "--proxied-ports: '$n' is not a port"
    done
  fi
  local per=2
  ((${#proxied[@]} > 0)) && per=3
  mapfile -t ports < <(free_ports $((per * NODES)))
  ((${#ports[@]} == per * NODES)) || die "could not find free ports"
  for ((n = 1; n <= NODES; n++)); do
    voters+="${voters:+,}$n@127.0.0.1:${ports[2 * n - 1]}"
    bs+="${bs:+,}127.0.0.1:${ports[2 * n - 2]}"
    ((per == 3)) && targets+="${targets:+,}127.0.0.1:${ports[2 * NODES + n - 1]}"
  done
  CLUSTER_ID="$(new_cluster_id)"
  BOOTSTRAP="$bs"
  printf 'NODES=%s\nBOOTSTRAP=%s\nCLUSTER_ID=%s\nCLUSTER_KAFKA_VERSION=%s\nPROXY_TARGETS=%s\n' \
    "$NODES" "$BOOTSTRAP" "$CLUSTER_ID" "$KAFKA_VERSION" "$targets" >"$DIR/$MARKER"
  write_log4j
  trap on_start_exit EXIT
  trap 'exit 130' INT TERM HUP      # interrupted: still clean up via EXIT
  for ((n = 1; n <= NODES; n++)); do
    mkdir -p "$(node_dir "$n")/data" "$(node_dir "$n")/logs"
    if ((per == 3)); then
      write_server_properties "$n" "${ports[2 * n - 2]}" "${ports[2 * n - 1]}" "$voters" \
        "${ports[2 * NODES + n - 1]}" "${proxied[n - 1]}"
    else
      write_server_properties "$n" "${ports[2 * n - 2]}" "${ports[2 * n - 1]}" "$voters"
    fi
    format_node "$n"
  done
  for ((n = 1; n <= NODES; n++)); do
    launch_node "$n"
  done
  log "started $NODES node(s) (Kafka $KAFKA_VERSION) in $DIR; waiting for produce+consume on $BOOTSTRAP"
  wait_ready $((t0 + START_TIMEOUT)) "$BOOTSTRAP" || die "cluster not ready within ${START_TIMEOUT}s"
  check_tx_version || die "the cluster does not run with transaction.version=$TX_VERSION"
  START_OK=1
  trap - EXIT INT TERM HUP
  log "ready after $(($(date +%s) - t0))s"
  ((per == 3)) && log "PROXIED listeners advertised at 127.0.0.1:${PROXIED_PORTS//,/,127.0.0.1:} forward to $targets"
  bootstrap_line
}

# describe_features: kafka-features describe of the cluster (4.x: the
# FeatureCommand class comes with the jars, see scripts/kafka/pom-4.xml).
describe_features() {
  ((KAFKA_MAJOR >= 4)) || die "features: only for Kafka 4.x clusters (this one runs $KAFKA_VERSION)"
  "$JAVA_BIN" -Xmx128m -cp "$LIBS/*" org.apache.kafka.tools.FeatureCommand \
    --bootstrap-server "$BOOTSTRAP" describe 2>/dev/null
}

# check_tx_version: on 4.x, the finalized transaction.version is the one the
# cluster was formatted with (what decides KIP-890's epoch bump per
# transaction); logs it. 3.x has no such feature: the classic protocol.
check_tx_version() {
  if ((KAFKA_MAJOR < 4)); then
    log "Kafka $KAFKA_VERSION: classic transaction protocol (no transaction.version feature)"
    return 0
  fi
  local out level
  out="$(describe_features)" || { log "kafka-features describe failed"; return 1; }
  level="$(sed -n 's/^Feature: transaction\.version\b.*FinalizedVersionLevel: \([0-9]*\).*/\1/p' <<<"$out")"
  log "Kafka $KAFKA_VERSION: transaction.version finalized level ${level:-none}"
  [[ "${level:-0}" == "$TX_VERSION" ]]
}

# txn_state [SUBSTRING]: see the usage above.
txn_state() {
  local cls=kafka.tools.DumpLogSegments f files=()
  ((KAFKA_MAJOR >= 4)) && cls=org.apache.kafka.tools.DumpLogSegments
  for f in "$(node_dir 1)"/data/__transaction_state-*/*.log; do
    [[ -e "$f" ]] && files+=("$f")
  done
  ((${#files[@]} > 0)) || die "no __transaction_state segments in $(node_dir 1)/data"
  local IFS=,
  "$JAVA_BIN" -Xmx256m -cp "$LIBS/*" "$cls" --transaction-log-decoder --print-data-log \
    --files "${files[*]}" 2>/dev/null | python3 -c '
import collections, json, re, sys
want = sys.argv[1]
ids = collections.OrderedDict()
old = re.compile(r"key: transaction_metadata::transactionalId=(\S+) payload: "
                 r"producerId:(-?\d+),producerEpoch:(-?\d+),state=(\w+)")
for line in sys.stdin:
    m = re.search(r"key: (\{.*?\}\}) payload: (\{.*\})\s*$", line)  # 4.x: JSON
    o = None if m else old.search(line)  # 3.x: its own text
    if not m and not o:
        continue
    tid = json.loads(m.group(1)).get("data", {}).get("transactionalId", "") if m else o.group(1)
    if want not in tid:
        continue
    v = json.loads(m.group(2))["data"] if m else {
        "producerEpoch": int(o.group(3)), "transactionStatus": o.group(4)}
    s = ids.setdefault(tid, {"commit": 0, "abort": 0, "epochs": set(), "tv": set()})
    st = v.get("transactionStatus")
    s["commit"] += st == "CompleteCommit"
    s["abort"] += st == "CompleteAbort"
    s["epochs"].add(v.get("producerEpoch"))
    s["tv"].add(str(v.get("clientTransactionVersion", "-")))
for tid, s in ids.items():
    e = sorted(s["epochs"])
    print("%s committed=%d aborted=%d epochs=%s client_transaction_version=%s" % (
        tid, s["commit"], s["abort"],
        "%d" % e[0] if len(e) == 1 else "%d..%d (%d distinct)" % (e[0], e[-1], len(e)),
        "/".join(sorted(s["tv"]))))
' "${1:-}"
}

# stop_nodes [N...]: SIGTERM, wait up to STOP_TIMEOUT s, then SIGKILL.
stop_nodes() {
  local n pid pids=() list=("$@")
  if ((${#list[@]} == 0)); then
    for ((n = 1; n <= NODES; n++)); do list+=("$n"); done
  fi
  for n in "${list[@]}"; do
    if pid="$(node_pid "$n")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  local deadline=$(($(date +%s) + STOP_TIMEOUT)) alive
  while :; do
    alive=()
    for pid in "${pids[@]+"${pids[@]}"}"; do
      pid_alive "$pid" && alive+=("$pid")
    done
    ((${#alive[@]} == 0)) && break
    if (($(date +%s) >= deadline)); then
      log "node(s) still running after ${STOP_TIMEOUT}s; sending SIGKILL to ${alive[*]}"
      kill -KILL "${alive[@]}" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  for n in "${list[@]}"; do rm -f "$(node_dir "$n")/kafka.pid"; done
}

cmd_stop() {
  if [[ ! -f "$DIR/$MARKER" ]]; then
    log "no cluster in $DIR; nothing to stop"
    return 0
  fi
  load_env
  stop_nodes
  log "stopped cluster in $DIR"
}

cmd_status() {
  if [[ ! -f "$DIR/$MARKER" ]]; then
    printf 'no cluster in %s\n' "$DIR"
    return 3
  fi
  load_env
  local n pid up=0
  for ((n = 1; n <= NODES; n++)); do
    if pid="$(node_pid "$n")"; then
      printf 'node %s: running (pid %s)\n' "$n" "$pid"
      up=$((up + 1))
    else
      printf 'node %s: stopped\n' "$n"
    fi
  done
  printf 'bootstrap: %s\n' "$BOOTSTRAP"
  ((up == NODES)) && return 0
  ((up == 0)) && return 3
  return 1
}

check_node_arg() {
  if ! [[ "$NODE" =~ ^[0-9]+$ ]] || ((NODE < 1 || NODE > NODES)); then
    die "node must be between 1 and $NODES, got '$NODE'"
  fi
}

cmd_kill_node() {
  load_env
  check_node_arg
  local pid
  if pid="$(node_pid "$NODE")"; then
    kill -KILL "$pid"
    while pid_alive "$pid"; do sleep 0.05; done   # SIGKILL: prompt
    log "node $NODE (pid $pid) killed"
  else
    log "node $NODE was not running"
  fi
  rm -f "$(node_dir "$NODE")/kafka.pid"
}

cmd_stop_node() {
  load_env
  check_node_arg
  node_pid "$NODE" >/dev/null || { log "node $NODE was not running"; return 0; }
  stop_nodes "$NODE"
  log "node $NODE stopped (controlled shutdown)"
}

cmd_start_node() {
  need kcat "install Debian package 'kcat' (readiness check)"
  load_env
  check_node_arg
  node_pid "$NODE" >/dev/null && die "node $NODE is already running"
  local t0 own_bs
  t0="$(date +%s)"
  launch_node "$NODE"
  own_bs="$(sed -n 's|^advertised.listeners=PLAINTEXT://\([^,]*\).*|\1|p' "$(node_dir "$NODE")/server.properties")"
  while :; do
    node_pid "$NODE" >/dev/null || { log_tail; die "node $NODE exited during start-up"; }
    if (("$(brokers_up "$own_bs")" >= 1)); then break; fi
    if (($(date +%s) >= t0 + START_TIMEOUT)); then
      stop_nodes "$NODE"
      die "node $NODE not serving within ${START_TIMEOUT}s"
    fi
    sleep 0.5
  done
  log "node $NODE serving again after $(($(date +%s) - t0))s"
}

# --- argument parsing -----------------------------------------------------------

CMD="${1:-}"
[[ -n "$CMD" ]] || usage
shift
DIR=""
NODES=1
NODE=""
START_TIMEOUT="${KREQ_KAFKA_START_TIMEOUT:-120}"
PROXIED_PORTS="${KREQ_KAFKA_PROXIED_PORTS:-}"
while (($# > 0)); do
  case "$1" in
    --dir) (($# >= 2)) || usage; DIR="$2"; shift 2 ;;
    --nodes) (($# >= 2)) || usage; NODES="$2"; shift 2 ;;
    --timeout) (($# >= 2)) || usage; START_TIMEOUT="$2"; shift 2 ;;
    --proxied-ports) (($# >= 2)) || usage; PROXIED_PORTS="$2"; shift 2 ;;
    -h | --help) usage ;;
    -*) log "unknown option '$1'"; usage ;;
    *) [[ -z "$NODE" ]] || usage; NODE="$1"; shift ;;
  esac
done
[[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die "--timeout must be a number of seconds"

case "$CMD" in
  fetch) [[ -z "$DIR$NODE" ]] || usage; fetch; log "Kafka $KAFKA_VERSION jars ready in $LIBS" ;;
  start | stop | status | bootstrap | proxied | features | txn-state | kill-node | stop-node | start-node)
    [[ -n "$DIR" ]] || { log "$CMD needs --dir DIR"; usage; }
    case "$CMD" in
      kill-node | stop-node | start-node) [[ -n "$NODE" ]] || { log "$CMD needs a node number"; usage; } ;;
      txn-state) ;;                        # optional SUBSTRING
      *) [[ -z "$NODE" ]] || usage ;;
    esac
    [[ "$CMD" == start ]] || DIR="$(cd "$DIR" 2>/dev/null && pwd || printf '%s' "$DIR")"
    case "$CMD" in
      start) cmd_start ;;
      stop) cmd_stop ;;
      status) cmd_status ;;
      bootstrap) load_env; bootstrap_line ;;
      proxied) load_env; [[ -n "${PROXY_TARGETS:-}" ]] || die "the cluster in $DIR was started without --proxied-ports"
        printf 'KREQ_TEST_PROXY_TARGETS=%s\n' "$PROXY_TARGETS" ;;
      features) load_env; describe_features ;;
      txn-state) load_env; txn_state "$NODE" ;;
      kill-node) cmd_kill_node ;;
      stop-node) cmd_stop_node ;;
      start-node) cmd_start_node ;;
    esac ;;
  -h | --help | help) usage ;;
  *) log "unknown command '$CMD'"; usage ;;
esac
