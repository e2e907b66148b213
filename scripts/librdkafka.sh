#!/usr/bin/env bash
# librdkafka.sh — builds the librdkafka kreq is tested and benchmarked with.
#
# Why: Debian 12 ships librdkafka 2.0.2, whose transactional producer keeps
# its main thread busy-polling for ~1 ms around every AddPartitionsToTxn
# (confluentinc/librdkafka#4671, fixed in 2.3.1): a transactional kreqd
# spends ~3 ms of CPU per call at low load and gets ~40% fewer calls/s
# (docs/PERFORMANCE.md). Only package registries are reachable from CI, and
# only through their own clients, so the source comes from Rust's package
# registry: the rdkafka-sys crate vendors librdkafka's release tree
# unchanged. `cargo fetch` downloads it through a throw-away manifest
# (scripts/librdkafka/Cargo.toml, which pins rdkafka-sys's exact version)
# into a fresh CARGO_HOME; the archive is then checked against the sha256
# pinned below and its librdkafka/ directory is built. No address is written
# here, nor a Cargo.lock (cargo writes its registry's address into one):
# cargo knows its registry, and the one archive that is used is pinned by its
# sha256 here; the other crates cargo downloads on the way are never used. Debian 12's own `cargo` package
# (0.66) cannot read the registry's sparse index; `cargo-web` (1.96, in
# bookworm, installs /usr/bin/cargo) can, and scripts/setup.sh installs it.
#
# Three patches are applied (scripts/librdkafka/*.patch, each with its reason
# at its top): txn-register-at-once.patch registers a transaction's
# partitions at once instead of on a 1 ms timer, which is 1-2 ms of every
# transactional call; send-offsets-timeout.patch makes
# send_offsets_to_transaction() return at its timeout while it waits for a
# group coordinator (it could block a worker's loop for good after a Kafka
# outage); resume-wakeup.patch makes a resumed partition fetch at once
# instead of up to 1 s later. kreq works with an unpatched librdkafka (a
# distribution's, say); its transactional calls are then that much slower,
# that hang can happen, and a worker that paused (at worker.max.in.flight,
# or while a crash suspect runs alone) fetches again up to 1 s late
# (docs/operations.md).
#
# Build choices: a shared library (same ABI as Debian's, so kreq builds
# against either), SSL, SASL (Cyrus), zlib and zstd on; lz4 built in; curl
# off (only used for OIDC token fetching). C11 threads are OFF so that
# librdkafka starts its threads with pthread_create(), which ThreadSanitizer
# intercepts (glibc's thrd_create() is not). HAVE_ATOMICS_{32,64}_ATOMIC are
# defined by hand: librdkafka's CMake build (unlike its ./configure) never
# sets them, and then rd_atomic32_set()/rd_atomic64_set() compile to plain
# stores (rdatomic.h's last fallback branch), which TSan rightly reports as
# races.
#
# Flavour "tsan" is the same library built with -fsanitize=thread, for the
# TSan stage: TSan must see librdkafka's own atomics and locks, or every
# hand-over between librdkafka's threads and kreq's looks like a race.
#
# Usage:
#   scripts/librdkafka.sh [release|tsan]
#       Fetch, verify, build and install the flavour (default release) into
#       the cache (skipped when already there); print exactly one line on
#       stdout: the install prefix. Use it as
#         export PKG_CONFIG_PATH="$(scripts/librdkafka.sh)/lib/pkgconfig"
#       Binaries built against it find it through their RPATH (CMake).
#
# Environment:
#   KREQ_KAFKA_CACHE   cache root (default $HOME/.cache/kreq), shared with kafka.sh
#   KREQ_JOBS          parallel build jobs (default 2)
#
# Needs: cargo (1.78 or later: sparse index), tar, cmake, a
# C/C++ compiler, libssl-dev, libsasl2-dev, zlib1g-dev, libzstd-dev,
# libcurl4-openssl-dev (2.12.1's rdkafka_conf.c includes curl/curl.h even
# with WITH_CURL=OFF) and patch; scripts/setup.sh installs them.
set -euo pipefail

readonly VERSION="2.12.1"
readonly CRATE="rdkafka-sys-4.10.0+$VERSION"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly MANIFEST_DIR="$SCRIPT_DIR/librdkafka"
readonly SHA256="e234cf318915c1059d4921ef7f75616b5219b10b46e9f3a511a15eb4b56a3f77"
readonly CACHE_ROOT="${KREQ_KAFKA_CACHE:-${HOME:-/tmp}/.cache/kreq}"
readonly FLAVOUR="${1:-release}"
readonly JOBS="${KREQ_JOBS:-2}"
readonly ATOMICS="-DHAVE_ATOMICS_32_ATOMIC=1 -DHAVE_ATOMICS_64_ATOMIC=1"
case "$FLAVOUR" in
  release) PREFIX="$CACHE_ROOT/librdkafka-$VERSION" BUILD_TYPE=Release CFLAGS_X="$ATOMICS" LDFLAGS_X="" ;;
  tsan) PREFIX="$CACHE_ROOT/librdkafka-$VERSION-tsan" BUILD_TYPE=RelWithDebInfo
    CFLAGS_X="$ATOMICS -fsanitize=thread" LDFLAGS_X="-fsanitize=thread" ;;
  *) echo "usage: $0 [release|tsan]" >&2; exit 2 ;;
esac
readonly PREFIX BUILD_TYPE CFLAGS_X LDFLAGS_X
readonly OPTIONS=(-DCMAKE_BUILD_TYPE="$BUILD_TYPE" -DCMAKE_C_FLAGS="$CFLAGS_X"
  -DCMAKE_SHARED_LINKER_FLAGS="$LDFLAGS_X" -DCMAKE_INSTALL_LIBDIR=lib
  -DRDKAFKA_BUILD_STATIC=OFF -DRDKAFKA_BUILD_EXAMPLES=OFF -DRDKAFKA_BUILD_TESTS=OFF
  -DWITH_SSL=ON -DWITH_SASL=ON -DWITH_ZLIB=ON -DWITH_ZSTD=ON -DWITH_CURL=OFF
  -DENABLE_LZ4_EXT=OFF -DWITH_C11THREADS=OFF)
readonly PATCHES=(txn-register-at-once.patch send-offsets-timeout.patch resume-wakeup.patch)
# The marker holds the options and patches it was built with: changing
# either rebuilds.
STAMP="$CRATE ${OPTIONS[*]}"
for p in "${PATCHES[@]}"; do
  STAMP+=" $p:$(sha256sum "$MANIFEST_DIR/$p" | cut -c1-16)"
done
readonly STAMP

log() { printf 'librdkafka.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# fetch WORK: download $CRATE.crate with cargo into WORK/src.crate.
fetch() {
  local work=$1 cargo_ver
  command -v cargo >/dev/null ||
    die "cargo not found: run scripts/setup.sh (Debian 12 package cargo-web)"
  cargo_ver=$(cargo --version 2>/dev/null | awk '{ print $2 }')
  [[ "$(printf '%s\n' 1.78.0 "$cargo_ver" | sort -V | head -n1)" == 1.78.0 ]] ||
    die "cargo $cargo_ver is too old (needs 1.78+: sparse index);" \
      "on Debian 12 install cargo-web instead of cargo (scripts/setup.sh does)"
  # A copy of the manifest (cargo may write next to it) and a CARGO_HOME of
  # its own: the user's cargo set-up is neither used nor touched.
  mkdir -p "$work/manifest" "$work/cargo"
  cp "$MANIFEST_DIR/Cargo.toml" "$work/manifest/"
  : >"$work/manifest/lib.rs"
  log "fetching $CRATE with cargo $cargo_ver"
  CARGO_HOME="$work/cargo" cargo fetch --manifest-path "$work/manifest/Cargo.toml" \
    >"$work/cargo.log" 2>&1 || { tail -n 20 "$work/cargo.log" >&2; die "cargo fetch failed"; }
  local crates=("$work"/cargo/registry/cache/*/"$CRATE.crate")
  [[ -f "${crates[0]}" ]] || die "cargo fetch left no $CRATE.crate in $work/cargo/registry/cache"
  mv "${crates[0]}" "$work/src.crate"
  rm -rf "$work/cargo"
}

build() {
  local work="$CACHE_ROOT/.librdkafka-$VERSION-$FLAVOUR.build"
  rm -rf "$work" && mkdir -p "$work"
  fetch "$work"
  local got
  got=$(sha256sum "$work/src.crate" | cut -d' ' -f1)
  [[ "$got" == "$SHA256" ]] || die "$CRATE.crate: sha256 $got, expected $SHA256"
  tar -xzf "$work/src.crate" -C "$work"
  local src="$work/$CRATE/librdkafka"
  [[ -f "$src/CMakeLists.txt" ]] || die "$CRATE.crate has no librdkafka/CMakeLists.txt"
  command -v patch >/dev/null || die "patch not found: run scripts/setup.sh"
  local p
  for p in "${PATCHES[@]}"; do
    patch -d "$src" -p1 --forward --quiet <"$MANIFEST_DIR/$p" >"$work/patch.log" 2>&1 ||
      { cat "$work/patch.log" >&2; die "applying $p failed"; }
  done
  log "building librdkafka $VERSION ($FLAVOUR) into $PREFIX (a minute or two, once)"
  cmake -S "$src" -B "$work/build" -G Ninja "${OPTIONS[@]}" -DCMAKE_INSTALL_PREFIX="$PREFIX" \
    >"$work/cmake.log" 2>&1 ||
    { tail -n 30 "$work/cmake.log" >&2; die "configuring librdkafka failed"; }
  grep -q '#define WITH_C11THREADS 0' "$work/build/generated/config.h" ||
    die "librdkafka configured with C11 threads; TSan needs pthread_create"
  cmake --build "$work/build" -j"$JOBS" >"$work/build.log" 2>&1 ||
    { tail -n 30 "$work/build.log" >&2; die "building librdkafka failed"; }
  rm -rf "$PREFIX"
  cmake --install "$work/build" >/dev/null
  echo "$STAMP" >"$PREFIX/.complete"
  rm -rf "$work"
}

mkdir -p "$CACHE_ROOT"
# Serialise concurrent builds; re-check under the lock.
exec 9>"$CACHE_ROOT/.librdkafka-$VERSION-$FLAVOUR.lock"
flock 9
[[ "$(cat "$PREFIX/.complete" 2>/dev/null)" == "$STAMP" ]] || build
[[ -f "$PREFIX/lib/pkgconfig/rdkafka.pc" ]] || die "$PREFIX has no lib/pkgconfig/rdkafka.pc"
echo "$PREFIX"
