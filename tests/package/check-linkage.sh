#!/usr/bin/env bash
# check-linkage.sh BINARY REGEX...: the DT_NEEDED entries of BINARY (readelf -d) must each
# match one of the REGEXes (the shared libraries edgevirtd may use: cmake/EdgevirtStaticDeps.cmake
# computes the list), and libstdc++ and libgcc_s must not be NEEDED (-static-libstdc++
# -static-libgcc). Prints the NEEDED list (README.md "Linking" shows it).
set -euo pipefail
binary=$1
shift
mapfile -t needed < <(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
((${#needed[@]})) || { echo "check-linkage: no NEEDED entries in $binary (not dynamic?)" >&2; exit 1; }
bad=0
for lib in "${needed[@]}"; do
  case $lib in
    libstdc++.so.* | libgcc_s.so.*)
      echo "check-linkage: $lib is NEEDED: the C++ runtime must be linked statically" >&2
      bad=1
      continue
      ;;
  esac
  ok=0
  for re in "$@"; do
    if [[ $lib =~ ^${re}$ ]]; then ok=1; break; fi
  done
  if ((!ok)); then
    echo "check-linkage: $lib is NEEDED but not allowed (a static archive was expected)" >&2
    bad=1
  fi
done
printf 'NEEDED: %s\n' "${needed[@]}"
exit "$bad"
