#include "vmm/nic_xml.h"

#include <algorithm>
#include <array>
#include <cstdio>

#include "vmm/check.h"

namespace edgevirt::vmm {
namespace {

// KubeVirt v1.0's interface models (validateNetworksMatchInterfaces).
constexpr std::array<std::string_view, 6> kModels = {"e1000", "e1000e",  "ne2k_pci",
                                                     "pcnet", "rtl8139", "virtio"};
// Prefixes of the device names libvirt generates (vnetN, macvtapN, macvlanN): libvirt treats a
// <target dev> with one of them as its own generated name and replaces it, so the caller would
// not get the device it named. Refused for every NIC rather than per type and libvirt version.
constexpr std::array<std::string_view, 3> kReservedTapPrefixes = {"vnet", "macvtap", "macvlan"};
constexpr uint32_t kMinMtu = 68;  // IPv4's minimum (RFC 791), the kernel's ETH_MIN_MTU
constexpr uint32_t kMaxMtu = 65535;

template <size_t N>
bool In(const std::array<std::string_view, N>& set, std::string_view v) {
  return std::find(set.begin(), set.end(), v) != set.end();
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool IsMac(std::string_view mac) {
  if (mac.size() != 17) return false;
  for (size_t i = 0; i < mac.size(); ++i) {
    if (i % 3 == 2 ? mac[i] != ':' : HexDigit(mac[i]) < 0) return false;
  }
  return true;
}

std::string Hex(uint32_t v, int width) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%0*x", width, v);
  return buf;
}

}  // namespace

bool IsNetdevName(std::string_view name) {
  // IFNAMSIZ is 16 including the terminating NUL.
  if (name.empty() || name.size() > 15 || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return c > ' ' && c < 0x7f && c != '/' && c != ':'; });
}

Result<PciAddress> ParsePciAddress(std::string_view text) {
  auto bad = [&] {
    return Invalid("PCI address " + Quote(IsXmlSafe(text) ? text : "(binary)") +
                   " is not DDDD:BB:SS.F (hex domain, bus and slot <= 1f, function 0-7)");
  };
  if (text.size() != 12 || text[4] != ':' || text[7] != ':' || text[10] != '.') return bad();
  auto field = [&](size_t at, size_t len) -> int64_t {
    int64_t v = 0;
    for (size_t i = at; i < at + len; ++i) {
      const int d = HexDigit(text[i]);
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    return v;
  };
  const int64_t domain = field(0, 4), bus = field(5, 2), slot = field(8, 2);
  const char fn = text[11];
  if (domain < 0 || bus < 0 || slot < 0 || slot > 0x1f || fn < '0' || fn > '7') return bad();
  return PciAddress{static_cast<uint32_t>(domain), static_cast<uint32_t>(bus),
                    static_cast<uint32_t>(slot), static_cast<uint32_t>(fn - '0')};
}

bool NicTakesRootPort(std::string_view model) { return model != "e1000" && model != "rtl8139"; }

std::string CanonicalMac(std::string_view mac) {
  std::string out(mac);
  std::transform(out.begin(), out.end(), out.begin(), [](char c) {
    return c >= 'A' && c <= 'F' ? static_cast<char>(c - 'A' + 'a') : c;
  });
  return out;
}

Status CheckNic(const NicSpec& n) {
  if (!AllOf(n.name, "_-")) {
    if (!IsXmlSafe(n.name))
      return Invalid("nic name: contains a control character or invalid UTF-8");
    return Invalid("nic name: " + Quote(n.name) +
                   " must be non-empty and consist of letters, digits, '_' and '-'");
  }
  const std::string field = "nic " + Quote(n.name);
  if (n.kind == NicKind::kBridge) {
    if (!IsNetdevName(n.source)) {
      if (!IsXmlSafe(n.source)) return Invalid(field + " source: contains a control character");
      return Invalid(field + " source: " + Quote(n.source) +
                     " is not a valid bridge name (1-15 printable bytes, no '/', ':' or space, "
                     "not '.' or '..')");
    }
  } else {
    if (!n.source.empty()) {
      return Invalid(field +
                     " source: a macvtap NIC (NicKind::kDirect) names only its device "
                     "(target_dev)");
    }
    if (n.target_dev.empty()) {
      return Invalid(field +
                     " target_dev: a macvtap NIC (NicKind::kDirect) needs the name of "
                     "its existing macvtap device");
    }
  }
  if (!n.target_dev.empty()) {
    if (!IsNetdevName(n.target_dev)) {
      if (!IsXmlSafe(n.target_dev)) {
        return Invalid(field + " target_dev: contains a control character");
      }
      return Invalid(field + " target_dev: " + Quote(n.target_dev) +
                     " is not a valid device name (1-15 printable bytes, no '/', ':' or space)");
    }
    for (std::string_view prefix : kReservedTapPrefixes) {
      if (n.target_dev.starts_with(prefix)) {
        return Invalid(field + " target_dev: " + Quote(n.target_dev) + " starts with " +
                       Quote(prefix) + ", which libvirt keeps for names it generates");
      }
    }
  }
  if (!IsMac(n.mac)) {
    if (!IsXmlSafe(n.mac)) return Invalid(field + " mac: contains a control character");
    return Invalid(field + " mac: " + Quote(n.mac) + " is not a MAC address (aa:bb:cc:dd:ee:ff)");
  }
  if (HexDigit(n.mac[1]) & 1) {
    return Invalid(field + " mac: " + Quote(n.mac) + " is a multicast address");
  }
  if (!In(kModels, n.model)) {
    if (!IsXmlSafe(n.model)) return Invalid(field + " model: contains a control character");
    return Invalid(field + " model: " + Quote(n.model) +
                   " is not one of e1000, e1000e, ne2k_pci, pcnet, rtl8139, virtio");
  }
  if (n.pci) {
    const PciAddress& a = *n.pci;
    if (a.domain > 0xffff || a.bus > 0xff || a.slot > 0x1f || a.function > 7) {
      return Invalid(field + " pci: domain <= 0xffff, bus <= 0xff, slot <= 0x1f, function <= 7");
    }
  }
  if (n.mtu != 0) {
    if (n.mtu < kMinMtu || n.mtu > kMaxMtu) {
      return Invalid(field + " mtu: " + std::to_string(n.mtu) + " is not between " +
                     std::to_string(kMinMtu) + " and " + std::to_string(kMaxMtu));
    }
    if (n.kind != NicKind::kBridge) {
      return Invalid(field +
                     " mtu: only a tap libvirt makes (NicKind::kBridge) gets an MTU here; a "
                     "macvtap's is set where it is made");
    }
    if (n.model != "virtio") {
      return Invalid(field + " mtu: only a virtio NIC can tell the guest its MTU (model is " +
                     Quote(n.model) + ")");
    }
  }
  return Ok();
}

void WriteNic(XmlWriter& w, const NicSpec& n) {
  if (n.kind == NicKind::kDirect) {
    // An existing macvtap: libvirt opens its /dev/tapN and hands QEMU the fd; managed='no'
    // keeps it from creating or deleting the device (see NicKind::kDirect for why).
    w.Start("interface", {{"type", "ethernet"}});
    w.Empty("mac", {{"address", CanonicalMac(n.mac)}});
    w.Empty("target", {{"dev", n.target_dev}, {"managed", "no"}});
  } else {
    w.Start("interface", {{"type", "bridge"}});
    w.Empty("mac", {{"address", CanonicalMac(n.mac)}});
    w.Empty("source", {{"bridge", n.source}});
    if (!n.target_dev.empty()) w.Empty("target", {{"dev", n.target_dev}});
  }
  w.Empty("model", {{"type", n.model}});
  if (n.mtu != 0) w.Empty("mtu", {{"size", std::to_string(n.mtu)}});
  if (n.boot_order != 0) {
    w.Empty("boot", {{"order", std::to_string(n.boot_order)}});
  } else {
    // As KubeVirt does for a NIC without a boot order: no option ROM, so the firmware never
    // tries to network-boot from it (and QEMU needs no ROM file for it).
    w.Empty("rom", {{"enabled", "no"}});
  }
  w.Empty("alias", {{"name", "ua-" + n.name}});
  if (n.pci) {
    w.Empty("address", {{"type", "pci"},
                        {"domain", Hex(n.pci->domain, 4)},
                        {"bus", Hex(n.pci->bus, 2)},
                        {"slot", Hex(n.pci->slot, 2)},
                        {"function", Hex(n.pci->function, 1)}});
  }
  w.End();
}

}  // namespace edgevirt::vmm
