#!/usr/bin/env bash
# Builds image/fuzz_parse.cc with clang++ and libFuzzer (+ASan/UBSan, libstdc++ assertions) and
# runs it for a bounded number of inputs, seeded with image/testdata/parse_fuzz/ (manifests,
# indexes, docker configs, challenges, references, ranges). Used by the `image_parse_fuzz` CTest
# test. Usage: run_fuzz_parse.sh CLANGXX WORKDIR SOURCE_ROOT RUNS SOURCES...
set -euo pipefail
clangxx=$1 work=$2 root=$3 runs=$4
shift 4
mkdir -p "$work/corpus"
bin=$work/fuzz_parse
rebuild=0
[[ -x $bin ]] || rebuild=1
for src in "$@" "$root/image/auth.h" "$root/image/manifest.h" "$root/image/reference.h" \
           "$root/image/image.h" "$root/common/result.h"; do
  [[ $src -nt $bin ]] && rebuild=1
done
if [[ $rebuild == 1 ]]; then
  "$clangxx" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -D_GLIBCXX_ASSERTIONS -I"$root" -o "$bin.tmp" "$@" -lcrypto
  mv "$bin.tmp" "$bin"
fi
# The run stops at RUNS inputs or FUZZ_SECONDS (default 40) of fuzzing, whichever comes first.
"$bin" -artifact_prefix="$work/" -runs="$runs" -max_total_time="${FUZZ_SECONDS:-40}" \
  -max_len=16384 -timeout=20 -rss_limit_mb=2048 "$work/corpus" "$root/image/testdata/parse_fuzz"
