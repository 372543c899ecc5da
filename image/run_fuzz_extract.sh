#!/usr/bin/env bash
# Builds image/fuzz_extract.cc with clang++ and libFuzzer (+ASan/UBSan) and runs it for a bounded
# number of inputs, seeded with the layers tests/fixtures/containerdisk/make-hostile-tar.py writes
# (generated here, nothing binary is checked in). Used by the `image_extract_fuzz` CTest test.
# Usage: run_fuzz_extract.sh CLANGXX WORKDIR SOURCE_ROOT RUNS SOURCES...
set -euo pipefail
clangxx=$1 work=$2 root=$3 runs=$4
shift 4
mkdir -p "$work/corpus" "$work/seeds"
bin=$work/fuzz_extract
rebuild=0
[[ -x $bin ]] || rebuild=1
for src in "$@" "$root/image/disk.h" "$root/common/exec.h" "$root/common/result.h"; do
  [[ $src -nt $bin ]] && rebuild=1
done
if [[ $rebuild == 1 ]]; then
  "$clangxx" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$root" -o "$bin.tmp" "$@" -larchive -lz
  mv "$bin.tmp" "$bin"
fi
if [[ ! -e $work/seeds/.done ]]; then
  printf 'edgevirt disk' > "$work/seeds/disk.img"
  for c in dotdot absolute symlink-disk symlink-dir symlink-escape hardlink-out hardlink-in device \
           empty two whiteout opaque nofooter truncated; do
    python3 "$root/tests/fixtures/containerdisk/make-hostile-tar.py" "$c" "$work/seeds/$c.tar" "$work/seeds/disk.img"
  done
  mkdir -p "$work/seedroot/disk" "$work/seedroot/custom"
  printf 'qcow2?' > "$work/seedroot/disk/disk.img"; printf 'raw' > "$work/seedroot/custom/disk.img"
  tar --owner=107 --group=107 --numeric-owner --mtime=@0 -C "$work/seedroot" -cf "$work/seeds/gnu.tar" disk
  tar --format=pax -C "$work/seedroot" -cf "$work/seeds/pax.tar" .
  rm -rf "$work/seedroot" "$work/seeds/disk.img"
  touch "$work/seeds/.done"
fi
# Scratch files of the target on tmpfs when there is one (the extractor fsyncs every disk it
# writes), removed afterwards.
scratch=$(mktemp -d "$( [[ -d /dev/shm && -w /dev/shm ]] && echo /dev/shm || echo "$work")/ev-fuzz-extract.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
export TMPDIR=$scratch
# The run stops at RUNS inputs or FUZZ_SECONDS (default 40) of fuzzing, whichever comes first.
"$bin" -artifact_prefix="$work/" -runs="$runs" -max_total_time="${FUZZ_SECONDS:-40}" \
  -max_len=8192 -timeout=20 -rss_limit_mb=2048 "$work/corpus" "$work/seeds"
