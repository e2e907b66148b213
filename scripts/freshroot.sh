#!/usr/bin/env bash
# freshroot.sh — runs the README's commands on a brand-new minimal Debian 12,
# from a clean clone of the current commit (test.sh's "freshroot" stage).
#
# Why: a developer machine (and CI's) keeps whatever earlier work installed,
# so a green CI said nothing about a new user's machine; twice the README's
# commands failed there (no librdkafka for the demo, no curl/curl.h for
# librdkafka) while CI passed. Here every run starts from a minimal Debian 12
# root (debootstrap --variant=minbase, nothing of kreq's dependencies in it):
# whatever scripts/setup.sh forgets to install makes this stage fail.
#
# What the root gets from the host: its network set-up and nothing else —
#   - the apt sources (sources.list, sources.list.d/*.list|*.sources, and
#     the keyrings they name that the root lacks), and the apt.conf.d files
#     that set Acquire:: options (proxies, validity checks);
#   - the CA certificates (HTTPS may pass through a proxy whose certificate
#     authority only the host trusts), as local certificates that the root's
#     own ca-certificates package (installed by setup.sh) adds to its bundle;
#   - /etc/resolv.conf and the *_proxy environment variables;
# plus a clean clone of HEAD (uncommitted changes are not in it).
#
# It makes two roots. In the first it runs, as root, in this order:
#   1. the container image's build stage (Dockerfile): scripts/setup.sh
#      --build, scripts/librdkafka.sh, scripts/build-install.sh /out;
#   2. scripts/demo.sh                     (the README's main command);
#   3. KREQ_TEST_STAGES="format unit" scripts/test.sh (the README's test
#      command: set-up, format check, release build with -Werror, unit
#      suites).
# The second, as the image's runtime stage, gets only scripts/setup.sh
# --runtime, the built librdkafka and what step 1 installed; every binary
# and library must resolve its shared libraries there and kreqd and kreq
# must run.
# Each root runs in private mount and PID namespaces (chroot): /proc, /sys
# and /dev are mounted for it only, and when the stage ends, whichever way,
# the kernel kills every process left in it and drops those mounts.
#
# The minimal base system is debootstrapped once from the bookworm source in
# the host's apt configuration (read at run time) and cached as a tarball of
# the pristine root under the cache root; each run unpacks it afresh.
#
# Usage: scripts/freshroot.sh
#   Needs root (re-runs itself with sudo when available), debootstrap,
#   unshare (util-linux), git. Exit 0 when every step passed. The roots stay
#   in build/freshroot/ after a failure, for inspection; the next run
#   deletes them.
#
# Environment:
#   KREQ_KAFKA_CACHE        cache root (default $HOME/.cache/kreq)
#   KREQ_FRESHROOT_TIMEOUT  seconds the whole stage may take (default 2400);
#                           then everything in the roots is killed
#   KREQ_FRESHROOT_STAGES   test.sh stages run in the root (default "format unit")
set -euo pipefail
cd "$(dirname "$0")/.."
readonly SRC=$(pwd)
readonly CACHE_ROOT="${KREQ_KAFKA_CACHE:-${HOME:-/tmp}/.cache/kreq}"
readonly TIMEOUT="${KREQ_FRESHROOT_TIMEOUT:-2400}"
readonly STAGES="${KREQ_FRESHROOT_STAGES:-format unit}"
readonly SUITE=bookworm
readonly WORK="$SRC/build/freshroot"

log() { printf 'freshroot: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "needs root (debootstrap, chroot, mounts) and sudo is absent"
  exec sudo --preserve-env=KREQ_KAFKA_CACHE,KREQ_FRESHROOT_TIMEOUT,KREQ_FRESHROOT_STAGES \
    "$SRC/scripts/freshroot.sh" "$@"
fi
for tool in debootstrap unshare chroot git tar; do
  command -v "$tool" >/dev/null || die "$tool not found (scripts/setup.sh installs it)"
done

# apt_mirror: the first URI of an enabled "deb" source for $SUITE in the
# host's apt configuration (deb822 .sources first, then one-line lists).
apt_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$SUITE" '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") && enabled != "no" && uri != "")
          { print uri; found = 1; exit }
        types = suites = uri = enabled = ""
      }
      /^[ \t]*$/ { flush(); next }
      /^#/ { next }
      tolower($1) == "types:" { $1 = ""; types = $0 }
      tolower($1) == "suites:" { $1 = ""; suites = $0 }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "enabled:" { enabled = tolower($2) }
      END { if (!found) flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2 }'
  done
}

# base_tarball: path of the cached pristine minimal root, made once.
base_tarball() {
  local mirror=$1 tarball
  tarball="$CACHE_ROOT/freshroot/$SUITE-minbase-$(printf '%s' "$mirror" | sha256sum | cut -c1-12).tar.gz"
  mkdir -p "$CACHE_ROOT/freshroot"
  exec 8>"$tarball.lock"
  flock 8
  if [ ! -s "$tarball" ]; then
    local tmp="$CACHE_ROOT/freshroot/.debootstrap.$$"
    rm -rf --one-file-system "$tmp"
    log "debootstrap --variant=minbase $SUITE from $mirror (once; cached as $tarball)"
    debootstrap --variant=minbase "$SUITE" "$tmp" "$mirror" >"$WORK/debootstrap.log" 2>&1 ||
      { tail -n 30 "$WORK/debootstrap.log" >&2; rm -rf --one-file-system "$tmp"; die "debootstrap failed"; }
    # what debootstrap copied from the host or left behind goes: the
    # tarball is the pristine minimal system only
    rm -f "$tmp/etc/resolv.conf" "$tmp/etc/hostname"
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    find "$tmp/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -delete
    tar --numeric-owner -czf "$tarball.tmp" -C "$tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf --one-file-system "$tmp"
  fi
  exec 8>&-
  echo "$tarball"
}

# network_setup: the host's apt sources, apt network options, CA
# certificates and resolver, into the root.
network_setup() { # root
  local R=$1 f key
  rm -f "$R/etc/apt/sources.list"
  [ -f /etc/apt/sources.list ] && cp /etc/apt/sources.list "$R/etc/apt/"
  for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    cp "$f" "$R/etc/apt/sources.list.d/"
    # keyrings a source names (Signed-By / signed-by=) that the root lacks
    for key in $(grep -ohiE '(signed-by[:=][[:space:]]*)/[^] ,]+' "$f" | sed -E 's/^[^/]*//'); do
      [ -f "$key" ] && [ ! -e "$R$key" ] && install -D -m 0644 "$key" "$R$key"
    done
  done
  for f in /etc/apt/trusted.gpg.d/*; do
    [ -f "$f" ] && [ ! -e "$R$f" ] && cp "$f" "$R/etc/apt/trusted.gpg.d/"
  done
  for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
    [ -f "$f" ] && grep -qE '^[[:space:]]*Acquire' "$f" && cp "$f" "$R/etc/apt/apt.conf.d/"
  done
  # CA certificates: one file per certificate (update-ca-certificates
  # links each), and the bundle itself until ca-certificates is installed
  local bundle=/etc/ssl/certs/ca-certificates.crt
  [ -f "$bundle" ] || die "the host has no $bundle"
  mkdir -p "$R/usr/local/share/ca-certificates/host" "$R/etc/ssl/certs"
  awk -v dir="$R/usr/local/share/ca-certificates/host" '
    /-----BEGIN CERTIFICATE-----/ { n++; out = sprintf("%s/host-%03d.crt", dir, n) }
    out { print > out }
    /-----END CERTIFICATE-----/ { close(out); out = "" }' "$bundle"
  cp "$bundle" "$R/etc/ssl/certs/ca-certificates.crt"
  rm -f "$R/etc/resolv.conf"
  cp -L /etc/resolv.conf "$R/etc/resolv.conf"
  # what any installed Debian has and debootstrap does not write
  [ -s "$R/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$R/etc/hosts"
}

# new_root DIR: a pristine minimal Debian 12 in DIR, with the host's
# network set-up.
new_root() {
  rm -rf --one-file-system "$1"
  mkdir -p "$1"
  tar --numeric-owner -xzf "$tarball" -C "$1"
  network_setup "$1"
}

# in_root DIR STEP SCRIPT: run the bash SCRIPT in the root DIR, in private
# mount and PID namespaces: the mounts are never seen by the host, and when
# the namespace's first process exits the kernel kills every process left
# in it and drops its mounts, also on timeout or kill. Bounded by what is
# left of the stage's time.
in_root() {
  local dir=$1 step=$2 left rc
  printf '%s\n' "set -euo pipefail" "$3" >"$dir/root/freshroot-step.sh"
  left=$((TIMEOUT - ($(date +%s) - start)))
  [ "$left" -gt 0 ] || die "timed out (KREQ_FRESHROOT_TIMEOUT=$TIMEOUT s) before: $step"
  log "---- $step"
  set +e
  timeout --kill-after=30 "$left" unshare --mount --pid --fork --kill-child --propagation private -- \
    bash -c 'set -e
      r=$1; shift
      mount -t proc proc "$r/proc"
      mount -t sysfs sysfs "$r/sys"
      mount --rbind /dev "$r/dev"
      exec chroot "$r" /usr/bin/env -i "$@" /bin/bash /root/freshroot-step.sh' \
    freshroot "$dir" "${envs[@]}"
  rc=$?
  set -e
  [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] ||
    die "timed out (KREQ_FRESHROOT_TIMEOUT=$TIMEOUT s) in: $step; the roots are kept in $WORK"
  [ "$rc" -eq 0 ] ||
    die "failed on a fresh Debian 12 (exit $rc, $(($(date +%s) - start)) s in): $step;" \
      "something it needs is missing from scripts/setup.sh or the scripts; the roots are kept in $WORK"
}

start=$(date +%s)
envs=(HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb)
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  [ -n "${!v:-}" ] && envs+=("$v=${!v}")
done
mirror=$(apt_mirror | head -n1)
[ -n "$mirror" ] || die "no enabled 'deb' source for $SUITE in /etc/apt/sources.list{,.d}"
mkdir -p "$WORK"
tarball=$(base_tarball "$mirror")

build_root="$WORK/root" runtime_root="$WORK/runtime-root"
rm -rf --one-file-system "$runtime_root"
new_root "$build_root"
commit=$(git rev-parse HEAD)
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
  log "note: uncommitted changes are not tested here, only HEAD $commit"
git clone -q --no-checkout "$SRC" "$build_root/root/kreq"
git -C "$build_root/root/kreq" checkout -q --detach "$commit"
log "root ready in $(($(date +%s) - start)) s: Debian $(cat "$build_root/etc/debian_version") minbase, kreq $(git rev-parse --short HEAD)"

in_root "$build_root" "the image's build stage: scripts/setup.sh --build, librdkafka.sh, build-install.sh" '
cd /root/kreq
export KREQ_KAFKA_CACHE=/opt/kreq
scripts/setup.sh --build
scripts/librdkafka.sh >/dev/null
scripts/build-install.sh /out >/dev/null'

new_root "$runtime_root"
cp "$build_root/root/kreq/scripts/setup.sh" "$runtime_root/root/setup.sh"
cp -a "$build_root/opt/kreq" "$runtime_root/opt/kreq"
cp -a "$build_root/out/usr/local/." "$runtime_root/usr/local/"
in_root "$runtime_root" "the image's runtime stage: scripts/setup.sh --runtime, then kreqd and kreq run" '
/root/setup.sh --runtime
ldconfig
missing=$(find /usr/local/bin /usr/local/lib -type f \( -perm -u+x -o -name "*.so*" \) -exec ldd {} + 2>&1 |
  grep "not found" || true)
[ -z "$missing" ] || { echo "unresolved shared libraries:" >&2; echo "$missing" >&2; exit 1; }
kreqd --version && kreq --version
echo "runtime: every binary and library resolves its shared libraries"'
rm -rf --one-file-system "$runtime_root"

in_root "$build_root" "scripts/demo.sh (the README's main command)" '
cd /root/kreq
scripts/demo.sh'

in_root "$build_root" "KREQ_TEST_STAGES=\"$STAGES\" scripts/test.sh (the README's test command)" "
cd /root/kreq
KREQ_TEST_STAGES=\"$STAGES\" scripts/test.sh"

rm -rf --one-file-system "$build_root"
log "passed in $(($(date +%s) - start)) s: the image's build and runtime stages, scripts/demo.sh" \
  "and scripts/test.sh ($STAGES) on a fresh Debian 12"
