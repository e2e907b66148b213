#!/usr/bin/env bash
# format.sh — clang-format with the checked-in .clang-format.
#   scripts/format.sh          reformat every C file in place
#   scripts/format.sh --check  fail (listing files) if any file is not formatted
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.c' '*.h')
if [ "${1:-}" = "--check" ]; then
  bad=0
  for f in "${files[@]}"; do
    if ! clang-format --dry-run --Werror "$f" >/dev/null 2>&1; then
      echo "not formatted: $f (run scripts/format.sh)" >&2
      bad=1
    fi
  done
  [ $bad -eq 0 ] && echo "format: ${#files[@]} files clean" >&2
  exit $bad
fi
clang-format -i "${files[@]}"
