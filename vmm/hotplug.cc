#include "vmm/hotplug.h"

#include <cstdlib>
#include <set>

#include "vmm/check.h"
#include "vmm/disk_xml.h"
#include "vmm/xml_reader.h"
#include "vmm/xml_writer.h"

namespace edgevirt::vmm {
namespace {

constexpr std::string_view kUserAliasPrefix = "ua-";
// libvirt's limit for a drive address unit on a virtio-scsi controller.
constexpr uint32_t kMaxScsiUnit = 16383;
// vda..vdzz and sda..sdzz: far more disks than a domain can have PCI slots or LUNs for.
constexpr size_t kMaxTargetIndex = 26 * 27;

Result<XmlElement> ParseDomain(std::string_view xml) {
  auto root = ParseXml(xml);
  if (!root) return std::move(root).error().Wrap("domain XML");
  if (root->name != "domain") return Invalid("domain XML: the root element is not <domain>");
  return root;
}

std::vector<const XmlElement*> DiskElements(const XmlElement& domain) {
  const XmlElement* devices = domain.Child("devices");
  return devices ? devices->Children("disk") : std::vector<const XmlElement*>{};
}

// What a domain XML already uses: aliases, targets and the units on scsi controller 0.
struct Taken {
  std::set<std::string> aliases;
  std::set<std::string> targets;
  std::set<uint32_t> scsi_units;
  bool scsi_controller = false;

  void Add(const XmlElement& domain) {
    for (const XmlElement* disk : DiskElements(domain)) {
      if (const XmlElement* alias = disk->Child("alias")) aliases.insert(alias->AttrOr("name"));
      const XmlElement* target = disk->Child("target");
      if (target) targets.insert(target->AttrOr("dev"));
      const XmlElement* address = disk->Child("address");
      if (target && target->AttrOr("bus") == "scsi" && address &&
          address->AttrOr("type") == "drive" && address->AttrOr("controller", "0") == "0") {
        scsi_units.insert(
            uint32_t(std::strtoul(address->AttrOr("unit", "0").c_str(), nullptr, 10)));
      }
    }
    if (const XmlElement* devices = domain.Child("devices")) {
      for (const XmlElement* c : devices->Children("controller")) {
        if (c->AttrOr("type") == "scsi" && c->AttrOr("index", "0") == "0") scsi_controller = true;
      }
    }
  }
};

}  // namespace

Result<std::vector<LiveDisk>> ParseLiveDisks(std::string_view domain_xml) {
  ASSIGN_OR_RETURN(XmlElement domain, ParseDomain(domain_xml));
  std::vector<LiveDisk> out;
  for (const XmlElement* disk : DiskElements(domain)) {
    const XmlElement* target = disk->Child("target");
    if (!target) continue;
    LiveDisk d;
    const std::string bus = target->AttrOr("bus");
    if (bus == "virtio") {
      d.bus = DiskBus::kVirtio;
    } else if (bus == "scsi") {
      d.bus = DiskBus::kScsi;
    } else if (bus == "sata") {
      d.bus = DiskBus::kSata;
    } else {
      continue;
    }
    d.target = target->AttrOr("dev");
    if (const XmlElement* alias = disk->Child("alias")) {
      const std::string name = alias->AttrOr("name");
      if (name.starts_with(kUserAliasPrefix)) d.name = name.substr(kUserAliasPrefix.size());
    }
    d.block = disk->AttrOr("type") == "block";
    if (const XmlElement* source = disk->Child("source")) {
      d.path = source->AttrOr(d.block ? "dev" : "file");
    }
    d.readonly = disk->Child("readonly") != nullptr;
    out.push_back(std::move(d));
  }
  return out;
}

Result<std::string> HotplugDiskXml(const DiskSpec& disk, std::string_view live_xml,
                                   std::string_view config_xml) {
  RETURN_IF_ERROR(CheckDisk(disk));
  const std::string field = "disk " + Quote(disk.name);
  if (disk.bus == DiskBus::kSata) {
    // QEMU's AHCI (ich9-ahci) has no hotplug; libvirt refuses it too.
    return Invalid(field + ": a sata disk cannot be hotplugged (use scsi or virtio)");
  }
  ASSIGN_OR_RETURN(XmlElement live, ParseDomain(live_xml));
  Taken taken;
  taken.Add(live);
  const std::string alias = std::string(kUserAliasPrefix) + disk.name;
  if (taken.aliases.contains(alias)) {
    return MakeError(Code::kConflict, field + " is already attached");
  }
  const bool scsi_controller = taken.scsi_controller;
  if (!config_xml.empty()) {
    ASSIGN_OR_RETURN(XmlElement config, ParseDomain(config_xml));
    Taken persistent;
    persistent.Add(config);
    if (persistent.aliases.contains(alias)) {
      return MakeError(Code::kConflict, field + " is already in the persistent definition");
    }
    taken.Add(config);
  }
  if (disk.bus == DiskBus::kScsi && !scsi_controller) {
    return Invalid(field +
                   ": the domain has no scsi controller to hotplug into (define it with "
                   "hotplug_scsi_controller)");
  }

  DiskPlacement placement;
  const std::string_view prefix = DiskTargetPrefix(disk.bus);
  for (size_t i = 0; i < kMaxTargetIndex && placement.target.empty(); ++i) {
    std::string name = DiskTargetName(prefix, i);
    if (!taken.targets.contains(name)) placement.target = std::move(name);
  }
  if (placement.target.empty()) {
    return MakeError(Code::kConflict, field + ": no free " + std::string(prefix) + "* target");
  }
  if (disk.bus == DiskBus::kScsi) {
    uint32_t unit = 0;
    while (unit <= kMaxScsiUnit && taken.scsi_units.contains(unit)) ++unit;
    if (unit > kMaxScsiUnit) {
      return MakeError(Code::kConflict, field + ": no free unit on scsi controller 0");
    }
    placement.drive = DiskPlacement::Drive{0, unit};
  }
  XmlWriter w;
  WriteDisk(w, disk, placement);
  return w.Finish();
}

}  // namespace edgevirt::vmm
