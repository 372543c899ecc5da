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
    deps
    configure_and_build "$BUILD_DIR" -DEDGEVIRT_WERROR=ON
    (cd "$BUILD_DIR" && ctest --output-on-failure -j "$JOBS")
    configure_and_build "$ASAN_BUILD_DIR" -DEDGEVIRT_WERROR=ON -DEDGEVIRT_SANITIZE=ON \
      -DEDGEVIRT_BUILD_BENCH=OFF
    (cd "$ASAN_BUILD_DIR" && ctest --output-on-failure -j "$JOBS" -L unit)
    ;;
  format)
    git ls-files '*.cc' '*.h' | xargs clang-format -i
    ;;
  *)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
