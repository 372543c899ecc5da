#!/usr/bin/env bash
# Builds the edgevirt RPM (packaging/rpm/edgevirt.spec):
#
#   packaging/build-rpm.sh [--prebuilt] [--release N] [--output DIR] [BUILD_DIR]
#
# Default: from source, as on AlmaLinux 9: a tarball of the git tree (HEAD) goes to rpmbuild,
# whose %build compiles edgevirtd (BUILD_DIR is then only where the output goes).
# --prebuilt: package the edgevirtd already built in BUILD_DIR (default build/) without
# compiling: what CI does on Debian to inspect the package (`rpm -qpl`, `rpm -qpR`).
# Prints the path of the .rpm (default output directory: BUILD_DIR/packages).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
prebuilt=0
release=1
output=""
build=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --prebuilt) prebuilt=1; shift ;;
    --release) release=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build-rpm: unknown option '$1'" >&2; exit 2 ;;
    *) build=$1; shift ;;
  esac
done
[[ $release =~ ^[0-9][0-9A-Za-z.]*$ ]] || { echo "build-rpm: bad release '$release'" >&2; exit 2; }
build=${build:-$root/build}
mkdir -p "$build"
build=$(cd "$build" && pwd)
output=${output:-$build/packages}
command -v rpmbuild >/dev/null || {
  echo "build-rpm: rpmbuild not found (Debian: apt-get install rpm; AlmaLinux: dnf install rpm-build)" >&2
  exit 1
}
top=$(mktemp -d)
trap 'rm -rf "$top"' EXIT
args=(--define "_topdir $top" --define "edgevirt_release $release")
if ((prebuilt)); then
  binary=$build/daemon/edgevirtd
  [[ -x $binary ]] || { echo "build-rpm: $binary not built (ninja -C $build edgevirtd)" >&2; exit 1; }
  version=$("$binary" --version | awk '{print $2}')
  args+=(--define "edgevirt_prebuilt_dir $build")
else
  version=$(sed -n 's/^project(edgevirt VERSION \([0-9.]*\).*/\1/p' "$root/CMakeLists.txt")
  mkdir -p "$top/SOURCES"
  git -C "$root" archive --format=tar.gz --prefix="edgevirt-$version/" \
    -o "$top/SOURCES/edgevirt-$version.tar.gz" HEAD
fi
[[ $version =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || { echo "build-rpm: bad version '$version'" >&2; exit 1; }
args+=(--define "edgevirt_version $version")
rpmbuild -bb "${args[@]}" "$here/rpm/edgevirt.spec" >"$top/rpmbuild.log" 2>&1 || {
  cat "$top/rpmbuild.log" >&2
  exit 1
}
mkdir -p "$output"
rpm=$(find "$top/RPMS" -name 'edgevirt-*.rpm' | head -n1)
[[ -n $rpm ]] || { echo "build-rpm: rpmbuild made no package" >&2; cat "$top/rpmbuild.log" >&2; exit 1; }
cp "$rpm" "$output/"
echo "$output/$(basename "$rpm")"
