#!/usr/bin/env bash
# test.sh — THE test command (README Quickstart; .ci/run calls exactly this).
#
# On a fresh Debian 12 machine it installs what is missing, builds librdkafka
# (scripts/librdkafka.sh), fetches Apache Kafka's jars from Maven Central
# (4.4.0 and 3.9.1), starts a real single-node KRaft Kafka broker on
# loopback, and runs, in order:
#   1. format check (clang-format, checked-in style)
#   2. fresh root (scripts/freshroot.sh): on a brand-new minimal Debian 12
#      (debootstrap) with a clean clone, the demo and this script's set-up,
#      format check, release build and unit suites: fails when the set-up
#      misses anything a new user's machine needs
#   3. release build with -Wall -Wextra -Werror, every CTest suite (unit + kafka)
#      against Apache Kafka 4.4.0 (transaction.version=2; kafka.sh checks it),
#      then the demo (scripts/demo.sh) end to end
#      (suites with a Kafka cluster of their own, e.g. test_netfault's
#      proxied one, start it at the stage's version: KREQ_KAFKA_VERSION)
#   4. ASan+UBSan build, every suite, against Apache Kafka 3.9.1
#   5. TSan build (librdkafka instrumented too), every suite, on 3.9.1
#      (the 4.x Kafka broker is stopped and a 3.9.1 one started between 3 and
#      4: both Kafka lines are tested in every run, one JVM at a time)
#   5b. cluster3: the suites labelled cluster3 (test_cluster3), which start
#      a 3-broker Kafka cluster of their own (scripts/kafka.sh --nodes 3;
#      the shared broker is stopped first) and fail one Kafka broker at a
#      time under load; every other stage leaves them out (ctest -LE
#      cluster3). Took 2m46-2m54 on a 2-core machine shared with builds.
#   6. valgrind over the unit suites
#   7. every libFuzzer target (envelope, signed Results, key file, config),
#      sharing KREQ_FUZZ_SECONDS, each from its seed corpus
# and stops the Kafka broker on exit, also on failure. Safe to run twice.
#
# Environment: KREQ_TEST_KAFKA_RELEASE (Kafka version of the release stage,
# default 4.4.0), KREQ_TEST_KAFKA_SANITIZE (of asan, tsan and cluster3,
# default 3.9.1), KREQ_FUZZ_SECONDS (default 60), KREQ_TEST_STAGES (default
# "format freshroot release demo cluster3 asan tsan valgrind fuzz") to run a subset
# while developing; stage "unit" (not in the default: "release" covers it)
# is the release build with the unit suites only, no Kafka broker.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
STAGES=${KREQ_TEST_STAGES:-"format freshroot release demo cluster3 asan tsan valgrind fuzz"}
FUZZ_SECONDS=${KREQ_FUZZ_SECONDS:-60}
JOBS=2
KAFKA_DIR="$ROOT/build/kafka-test"
KAFKA_RELEASE=${KREQ_TEST_KAFKA_RELEASE:-4.4.0}
KAFKA_SANITIZE=${KREQ_TEST_KAFKA_SANITIZE:-3.9.1}

say() { printf '\n==== %s ====\n' "$*"; }
has_stage() { [[ " $STAGES " == *" $1 "* ]]; }

say "setup"
scripts/setup.sh
KREQ_KAFKA_VERSION=$KAFKA_SANITIZE scripts/kafka.sh fetch
KREQ_KAFKA_VERSION=$KAFKA_RELEASE scripts/kafka.sh fetch
# librdkafka 2.12.1 built from source (why: scripts/librdkafka.sh); every
# build below finds it through pkg-config, every binary through its RPATH.
RDKAFKA_PREFIX=$(scripts/librdkafka.sh)
export PKG_CONFIG_PATH="$RDKAFKA_PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
echo "librdkafka: $(pkg-config --modversion rdkafka) from $RDKAFKA_PREFIX"

configure_build() { # dir, extra cmake args...
  local dir=$1; shift
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKREQ_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j"$JOBS"
}

PASSED=0
run_ctest() { # dir, extra ctest args... (adds the suites that ran to PASSED)
  local dir=$1; shift
  # (not under set -e: a failing ctest must reach the summary below)
  ctest --test-dir "$dir" --output-on-failure --no-tests=error "$@" | tee "$dir/ctest.out" || true
  local n
  n=$(sed -n 's/.*100% tests passed, 0 tests failed out of \([0-9]*\).*/\1/p' "$dir/ctest.out")
  if [ -z "$n" ]; then
    # last, where a cut log still shows it: what each failing test said
    echo "ctest in $dir did not report a full pass; the failures it printed:" >&2
    grep -E ':[0-9]+:[FE]:|^SUMMARY: |Sanitizer|Test timeout|\*\*\*(Failed|Timeout|Exception)' \
      "$dir/ctest.out" | tail -n 40 >&2 || true
    exit 1
  fi
  PASSED=$((PASSED + n))
}

stop_kafka() { scripts/kafka.sh stop --dir "$KAFKA_DIR" >&2 || true; }

# start_kafka VERSION: the shared single-node Kafka broker of the stages
# below runs VERSION (a running one of another version is stopped first).
# Exports KREQ_TEST_BOOTSTRAP, and KREQ_KAFKA_VERSION for the suites that
# start clusters of their own through kafka.sh.
KAFKA_RUNNING=""
start_kafka() {
  [ "$KAFKA_RUNNING" = "$1" ] && return 0
  [ -z "$KAFKA_RUNNING" ] || stop_kafka
  say "start Apache Kafka $1 (KRaft, 127.0.0.1)"
  mkdir -p build
  trap stop_kafka EXIT
  export KREQ_KAFKA_VERSION=$1
  export "$(scripts/kafka.sh start --dir "$KAFKA_DIR")"
  KAFKA_RUNNING=$1
  echo "KREQ_TEST_BOOTSTRAP=$KREQ_TEST_BOOTSTRAP (Apache Kafka $1)"
  case $1 in 3.*) ;; *) scripts/kafka.sh features --dir "$KAFKA_DIR" | grep transaction.version ;; esac
}

if has_stage format; then
  say "format"
  scripts/format.sh --check
fi

if has_stage freshroot; then
  say "fresh root (scripts/freshroot.sh: a new minimal Debian 12 runs the README's commands)"
  scripts/freshroot.sh
  PASSED=$((PASSED + 1))
fi

if has_stage release; then
  start_kafka "$KAFKA_RELEASE"
  say "release build (-Werror) + all suites, Apache Kafka $KAFKA_RELEASE"
  configure_build build
  run_ctest build -LE 'cluster3|bench' # bench: bench/peer.sh's smoke run, by hand
fi

if has_stage unit && ! has_stage release; then
  say "release build (-Werror) + unit suites"
  configure_build build
  run_ctest build -L unit
fi

if has_stage demo; then
  say "demo (scripts/demo.sh: embedded cluster, two kreqd replicas, a client burst)"
  scripts/demo.sh
  PASSED=$((PASSED + 1))
fi

if has_stage asan; then
  start_kafka "$KAFKA_SANITIZE"
  say "ASan+UBSan build + all suites, Apache Kafka $KAFKA_SANITIZE"
  configure_build build-asan -DKREQ_SANITIZE=address -DKREQ_BUILD_BENCH=OFF
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_ctest build-asan -LE cluster3
fi

if has_stage tsan; then
  start_kafka "$KAFKA_SANITIZE"
  say "TSan build (kreq and librdkafka instrumented) + all suites, Apache Kafka $KAFKA_SANITIZE"
  # TSan must see librdkafka's atomics and locks too, or each hand-over
  # between its threads and kreq's is reported as a race: this stage links
  # a librdkafka built with -fsanitize=thread (scripts/librdkafka.sh tsan).
  # tests/tsan.supp names the one race left, inside librdkafka.
  RDKAFKA_TSAN=$(scripts/librdkafka.sh tsan)
  PKG_CONFIG_PATH="$RDKAFKA_TSAN/lib/pkgconfig" \
    configure_build build-tsan -DKREQ_SANITIZE=thread -DKREQ_BUILD_BENCH=OFF
  # label timing (test_fence): fault timings TSan's pace breaks, left to
  # the release and ASan stages
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$ROOT/tests/tsan.supp" \
    run_ctest build-tsan -LE 'cluster3|timing'
fi

if has_stage cluster3; then
  say "cluster3: a 3-broker Kafka cluster of its own, one Kafka broker failing under load"
  # the suite starts and stops its cluster itself; the shared Kafka broker goes
  # first so that no more than 3 JVMs run (each with a small heap)
  stop_kafka
  KAFKA_RUNNING=""
  export KREQ_KAFKA_VERSION=$KAFKA_SANITIZE
  echo "cluster3 runs Apache Kafka $KREQ_KAFKA_VERSION"
  configure_build build
  KREQ_KAFKA_HEAP=${KREQ_KAFKA_HEAP:-"-Xms128m -Xmx384m"} run_ctest build -L cluster3
fi

if has_stage valgrind; then
  say "valgrind (unit suites)"
  [ -d build ] || configure_build build
  # CK_FORK=no: run tests in-process so valgrind sees every allocation.
  for t in build/tests/unit/test_*; do
    [ -x "$t" ] && [ -f "$t" ] || continue
    echo "valgrind $t"
    (cd build && CK_FORK=no valgrind -q --error-exitcode=99 --leak-check=full \
      --errors-for-leak-kinds=definite,indirect --show-leak-kinds=definite,indirect \
      "../$t")
    PASSED=$((PASSED + 1))
  done
fi

if has_stage fuzz; then
  # every libFuzzer target gets an equal share of KREQ_FUZZ_SECONDS, from
  # its seed corpus fuzz/corpus/<target> (fuzz/make_corpus.py writes them)
  FUZZ_TARGETS=(envelope result keyfile conf)
  SHARE=$(( FUZZ_SECONDS / ${#FUZZ_TARGETS[@]} )); [ "$SHARE" -ge 1 ] || SHARE=1
  say "fuzz ${FUZZ_TARGETS[*]} for ${SHARE}s each (${FUZZ_SECONDS}s in all)"
  CC=clang configure_build build-fuzz -DKREQ_BUILD_FUZZ=ON -DKREQ_SANITIZE=address \
    -DKREQ_BUILD_TESTS=OFF -DKREQ_BUILD_BENCH=OFF
  for t in "${FUZZ_TARGETS[@]}"; do
    rm -rf "build-fuzz/corpus-$t" && mkdir -p "build-fuzz/corpus-$t"
    echo "-- fuzz_$t"
    build-fuzz/fuzz/fuzz_$t -max_total_time="$SHARE" -max_len=4096 \
      -print_final_stats=1 "build-fuzz/corpus-$t" "fuzz/corpus/$t" 2>&1 | tail -n 12
  done
fi

say "all stages passed: $STAGES"
echo "kreq: $PASSED passed, 0 failed"
