#!/usr/bin/env bash
# setup.sh — installs everything kreq needs on Debian 12, if missing.
# Safe to run any number of times: it only calls apt-get when a package is
# absent. Needs root (or sudo) the first time.
#
# librdkafka is not taken from Debian (2.0.2, see scripts/librdkafka.sh):
# the fourth line of packages is what fetching (cargo-web: a cargo that
# reads the registry's sparse index; it provides /usr/bin/cargo) and
# building it needs.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libprotobuf-c-dev protobuf-c-compiler uuid-dev libsodium-dev libssl-dev check
  clang libclang-rt-14-dev clang-format valgrind
  ca-certificates curl cargo-web libcurl4-openssl-dev libsasl2-dev zlib1g-dev libzstd-dev debootstrap
  maven openjdk-17-jre-headless kcat
  python3 python3-cryptography libjansson-dev libmicrohttpd-dev docker-compose
)

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
