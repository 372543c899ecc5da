#include <charconv>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "vmm/domain_stats_libvirt.h"
#include "vmm/xml_reader.h"

namespace edgevirt::vmm {
namespace {

constexpr std::string_view kUserAliasPrefix = "ua-";

std::optional<uint64_t> Unsigned(const virTypedParameter& p) {
  switch (p.type) {
    case VIR_TYPED_PARAM_ULLONG:
      return p.value.ul;
    case VIR_TYPED_PARAM_UINT:
      return p.value.ui;
    case VIR_TYPED_PARAM_LLONG:
      if (p.value.l >= 0) return uint64_t(p.value.l);
      return std::nullopt;
    case VIR_TYPED_PARAM_INT:
      if (p.value.i >= 0) return uint64_t(p.value.i);
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

std::optional<int> Int(const virTypedParameter& p) {
  if (p.type == VIR_TYPED_PARAM_INT) return p.value.i;
  if (p.type == VIR_TYPED_PARAM_UINT) return int(p.value.ui);
  return std::nullopt;
}

std::string String(const virTypedParameter& p) {
  if (p.type == VIR_TYPED_PARAM_STRING && p.value.s != nullptr) return p.value.s;
  return {};
}

// "12.rx.bytes" -> {12, "rx.bytes"}; nullopt when there is no index.
std::optional<std::pair<int, std::string_view>> Indexed(std::string_view rest) {
  const size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot == 0) return std::nullopt;
  int index = 0;
  auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + dot, index);
  if (ec != std::errc() || ptr != rest.data() + dot || index < 0) return std::nullopt;
  return std::make_pair(index, rest.substr(dot + 1));
}

VcpuState MapVcpuState(int state) {
  switch (state) {
    case VIR_VCPU_OFFLINE:
      return VcpuState::kOffline;
    case VIR_VCPU_RUNNING:
      return VcpuState::kRunning;
    case VIR_VCPU_BLOCKED:
      return VcpuState::kBlocked;
    default:
      return VcpuState::kUnknown;
  }
}

void ReadBalloon(DomainStats& s, std::string_view key, const virTypedParameter& p) {
  static const std::map<std::string_view, std::optional<uint64_t> DomainStats::*> kFields = {
      {"current", &DomainStats::balloon_current_kib},
      {"maximum", &DomainStats::balloon_maximum_kib},
      {"swap_in", &DomainStats::balloon_swap_in_kib},
      {"swap_out", &DomainStats::balloon_swap_out_kib},
      {"major_fault", &DomainStats::balloon_major_fault},
      {"minor_fault", &DomainStats::balloon_minor_fault},
      {"unused", &DomainStats::balloon_unused_kib},
      {"available", &DomainStats::balloon_available_kib},
      {"usable", &DomainStats::balloon_usable_kib},
      {"rss", &DomainStats::balloon_rss_kib},
      {"disk_caches", &DomainStats::balloon_disk_caches_kib},
  };
  if (auto it = kFields.find(key); it != kFields.end()) s.*(it->second) = Unsigned(p);
}

void ReadNet(NetStats& n, std::string_view key, const virTypedParameter& p) {
  static const std::map<std::string_view, std::optional<uint64_t> NetStats::*> kFields = {
      {"rx.bytes", &NetStats::rx_bytes}, {"rx.pkts", &NetStats::rx_pkts},
      {"rx.errs", &NetStats::rx_errs},   {"rx.drop", &NetStats::rx_drop},
      {"tx.bytes", &NetStats::tx_bytes}, {"tx.pkts", &NetStats::tx_pkts},
      {"tx.errs", &NetStats::tx_errs},   {"tx.drop", &NetStats::tx_drop},
  };
  if (key == "name") {
    n.device = String(p);
  } else if (auto it = kFields.find(key); it != kFields.end()) {
    n.*(it->second) = Unsigned(p);
  }
}

void ReadBlock(BlockStats& b, std::string_view key, const virTypedParameter& p) {
  static const std::map<std::string_view, std::optional<uint64_t> BlockStats::*> kFields = {
      {"rd.reqs", &BlockStats::rd_reqs},      {"rd.bytes", &BlockStats::rd_bytes},
      {"rd.times", &BlockStats::rd_times_ns}, {"wr.reqs", &BlockStats::wr_reqs},
      {"wr.bytes", &BlockStats::wr_bytes},    {"wr.times", &BlockStats::wr_times_ns},
      {"fl.reqs", &BlockStats::fl_reqs},      {"fl.times", &BlockStats::fl_times_ns},
  };
  if (key == "name") {
    b.target = String(p);
  } else if (key == "path") {
    b.path = String(p);
  } else if (auto it = kFields.find(key); it != kFields.end()) {
    b.*(it->second) = Unsigned(p);
  }
}

std::string UserAlias(const XmlElement& device) {
  const XmlElement* alias = device.Child("alias");
  if (alias == nullptr) return {};
  const std::string name = alias->AttrOr("name");
  if (!name.starts_with(kUserAliasPrefix)) return {};
  return name.substr(kUserAliasPrefix.size());
}

}  // namespace

unsigned DomainStatsTypes() {
  return VIR_DOMAIN_STATS_STATE | VIR_DOMAIN_STATS_CPU_TOTAL | VIR_DOMAIN_STATS_BALLOON |
         VIR_DOMAIN_STATS_VCPU | VIR_DOMAIN_STATS_INTERFACE | VIR_DOMAIN_STATS_BLOCK;
}

DomainStats ParseDomainStats(std::string name, std::string uuid, const virTypedParameter* params,
                             int nparams) {
  DomainStats s;
  s.name = std::move(name);
  s.uuid = std::move(uuid);
  // Indexed groups arrive keyed by N; libvirt lists every N, but keep them by index so a gap or
  // an odd order cannot shift one device's figures onto another.
  std::map<int, VcpuStats> vcpus;
  std::map<int, NetStats> nets;
  std::map<int, BlockStats> blocks;
  for (int i = 0; i < nparams; ++i) {
    const virTypedParameter& p = params[i];
    const std::string_view field(p.field);
    const size_t dot = field.find('.');
    if (dot == std::string_view::npos) continue;
    const std::string_view group = field.substr(0, dot);
    const std::string_view rest = field.substr(dot + 1);
    if (group == "state") {
      if (rest == "state") s.state = Int(p).value_or(0);
      if (rest == "reason") s.reason = Int(p).value_or(0);
    } else if (group == "cpu") {
      if (rest == "time") s.cpu_time_ns = Unsigned(p);
      if (rest == "user") s.cpu_user_ns = Unsigned(p);
      if (rest == "system") s.cpu_system_ns = Unsigned(p);
    } else if (group == "balloon") {
      ReadBalloon(s, rest, p);
    } else if (group == "vcpu") {
      if (rest == "current") {
        s.vcpu_current = Unsigned(p);
      } else if (rest == "maximum") {
        s.vcpu_maximum = Unsigned(p);
      } else if (auto idx = Indexed(rest)) {
        VcpuStats& v = vcpus[idx->first];
        v.id = idx->first;
        if (idx->second == "state") v.state = MapVcpuState(Int(p).value_or(-1));
        if (idx->second == "time") v.time_ns = Unsigned(p);
        if (idx->second == "wait") v.wait_ns = Unsigned(p);
      }
    } else if (group == "net") {
      if (auto idx = Indexed(rest)) ReadNet(nets[idx->first], idx->second, p);
    } else if (group == "block") {
      if (auto idx = Indexed(rest)) ReadBlock(blocks[idx->first], idx->second, p);
    }
  }
  for (auto& [id, v] : vcpus) s.vcpus.push_back(std::move(v));
  for (auto& [id, n] : nets) s.nets.push_back(std::move(n));
  for (auto& [id, b] : blocks) s.blocks.push_back(std::move(b));
  return s;
}

void AddAliases(DomainStats& stats, std::string_view live_xml) {
  auto doc = ParseXml(live_xml);
  if (!doc) return;
  const XmlElement* devices = doc->Child("devices");
  if (devices == nullptr) return;
  std::map<std::string, std::string> nic_alias, disk_alias;
  for (const XmlElement* nic : devices->Children("interface")) {
    if (const XmlElement* target = nic->Child("target")) {
      nic_alias[target->AttrOr("dev")] = UserAlias(*nic);
    }
  }
  for (const XmlElement* disk : devices->Children("disk")) {
    if (const XmlElement* target = disk->Child("target")) {
      disk_alias[target->AttrOr("dev")] = UserAlias(*disk);
    }
  }
  for (NetStats& n : stats.nets) {
    if (auto it = nic_alias.find(n.device); it != nic_alias.end()) n.alias = it->second;
  }
  for (BlockStats& b : stats.blocks) {
    if (auto it = disk_alias.find(b.target); it != disk_alias.end()) b.alias = it->second;
  }
}

}  // namespace edgevirt::vmm
