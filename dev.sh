#!/usr/bin/env bash
# The project's one entry point for people and CI.
#
#   ./dev.sh run [-- ARGS]   install dependencies, build, run edgevirtd in the foreground with
#                            its embedded defaults (ARGS go to edgevirtd)
#   ./dev.sh test            install dependencies, build with -Werror, run the whole CTest
#                            suite, then build with ASan+UBSan and run the unit tests again
#   ./dev.sh build           build only (build/)
#   ./dev.sh format          clang-format the tree in place
#
# Environment: BUILD_DIR (default build), ASAN_BUILD_DIR (default build-asan), JOBS.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
ASAN_BUILD_DIR=${ASAN_BUILD_DIR:-$ROOT/build-asan}
JOBS=${JOBS:-$(nproc)}

deps() { "$ROOT/scripts/install-deps.sh"; }

configure_and_build() {  # dir, extra cmake args...
  local dir=$1
  shift
  cmake -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@"
  cmake --build "$dir" -j "$JOBS"
}

unit_test_targets() {  # dir: the build targets named like a test labelled `unit`
  local dir=$1 name
  local -A targets=()
  while read -r name; do targets[$name]=1; done < <(ninja -C "$dir" -t targets all |
    sed -n 's/^\([A-Za-z0-9_]*\): phony$/\1/p')
  (cd "$dir" && ctest -N -L unit) | sed -n 's/^ *Test *#[0-9]*: *//p' | while read -r name; do
    if [[ -n ${targets[$name]:-} ]]; then echo "$name"; fi
  done
}

cmd=${1:-}
shift || true
case "$cmd" in
  run)
    deps
    configure_and_build "$BUILD_DIR"
    [[ ${1:-} == "--" ]] && shift
    exec "$BUILD_DIR/daemon/edgevirtd" "$@"
    ;;
  build)
    deps
    configure_and_build "$BUILD_DIR"
    ;;
  test)
    # Each stage's wall time, so a CI log shows where its time budget goes.
    stage() { echo "dev.sh: $1 done at ${SECONDS}s"; }
    deps
    stage "install-deps"
    # Line tables only (-g1): backtraces keep file:line, and the compile is ~20% faster than -g.
    configure_and_build "$BUILD_DIR" -DEDGEVIRT_WERROR=ON -DEDGEVIRT_FAULT_INJECTION=ON \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG"
    stage "build"
    # The sanitizer build only needs what the unit tests run: building every target again with
    # ASan would double CI's compile time. -O1, the level ASan's documentation suggests,
    # compiles ~35% faster than -O2 under instrumentation. It compiles while the suite runs, in
    # the SCHED_IDLE class: it gets only CPU time nothing else wants (the VM tests under TCG
    # leave some), and any runnable test process preempts it at once.
    cmake -S "$ROOT" -B "$ASAN_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1 -DNDEBUG" -DEDGEVIRT_WERROR=ON -DEDGEVIRT_SANITIZE=ON -DEDGEVIRT_BUILD_BENCH=OFF
    mapfile -t unit_targets < <(unit_test_targets "$ASAN_BUILD_DIR")
    asan_log=$ASAN_BUILD_DIR/sanitizer-build.log
    # setsid: its own process group, so an early exit takes the compilers along.
    setsid chrt --idle 0 cmake --build "$ASAN_BUILD_DIR" -j "$JOBS" --target "${unit_targets[@]}" \
      >"$asan_log" 2>&1 &
    asan_pid=$!
    trap 'kill -- -"$asan_pid" 2>/dev/null || true' EXIT
    ctest_rc=0
    (cd "$BUILD_DIR" && ctest --output-on-failure -j "$JOBS") || ctest_rc=$?
    stage "ctest"
    if ((ctest_rc != 0)); then
      exit "$ctest_rc"
    fi
    asan_rc=0
    wait "$asan_pid" || asan_rc=$?
    if ((asan_rc != 0)); then
      tail -n 100 "$asan_log"
      echo "dev.sh: the sanitizer build failed (exit $asan_rc); whole log: $asan_log" >&2
      exit "$asan_rc"
    fi
    stage "sanitizer build (in the background since the ctest stage began)"
    (cd "$ASAN_BUILD_DIR" && ctest --output-on-failure -j "$JOBS" -L unit)
    stage "sanitizer ctest"
    ;;
  format)
    git ls-files '*.cc' '*.h' | xargs clang-format -i
    ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
