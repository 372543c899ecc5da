#!/usr/bin/env bash
# Installs every build, runtime and test dependency of edgevirt from the distribution's own
# repositories: apt on Debian 12, dnf (with EPEL and CRB) on AlmaLinux 9. Nothing is downloaded
# from anywhere else. Idempotent: when everything is present it changes nothing.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: run as root (it installs distribution packages)" >&2
  exit 1
fi

. /etc/os-release

# Debian 12 (bookworm).
DEB_PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config git clang-format
  # libraries
  liblmdb-dev lmdb-utils libboost-dev libsystemd-dev libyaml-cpp-dev nlohmann-json3-dev
  libsqlite3-dev
  # cgroup/: the eBPF device filter
  libbpf-dev
  # tests: Catch2, the cpp-httplib client, a standalone journald and journalctl, unshare,
  # virt-xml-validate and virsh (vmm/ golden domain XML checks)
  catch2 libcpp-httplib-dev systemd util-linux python3 curl procps libvirt-clients
  # cgroup_device_test: loop devices as the hotplugged disks (losetup is in Debian's mount)
  mount
  # vmm/: libvirt's QEMU driver (embedded) and its headers, QEMU, OVMF (EFI), swtpm (vTPM),
  # qemu-img
  libvirt-dev libvirt-daemon-driver-qemu qemu-system-x86 ovmf swtpm swtpm-tools qemu-utils
  # daemon/: cloud-init NoCloud/ConfigDrive ISOs (xorriso -as mkisofs), as KubeVirt makes them
  xorriso
  # vmm/: screenshots are encoded as PNG with zlib
  zlib1g-dev
  # net/: the default network (nft table, dnsmasq for DHCP, ip for bridges and taps); its tests
  # also use busybox udhcpc (busybox-static, above) as the DHCP client
  nftables dnsmasq-base iproute2
  # the test guest (tests/fixtures/guest/build-test-guest.sh): a kernel with modules,
  # busybox, extlinux + MBR, partitioning, ext2, initramfs tools
  linux-image-amd64 busybox-static extlinux syslinux-common fdisk e2fsprogs cpio kmod adduser
  # the test guest's SSH server (dropbear and dropbearkey, copied into the guest with the
  # libraries ldd names) and vm_ssh_test's client (ssh, ssh-keygen)
  dropbear-bin openssh-client
  # fuzzing: clang with libFuzzer and its sanitizer runtimes
  clang libclang-rt-14-dev
  # bench/api: the load generator and the reference server
  wrk etcd-server
  # image/: the registry client (libcurl, OpenSSL SHA-256), layer extraction (libarchive);
  # api/: HTTPS listeners, the generated CA and certificates, tokens (OpenSSL: libssl-dev)
  libcurl4-openssl-dev libssl-dev libarchive-dev
  # edgevirtd links libarchive.a (cmake/EdgevirtStaticDeps.cmake): its other dependencies'
  # development links (libnettle, liblzma, libzstd, libxml2 come with the packages above)
  liblz4-dev libacl1-dev
  # image tests: a real registry (CNCF distribution 2.8), skopeo to push, bcrypt htpasswd, the
  # token server's RS256 signing, zstd layers
  docker-registry skopeo umoci apache2-utils python3-cryptography zstd
  # packaging/: the RPM is built (from the existing build) and inspected here with Debian's
  # rpmbuild; the DEB with dpkg-deb (dpkg) and its maintainer scripts' deb-systemd-helper
  # (init-system-helpers); readelf (binutils) for the linkage check
  rpm init-system-helpers binutils
)

# AlmaLinux 9 (EPEL provides yaml-cpp, json, catch2 and cpp-httplib; CRB provides lmdb-devel).
RPM_PACKAGES=(
  gcc-c++ cmake ninja-build pkgconf-pkg-config git clang-tools-extra
  lmdb-devel lmdb boost-devel systemd-devel yaml-cpp-devel json-devel sqlite-devel
  libbpf-devel
  catch2-devel cpp-httplib-devel systemd util-linux python3 curl procps-ng libvirt-client
  libvirt-devel libvirt-daemon-driver-qemu qemu-kvm edk2-ovmf swtpm swtpm-tools qemu-img
  # daemon/: cloud-init ISOs (xorriso -as mkisofs)
  xorriso
  # vmm/: PNG screenshots (zlib)
  zlib-devel
  # net/: nft table, dnsmasq (DHCP), ip
  nftables dnsmasq iproute
  kernel-core busybox syslinux syslinux-extlinux util-linux e2fsprogs cpio kmod
  # the test guest's SSH server (EPEL's dropbear) and the ssh client
  dropbear openssh-clients
  clang compiler-rt
  libcurl-devel openssl-devel libarchive-devel
  skopeo httpd-tools python3-cryptography zstd
  # packaging/build-rpm.sh (rpmbuild, the systemd scriptlet macros); not tried on AlmaLinux yet
  rpm-build systemd-rpm-macros
)

case "${ID}:${ID_LIKE:-}" in
  debian:* | *:*debian*)
    missing=()
    for p in "${DEB_PACKAGES[@]}"; do
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
      echo "install-deps: installing ${missing[*]}"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -q
      apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    # A root (embedded) libvirt QEMU driver resolves its compiled-in QEMU user and group
    # (Debian: libvirt-qemu) before it reads qemu.conf, and refuses to start without them.
    # They come with libvirt-daemon-system (libvirtd, which edgevirt does not need), so create
    # them as that package does. edgevirt runs QEMU as the user its qemu.conf names.
    getent group libvirt-qemu >/dev/null || addgroup --quiet --system libvirt-qemu
    qemu_primary_group=libvirt-qemu
    getent group kvm >/dev/null && qemu_primary_group=kvm
    getent passwd libvirt-qemu >/dev/null ||
      adduser --quiet --system --ingroup "$qemu_primary_group" --disabled-login --disabled-password \
        --home /var/lib/libvirt --no-create-home --gecos "Libvirt Qemu" libvirt-qemu
    # promtool (the /metrics tests check every exposition with it) comes only in Debian's
    # prometheus package, whose install would start a Prometheus server. Unpack just promtool
    # from the package (apt-get download, dpkg-deb -x: no maintainer scripts, no service).
    if [[ ! -x /opt/edgevirt-tools/bin/promtool ]]; then
      promtool_tmp=$(mktemp -d)
      chmod 0755 "$promtool_tmp"  # apt downloads as _apt
      (cd "$promtool_tmp" && apt-get download -q prometheus >/dev/null)
      dpkg-deb -x "$promtool_tmp"/prometheus_*.deb "$promtool_tmp/x"
      install -D -m 0755 "$promtool_tmp/x/usr/bin/promtool" /opt/edgevirt-tools/bin/promtool
      rm -rf "$promtool_tmp"
    fi
    ;;
  almalinux:* | rhel:* | rocky:* | *:*rhel*)
    missing=()
    for p in "${RPM_PACKAGES[@]}"; do
      rpm -q "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then
      echo "install-deps: installing ${missing[*]}"
      rpm -q epel-release >/dev/null 2>&1 || dnf install -y epel-release
      dnf config-manager --set-enabled crb
      dnf install -y "${missing[@]}"
    fi
    # qemu-kvm-common creates libvirt's default QEMU user 'qemu' (see the Debian branch).
    # promtool for the /metrics tests: Fedora packages it as golang-github-prometheus-promtool;
    # EPEL 9 may not carry it (not checked here: no AlmaLinux machine). Without it the
    # daemon_metrics_test and the /metrics part of vm_network_test fail, saying so.
    if [[ ! -x /opt/edgevirt-tools/bin/promtool ]] && ! command -v promtool >/dev/null 2>&1; then
      dnf install -y golang-github-prometheus-promtool ||
        echo "install-deps: warning: no promtool package; the /metrics tests will fail" >&2
    fi
    ;;
  *)
    echo "install-deps: unsupported distribution '${ID}' (Debian 12 and AlmaLinux 9 are supported)" >&2
    exit 1
    ;;
esac
# kubectl 1.32 (the end-to-end API tests drive the real one) is not in either distribution's
# archive; the test machines have it at /usr/bin/kubectl ($EDGEVIRT_KUBECTL overrides).
if ! command -v "${EDGEVIRT_KUBECTL:-kubectl}" >/dev/null 2>&1; then
  echo "install-deps: warning: kubectl not found; the kubectl_* tests will fail" >&2
fi
echo "install-deps: all dependencies present"
