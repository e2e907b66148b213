#!/usr/bin/env bash
# setup.sh — installs everything kreq needs on Debian 12, if missing.
# Safe to run any number of times: it only calls apt-get when a package is
# absent. Needs root (or sudo) the first time.
#
#   scripts/setup.sh            everything: build, tests, demo, benchmarks
#   scripts/setup.sh --build    only what building kreq and its librdkafka
#                               needs (the container image's build stage)
#   scripts/setup.sh --runtime  only what running kreqd and kreq needs (the
#                               container image's runtime stage)
#
# CI's fresh-root stage (scripts/freshroot.sh) runs all three on a brand-new
# minimal Debian 12: a package missing here fails CI.
#
# librdkafka is not taken from Debian (2.0.2, see scripts/librdkafka.sh):
# fetching it needs cargo-web (a cargo that reads the registry's sparse
# index; it provides /usr/bin/cargo) and ca-certificates, building it the
# -dev packages of ssl, sasl, zlib, zstd and curl; at run time it needs
# their libraries.
set -euo pipefail

build=(
  build-essential cmake ninja-build pkg-config ca-certificates
  libprotobuf-c-dev protobuf-c-compiler libsodium-dev libssl-dev
  libjansson-dev libmicrohttpd-dev
  cargo-web libcurl4-openssl-dev libsasl2-dev zlib1g-dev libzstd-dev patch
)
runtime=(
  libprotobuf-c1 libsodium23 libssl3 libjansson4 libmicrohttpd12
  libsasl2-2 zlib1g libzstd1 ca-certificates curl
)
develop=(
  "${build[@]}" git check clang libclang-rt-14-dev clang-format valgrind curl debootstrap
  maven openjdk-17-jre-headless kcat python3 python3-cryptography docker-compose
)
case "${1:-}" in
  "") packages=("${develop[@]}") ;;
  --build) packages=("${build[@]}") ;;
  --runtime) packages=("${runtime[@]}") ;;
  *) echo "usage: $0 [--build|--runtime]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#packages[@]} packages present" >&2
  exit 0
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done" >&2
