#!/usr/bin/env bash
# check_install.sh BUILD_DIR — installs the build into a scratch
# prefix and builds a consumer against the INSTALLED tree twice: once with
# CMake's find_package(kreq), once with pkg-config. Then builds examples/
# (a caller and a kreqd handler plugin) against the installed tree the same
# two ways, and checks that the installed kreqd loads the plugin
# (`kreqd --check`). Fails on any error.
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
san=${KREQ_SAN_FLAGS:-} # the library's sanitizer flags, if any
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null

mkdir -p "$work/app"
cat >"$work/app/main.c" <<'C'
#include <kreq/conf.h>
#include <kreq/error.h>
#include <kreq/keyring.h>
#include <stdio.h>
#include <string.h>
int main(void)
{
	kreq_conf_t *c = kreq_conf_new();
	kreq_keyring_t *kr = kreq_keyring_new();
	int rc = kreq_conf_set(c, "no.such.property", "1", NULL, 0);
	printf("%s %s\n", kreq_version(), kreq_err_name(rc));
	kreq_keyring_release(kr);
	kreq_conf_destroy(c);
	return rc == KREQ_ENOENT && strcmp(kreq_strerror(KREQ_ETIMEDOUT), "timed out") == 0 ? 0 : 1;
}
C
cat >"$work/app/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.20)
project(app C)
find_package(kreq 0.1 REQUIRED)
add_executable(app_shared main.c)
target_link_libraries(app_shared PRIVATE kreq::kreq)
add_executable(app_static main.c)
target_link_libraries(app_static PRIVATE kreq::kreq_static)
CM
cmake -S "$work/app" -B "$work/app/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_C_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" >/dev/null
cmake --build "$work/app/build" >/dev/null
LD_LIBRARY_PATH="$work/prefix/lib" "$work/app/build/app_shared"
"$work/app/build/app_static"

export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
# shellcheck disable=SC2046
cc $san -o "$work/app/pc" "$work/app/main.c" $(pkg-config --cflags --libs kreq)
LD_LIBRARY_PATH="$work/prefix/lib" "$work/app/pc"
# static libkreq over shared dependencies (Debian does not ship static
# archives of every librdkafka dependency, so a fully static link is not
# something users here can do)
# shellcheck disable=SC2046
cc $san -o "$work/app/pc_static" "$work/app/main.c" $(pkg-config --cflags kreq) \
  "$work/prefix/lib/libkreq.a" $(pkg-config --libs rdkafka libprotobuf-c libsodium libcrypto jansson) -lpthread \
  -Wl,-rpath,"$(pkg-config --variable=libdir rdkafka)"
"$work/app/pc_static"
# no internal symbol leaks from the shared library
if nm -D --defined-only "$work/prefix/lib/libkreq.so" | awk '{print $3}' | grep -v '^kreq_' | grep -q .; then
  echo "libkreq.so exports symbols outside the kreq_ prefix:" >&2
  nm -D --defined-only "$work/prefix/lib/libkreq.so" | awk '{print $3}' | grep -v '^kreq_' >&2
  exit 1
fi

# examples/ against the installed tree: CMake package, then pkg-config
cmake -S "$src/examples" -B "$work/examples" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_C_FLAGS="$san" -DCMAKE_EXE_LINKER_FLAGS="$san" -DCMAKE_MODULE_LINKER_FLAGS="$san" >/dev/null
cmake --build "$work/examples" >/dev/null
# shellcheck disable=SC2046
cc $san -o "$work/app/call_method_pc" "$src/examples/call_method.c" $(pkg-config --cflags --libs kreq)
# shellcheck disable=SC2046
cc $san -shared -fPIC -o "$work/app/hello_plugin_pc.so" "$src/examples/hello_plugin.c" \
  $(pkg-config --cflags --libs kreq)
export LD_LIBRARY_PATH="$work/prefix/lib"
for exe in "$work/examples/call_method" "$work/app/call_method_pc"; do
  rc=0
  "$exe" >/dev/null 2>"$work/usage.err" || rc=$?
  if [ "$rc" -ne 2 ] || ! grep -q "usage: call_method" "$work/usage.err"; then
    echo "$exe without arguments: exit $rc, want 2 and its usage" >&2
    exit 1
  fi
done

# the installed kreqd loads the installed-tree plugins
"$work/prefix/bin/kreq" keygen --type hmac-sha256 --id installed --out "$work/k.key" >/dev/null
for plugin in "$work/examples/hello_plugin.so" "$work/app/hello_plugin_pc.so"; do
  cat >"$work/kreqd.conf" <<CONF
service = greeter
keyring.file = $work/k.key
kafka.bootstrap.servers = 127.0.0.1:1
kreqd.plugins = $plugin
CONF
  if ! "$work/prefix/bin/kreqd" --config "$work/kreqd.conf" --check >"$work/check.out" 2>&1 ||
    ! grep -q "greeter.hello .*plugin greeter" "$work/check.out"; then
    echo "installed kreqd --check with $plugin failed:" >&2
    cat "$work/check.out" >&2
    exit 1
  fi
done
echo "install: find_package, pkg-config (shared and static), examples, kreqd plugin OK"
