#!/usr/bin/env bash
# The link launcher of edgevirtd (its CXX_LINKER_LAUNCHER, set by cmake/EdgevirtStaticDeps.cmake):
# runs the link command CMake made with some shared libraries swapped for static archives.
#
#   link-static-deps.sh [--static NAME=ARCHIVE[,DEP...]]... -- LINKER ARG...
#
# Every argument naming the shared library NAME (".../libNAME.so", ".../libNAME.so.N...",
# "-lNAME") is replaced by ARCHIVE, followed by the DEPs the archive needs (archive paths or
# -lNAME, linked --as-needed). Only the edgevirtd link goes through here, so the test binaries
# keep linking the shared libraries. No shell parses the link command: it is run as an argv.
set -euo pipefail

declare -A archive=() deps=()
while [[ $# -gt 0 && $1 != -- ]]; do
  case $1 in
    --static)
      spec=$2
      name=${spec%%=*}
      rest=${spec#*=}
      archive[$name]=${rest%%,*}
      deps[$name]=""
      [[ $rest == *,* ]] && deps[$name]=${rest#*,}
      shift 2
      ;;
    *)
      echo "link-static-deps: unknown option '$1'" >&2
      exit 2
      ;;
  esac
done
[[ ${1:-} == -- ]] || { echo "link-static-deps: missing '--' before the link command" >&2; exit 2; }
shift

declare -A used=()
out=()
for arg in "$@"; do
  match=""
  for name in "${!archive[@]}"; do
    base=${arg##*/}
    if [[ $arg == "-l$name" || $base == "lib$name.so" || $base == lib"$name".so.* ]]; then
      match=$name
      break
    fi
  done
  if [[ -z $match ]]; then
    out+=("$arg")
    continue
  fi
  used[$match]=1
  out+=("${archive[$match]}")
  if [[ -n ${deps[$match]} ]]; then
    IFS=, read -ra extra <<<"${deps[$match]}"
    out+=("-Wl,--push-state,--as-needed" "${extra[@]}" "-Wl,--pop-state")
  fi
done
for name in "${!archive[@]}"; do
  if [[ -z ${used[$name]:-} ]]; then
    echo "link-static-deps: warning: lib$name is not on the link line; ${archive[$name]} unused" >&2
  fi
done
exec "${out[@]}"
