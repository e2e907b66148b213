#!/usr/bin/env bash
# build-install.sh — the container image's build step (Dockerfile, stage
# "build"): builds kreq (release, no tests or benchmarks) against the
# librdkafka that scripts/librdkafka.sh builds, the one the tests use, and
# installs kreqd, kreq, libkreq and the example plugin under
# DESTDIR/usr/local. CI's fresh-root stage (scripts/freshroot.sh) runs it on
# a new Debian 12 after `scripts/setup.sh --build`, exactly as the image does.
#
# Usage: scripts/build-install.sh DESTDIR
# Environment: KREQ_KAFKA_CACHE (where librdkafka.sh builds librdkafka; the
# binaries find it there through their RPATH, so the image copies that
# directory), KREQ_JOBS (parallel jobs, default 2).
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DESTDIR" >&2; exit 2; }
destdir=$(mkdir -p "$1" && cd "$1" && pwd)
cd "$(dirname "$0")/.."
build=build-image
RDKAFKA_PREFIX=$(scripts/librdkafka.sh)
export PKG_CONFIG_PATH="$RDKAFKA_PREFIX/lib/pkgconfig"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DKREQ_BUILD_TESTS=OFF -DKREQ_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"${KREQ_JOBS:-2}"
DESTDIR="$destdir" cmake --install "$build" --prefix /usr/local >/dev/null
install -D -m 0644 "$build/examples/hello_plugin.so" \
  "$destdir/usr/local/lib/kreq/plugins/hello_plugin.so"
echo "build-install: kreq installed under $destdir/usr/local (librdkafka $(pkg-config --modversion rdkafka) from $RDKAFKA_PREFIX)" >&2
