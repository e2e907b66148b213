#!/usr/bin/env bash
# check_readme.sh BUILD_DIR — every C snippet of README.md compiles as shown.
#
# Why: the README's client snippet once used an undeclared errstr and leaked
# its keyring and conf; nothing compiled it. Each ```c block is extracted
# and built against kreq installed from BUILD_DIR into a temporary prefix,
# with the README's own commands: a block with main() as a program
# (`cc -o app app.c $(pkg-config --cflags --libs kreq)`), a block exporting
# a kreqd plugin as a shared object (`cc -shared -fPIC ...`). Warnings are
# errors (-std=c11 -Wall -Werror). A block that is neither fails: snippets
# are complete files a reader can copy.
set -euo pipefail
build=$1
src=$(cd "$(dirname "$0")/../.." && pwd)
san=${KREQ_SAN_FLAGS:-} # the library's sanitizer flags, if any
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
flags=$(pkg-config --cflags --libs kreq) ||
  { echo "check_readme: pkg-config kreq failed (PKG_CONFIG_PATH must reach librdkafka's .pc)" >&2; exit 1; }

awk -v dir="$work" '
  /^```c[[:space:]]*$/ { n++; out = sprintf("%s/snippet-%d.c", dir, n); next }
  /^```/ && out { close(out); out = ""; next }
  out { print > out }' "$src/README.md"
shopt -s nullglob
snippets=("$work"/snippet-*.c)
[ ${#snippets[@]} -ge 2 ] || { echo "check_readme: expected C snippets in README.md, found ${#snippets[@]}" >&2; exit 1; }
for f in "${snippets[@]}"; do
  name=$(basename "$f" .c)
  if grep -q '^int main(' "$f"; then
    cmd=(cc $san -std=c11 -Wall -Werror -o "$work/$name" "$f")
  elif grep -q 'KREQ_PLUGIN_EXPORT' "$f"; then
    cmd=(cc $san -std=c11 -Wall -Werror -shared -fPIC -o "$work/$name.so" "$f")
  else
    echo "check_readme: README.md $name is neither a program (int main) nor a plugin:" >&2
    cat -n "$f" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  if ! "${cmd[@]}" $flags 2>"$work/$name.err"; then
    echo "check_readme: README.md $name does not compile:" >&2
    cat -n "$f" >&2
    cat "$work/$name.err" >&2
    exit 1
  fi
  echo "check_readme: README.md $name compiles ($(head -c 60 <(grep -m1 -E '^int main\(|KREQ_PLUGIN_EXPORT' "$f")))"
done
echo "check_readme: OK (${#snippets[@]} snippets)"
