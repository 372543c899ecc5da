#!/usr/bin/env bash
# Fails when a tracked C++ file is not formatted as .clang-format says.
# The reference formatter is Debian 12's clang-format 14; other major versions format some
# constructs differently, so with another version the check reports and exits 77 (skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
major=$(clang-format --version | sed -n 's/.*version \([0-9]*\).*/\1/p')
files=$(git ls-files '*.cc' '*.h' 2>/dev/null || find . -name '*.cc' -o -name '*.h' | grep -v '^./build')
if [[ "$major" != "14" ]]; then
  echo "check-format: clang-format $major is not the reference version 14; not checking"
  exit 77
fi
# shellcheck disable=SC2086
clang-format --dry-run -Werror $files
echo "check-format: $(echo "$files" | wc -w) files formatted"
