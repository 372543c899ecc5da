#!/usr/bin/env bash
# Builds the edgevirt DEB from an already built tree (no compile here):
#
#   packaging/build-deb.sh [--revision N] [--output DIR] [BUILD_DIR]
#
# BUILD_DIR (default build/) must hold a built edgevirtd; `cmake --install` stages it with the
# unit, the tmpfiles.d entry, the default configuration and /var/lib/edgevirt under /usr, and
# dpkg-deb packs that with packaging/deb/ (control, conffiles, maintainer scripts). The
# version is the binary's own (`edgevirtd --version`) with Debian revision N (default 1).
# Prints the path of the .deb (default output directory: BUILD_DIR/packages).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
revision=1
output=""
build=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --revision) revision=$2; shift 2 ;;
    --output) output=$2; shift 2 ;;
    -h | --help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "build-deb: unknown option '$1'" >&2; exit 2 ;;
    *) build=$1; shift ;;
  esac
done
build=$(cd "${build:-$root/build}" && pwd)
output=${output:-$build/packages}
[[ $revision =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || { echo "build-deb: bad revision '$revision'" >&2; exit 2; }
binary=$build/daemon/edgevirtd
[[ -x $binary ]] || { echo "build-deb: $binary not built (ninja -C $build edgevirtd)" >&2; exit 1; }
upstream=$("$binary" --version | awk '{print $2}')
[[ $upstream =~ ^[0-9][0-9A-Za-z.+~]*$ ]] || { echo "build-deb: bad version '$upstream'" >&2; exit 1; }
version=$upstream-$revision
arch=$(dpkg --print-architecture)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
DESTDIR=$stage cmake --install "$build" --prefix /usr --strip >/dev/null
mkdir -p "$stage/DEBIAN"
install -m 0644 "$here/deb/conffiles" "$stage/DEBIAN/conffiles"
install -m 0755 "$here/deb/postinst" "$here/deb/prerm" "$here/deb/postrm" "$stage/DEBIAN/"
depends=$(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/deb/depends" | tr -d ' ' | paste -sd, - |
  sed 's/,/, /g')
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$size/" \
  -e "s/@DEPENDS@/$depends/" "$here/deb/control.in" >"$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
  xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
mkdir -p "$output"
deb=$output/edgevirt_${version}_${arch}.deb
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
