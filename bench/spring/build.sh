#!/usr/bin/env bash
# build.sh — builds the Spring for Apache Kafka peer benchmark (pom.xml beside
# this file) with Maven and prints the directory of its jars on stdout; run it
# as  java -cp "$(bench/spring/build.sh)/*" io.kreq.bench.SpringPeer ...
#
# Why a cache: like scripts/kafka.sh for the broker jars, the jar and its
# runtime dependencies go to $KREQ_KAFKA_CACHE (default $HOME/.cache/kreq)
# /spring-bench/<hash of pom.xml and sources>/, outside the source tree, so a
# second run costs nothing and needs no network. Maven runs offline (-o)
# first; only if that fails (the first build on a machine) it runs online to
# fetch what is missing into the local Maven repository.
# Diagnostics on stderr; exit 1 if the build fails.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${KREQ_KAFKA_CACHE:-${HOME:-/tmp}/.cache/kreq}"
command -v mvn >/dev/null || { echo "build.sh: mvn not found (Debian package 'maven')" >&2; exit 1; }
hash=$(cd "$HERE" && find pom.xml src -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
OUT="$CACHE_ROOT/spring-bench/$hash"
if [[ -f "$OUT/libs/.complete" ]]; then
  echo "$OUT/libs"
  exit 0
fi
mkdir -p "$CACHE_ROOT/spring-bench"
exec 9>"$CACHE_ROOT/spring-bench/.lock"
flock 9
if [[ ! -f "$OUT/libs/.complete" ]]; then
  rm -rf "$OUT" && mkdir -p "$OUT"
  build() {
    # (Maven 3.8 prints bare colour resets even in batch mode: strip them.)
    mvn -q -B "$@" -f "$HERE/pom.xml" -Dkreq.build.dir="$OUT/target" package \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$OUT/libs" \
      2>&1 | sed 's/\x1b\[[0-9;]*m//g' >&2
    return "${PIPESTATUS[0]}"
  }
  if ! build -o 2>/dev/null; then
    echo "build.sh: offline build failed; fetching the dependencies with Maven" >&2
    build || { rm -rf "$OUT"; echo "build.sh: mvn failed" >&2; exit 1; }
  fi
  cp "$OUT/target/kreq-spring-peer-1.jar" "$OUT/libs/"
  touch "$OUT/libs/.complete"
fi
echo "$OUT/libs"
