#!/usr/bin/env bash
# Builds api/kubevirt/fuzz_admit.cc with clang++ and libFuzzer (+ASan/UBSan) and runs it for a
# bounded number of inputs over the seed corpus. Used by the `kubevirt_fuzz` CTest test.
# Usage: run_fuzz.sh CLANGXX WORKDIR SOURCE_ROOT SEED_DIR RUNS SOURCES...
set -euo pipefail
clangxx=$1 work=$2 root=$3 seeds=$4 runs=$5
shift 5
mkdir -p "$work/corpus"
bin=$work/fuzz_admit
# Rebuild only when a source is newer than the binary.
rebuild=0
[[ -x $bin ]] || rebuild=1
for src in "$@"; do [[ $src -nt $bin ]] && rebuild=1; done
if [[ $rebuild == 1 ]]; then
  "$clangxx" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$root" -o "$bin.tmp" "$@" -lyaml-cpp
  mv "$bin.tmp" "$bin"
fi
# New inputs go to the scratch corpus; the checked-in seeds are only read. The run stops at
# RUNS inputs or FUZZ_SECONDS (default 30) of fuzzing, whichever comes first, to bound CI time.
exec "$bin" -artifact_prefix="$work/" -runs="$runs" -max_total_time="${FUZZ_SECONDS:-30}" -max_len=16384 -timeout=20 -rss_limit_mb=2048 "$work/corpus" "$seeds"
