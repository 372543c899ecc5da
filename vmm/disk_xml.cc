#include "vmm/disk_xml.h"

#include "vmm/check.h"

namespace edgevirt::vmm {
namespace {

// virtio-blk's serial field is 20 bytes; QEMU truncates longer serials silently.
constexpr size_t kMaxDiskSerial = 20;

std::string_view DeviceName(DiskDevice device) {
  switch (device) {
    case DiskDevice::kDisk:
      return "disk";
    case DiskDevice::kCdrom:
      return "cdrom";
    case DiskDevice::kLun:
      return "lun";
  }
  return "disk";
}

std::string_view ErrorPolicyName(DiskErrorPolicy policy) {
  switch (policy) {
    case DiskErrorPolicy::kStop:
      return "stop";
    case DiskErrorPolicy::kReport:
      return "report";
    case DiskErrorPolicy::kIgnore:
      return "ignore";
    case DiskErrorPolicy::kEnospace:
      return "enospace";
  }
  return "stop";
}

std::string_view CacheName(DiskCache cache) {
  switch (cache) {
    case DiskCache::kNone:
      return "none";
    case DiskCache::kWritethrough:
      return "writethrough";
    case DiskCache::kWriteback:
      return "writeback";
  }
  return "none";
}

}  // namespace

std::string_view DiskBusName(DiskBus bus) {
  switch (bus) {
    case DiskBus::kVirtio:
      return "virtio";
    case DiskBus::kSata:
      return "sata";
    case DiskBus::kScsi:
      return "scsi";
  }
  return "virtio";
}

std::string_view DiskTargetPrefix(DiskBus bus) { return bus == DiskBus::kVirtio ? "vd" : "sd"; }

Status CheckDisk(const DiskSpec& d) {
  if (!AllOf(d.name, "_-")) {
    if (!IsXmlSafe(d.name)) {
      return Invalid("disk name: contains a control character or invalid UTF-8");
    }
    return Invalid("disk name: " + Quote(d.name) +
                   " must be non-empty and consist of letters, digits, '_' and '-'");
  }
  const std::string field = "disk " + Quote(d.name);
  RETURN_IF_ERROR(CheckPath(field + " path", d.path));
  if (d.device == DiskDevice::kCdrom && d.bus == DiskBus::kVirtio) {
    return Invalid(field + ": a cdrom cannot be on the virtio bus (use sata or scsi)");
  }
  // QEMU's ide-hd (the sata disk device) has no read-only mode; libvirt refuses it.
  if (d.device == DiskDevice::kDisk && d.bus == DiskBus::kSata && d.readonly) {
    return Invalid(field +
                   ": a read-only disk cannot be on the sata bus (use virtio or scsi, or a cdrom)");
  }
  if (d.device == DiskDevice::kLun) {
    if (d.bus != DiskBus::kScsi) return Invalid(field + ": a lun must be on the scsi bus");
    if (d.source_kind != DiskSourceKind::kBlock) {
      return Invalid(field + ": a lun needs a block device source, not a file");
    }
    if (d.format != DiskFormat::kRaw) return Invalid(field + ": a lun must have format raw");
  }
  if (!d.serial.empty()) {
    if (!AllOf(d.serial, "_.+- ")) {
      if (!IsXmlSafe(d.serial)) {
        return Invalid(field + " serial: contains a control character or invalid UTF-8");
      }
      return Invalid(field + " serial: " + Quote(d.serial) +
                     " may only contain letters, digits, ' ', '_', '.', '+' and '-'");
    }
    if (d.serial.size() > kMaxDiskSerial) {
      return Invalid(field + " serial: longer than " + std::to_string(kMaxDiskSerial) + " bytes");
    }
  }
  return Ok();
}

void WriteDisk(XmlWriter& w, const DiskSpec& d, const DiskPlacement& placement) {
  const bool block = d.source_kind == DiskSourceKind::kBlock;
  const bool readonly = d.readonly || d.device == DiskDevice::kCdrom;
  w.Start("disk", {{"type", block ? "block" : "file"}, {"device", DeviceName(d.device)}});
  // As KubeVirt: O_DIRECT with native AIO for cache=none (QEMU requires O_DIRECT for
  // aio=native), threads otherwise; writable disks pass discards through to the file.
  const std::string_view io = d.cache == DiskCache::kNone ? "native" : "threads";
  const std::string_view format = d.format == DiskFormat::kQcow2 ? "qcow2" : "raw";
  if (readonly) {
    w.Empty("driver", {{"name", "qemu"},
                       {"type", format},
                       {"cache", CacheName(d.cache)},
                       {"error_policy", ErrorPolicyName(d.error_policy)},
                       {"io", io}});
  } else {
    w.Empty("driver", {{"name", "qemu"},
                       {"type", format},
                       {"cache", CacheName(d.cache)},
                       {"error_policy", ErrorPolicyName(d.error_policy)},
                       {"io", io},
                       {"discard", "unmap"}});
  }
  w.Empty("source", {{block ? "dev" : "file", d.path}});
  w.Empty("target", {{"dev", placement.target}, {"bus", DiskBusName(d.bus)}});
  if (!d.serial.empty()) w.Text("serial", d.serial);
  if (d.boot_order != 0) w.Empty("boot", {{"order", std::to_string(d.boot_order)}});
  if (readonly) w.Empty("readonly");
  w.Empty("alias", {{"name", "ua-" + d.name}});
  if (placement.drive) {
    w.Empty("address", {{"type", "drive"},
                        {"controller", std::to_string(placement.drive->controller)},
                        {"bus", "0"},
                        {"target", "0"},
                        {"unit", std::to_string(placement.drive->unit)}});
  }
  w.End();
}

}  // namespace edgevirt::vmm
