#include "daemon/networking.h"

#include <algorithm>
#include <cstdio>

#include "common/hash.h"
#include "common/json_path.h"
#include "common/log.h"

namespace edgevirt::daemon {
namespace {

using jsonpath::At;
using jsonpath::Str;

std::string Owner(const Json& obj) {
  return Str(obj, {"metadata", "namespace"}) + "/" + Str(obj, {"metadata", "name"});
}

bool FinalPhase(const Json& vmi) {
  const std::string phase = Str(vmi, {"status", "phase"});
  return phase == "Succeeded" || phase == "Failed";
}

bool IsDnsLabel(const std::string& s) {
  if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

// Whether every key of `selector` is a label of `obj` with the same value (an empty selector
// selects nothing, as for a Service).
bool Selects(const Json& selector, const Json& obj) {
  if (!selector.is_object() || selector.empty()) return false;
  const Json* labels = At(obj, {"metadata", "labels"});
  if (labels == nullptr || !labels->is_object()) return false;
  for (const auto& [k, v] : selector.items()) {
    auto it = labels->find(k);
    if (it == labels->end() || *it != v) return false;
  }
  return true;
}

struct PodEndpoint {
  const Json* vmi = nullptr;
  std::string ip;
  std::vector<std::pair<std::string, uint16_t>> named_ports;  // interfaces[].ports name → port
};

}  // namespace

net::Options NetOptions(const Config& config) {
  net::Options o;
  o.run_dir = config.run_dir + "/net";
  o.bridge = config.network.bridge;
  o.cidr = config.network.cidr;
  o.mtu = config.network.mtu;
  for (const auto& h : config.network.host_networks) {
    net::HostNetwork n;
    n.name = h.name;
    n.bridge = h.bridge;
    n.macvtap_device = h.macvtap;
    n.macvtap_mode = h.macvtap_mode;
    o.host_networks.push_back(std::move(n));
  }
  return o;
}

Networking::Networking(NetworkingOptions options) : options_(std::move(options)) {}
Networking::~Networking() = default;

std::string Networking::StableMac(const std::string& owner, const std::string& interface) {
  const uint64_t h = Fnv1a64(owner + "\n" + interface);
  char buf[18];
  // 0x02: locally administered, unicast; 0x0e marks edgevirt's host-network NICs (net/
  // generates its default-network MACs under 02:xx too, from its own allocations).
  std::snprintf(buf, sizeof buf, "02:0e:%02x:%02x:%02x:%02x", static_cast<unsigned>(h >> 56),
                static_cast<unsigned>((h >> 48) & 0xff), static_cast<unsigned>((h >> 40) & 0xff),
                static_cast<unsigned>((h >> 32) & 0xff));
  return buf;
}

std::string Networking::MacvtapName(const std::string& uid, size_t index) {
  return std::string(net::kMacvtapPrefix) +
         net::Network::TapName(uid, index).substr(net::kTapPrefix.size());
}

Result<net::Network*> Networking::Network() {
  if (network_ == nullptr) {
    ASSIGN_OR_RETURN(auto opened, net::Network::Open(options_.net));
    std::lock_guard lock(mu_);
    network_ = std::move(opened);
    applied_.reset();
    EV_LOG(kInfo) << "default network " << options_.net.bridge << " (" << options_.net.cidr
                  << ") is up";
  }
  return network_.get();
}

const net::HostNetwork* Networking::HostNetwork(const std::string& name) const {
  for (const auto& h : options_.net.host_networks) {
    if (h.name == name) return &h;
  }
  return nullptr;
}

Status Networking::Recover(const std::vector<Json>& vmis, const std::set<std::string>& vm_owners) {
  bool needed = false;
  std::set<std::string> owners = vm_owners;
  std::set<std::string> live_taps, live_macvtaps;
  for (const auto& vmi : vmis) {
    owners.insert(Owner(vmi));
    auto reqs = NetworkRequests(vmi);
    if (!reqs) continue;
    const std::string uid = Str(vmi, {"metadata", "uid"});
    for (size_t i = 0; i < reqs->size(); ++i) {
      const NetworkRequest& r = (*reqs)[i];
      const net::HostNetwork* host = r.pod ? nullptr : HostNetwork(r.host_network);
      if (r.pod) needed = needed || !FinalPhase(vmi);
      if (host != nullptr && !host->macvtap_device.empty()) {
        live_macvtaps.insert(MacvtapName(uid, i));
      } else {
        live_taps.insert(net::Network::TapName(uid, i));
      }
    }
  }
  Status first = Ok();
  auto keep = [&first](Status s) {
    if (!s && first) first = s;
  };
  keep(net::RemoveMacvtaps(options_.net.ip_path, net::kMacvtapPrefix, live_macvtaps));
  if (!needed) {
    auto has = net::Network::HasAddresses(*options_.net.store);
    if (!has) return has.error();
    needed = *has;
  }
  if (!needed) return first;
  auto network = Network();
  if (!network) return network.error();
  if (auto released = (*network)->RetainOwners(owners); !released) {
    keep(released.error());
  } else if (*released > 0) {
    EV_LOG(kInfo) << "released the addresses of " << *released << " VMs that no longer exist";
  }
  keep((*network)->RemoveStaleTaps(live_taps));
  return first;
}

Result<std::vector<NicAttachment>> Networking::Attach(const Json& vmi) {
  ASSIGN_OR_RETURN(std::vector<NetworkRequest> reqs, NetworkRequests(vmi));
  const std::string uid = Str(vmi, {"metadata", "uid"});
  const std::string owner = Owner(vmi);
  std::vector<NicAttachment> out;
  for (size_t i = 0; i < reqs.size(); ++i) {
    const NetworkRequest& r = reqs[i];
    NicAttachment a;
    a.interface_name = r.interface_name;
    if (r.pod) {
      ASSIGN_OR_RETURN(net::Network * network, Network());
      auto addr = network->Allocate(owner, r.interface_name, r.mac);
      if (!addr) return Error(addr.error()).Wrap("interface " + r.interface_name);
      a.kind = vmm::NicKind::kBridge;
      a.source = options_.net.bridge;
      a.tap = net::Network::TapName(uid, i);
      a.mac = addr->mac;
      a.mtu = options_.net.mtu;
    } else {
      const net::HostNetwork* host = HostNetwork(r.host_network);
      if (host == nullptr) {
        return MakeError(Code::kNotFound, "interface " + r.interface_name + ": network \"" +
                                              r.host_network +
                                              "\" is not one of this host's network.hostNetworks");
      }
      a.mac = r.mac.empty() ? StableMac(owner, r.interface_name) : r.mac;
      if (!host->bridge.empty()) {
        a.kind = vmm::NicKind::kBridge;
        a.source = host->bridge;
        a.tap = net::Network::TapName(uid, i);
      } else {
        a.kind = vmm::NicKind::kDirect;
        a.source = host->macvtap_device;
        a.direct_mode = host->macvtap_mode;
        a.tap = MacvtapName(uid, i);
        RETURN_IF_ERROR(
            net::EnsureMacvtap(options_.net.ip_path, a.tap, a.source, a.direct_mode, a.mac));
      }
    }
    out.push_back(std::move(a));
  }
  return out;
}

Status Networking::Sync(const std::vector<Json>& vmis, const std::vector<Json>& services) {
  if (network_ == nullptr) return Ok();
  ASSIGN_OR_RETURN(auto allocations, network_->Allocations());
  std::map<std::string, net::Address> by_key(allocations.begin(), allocations.end());
  net::DataPlane plane;
  std::vector<PodEndpoint> pods;  // one per VMI with a default-network NIC (its first)
  for (const auto& vmi : vmis) {
    if (FinalPhase(vmi) || Str(vmi, {"metadata", "uid"}).empty()) continue;
    auto reqs = NetworkRequests(vmi);
    if (!reqs) continue;
    const std::string uid = Str(vmi, {"metadata", "uid"});
    const std::string owner = Owner(vmi);
    for (size_t i = 0; i < reqs->size(); ++i) {
      const NetworkRequest& r = (*reqs)[i];
      if (!r.pod) continue;
      auto it = by_key.find(owner + "/" + r.interface_name);
      if (it == by_key.end()) continue;  // not attached yet
      net::Endpoint e;
      e.owner = owner;
      e.ip = it->second.ip;
      e.mac = it->second.mac;
      e.tap = net::Network::TapName(uid, i);
      e.binding = r.masquerade ? net::Binding::kMasquerade : net::Binding::kBridge;
      for (const auto& [proto, port] : r.ports) e.ports.push_back({proto, port});
      const std::string name = Str(vmi, {"metadata", "name"});
      if (IsDnsLabel(name)) e.hostname = name;
      plane.endpoints.push_back(e);
      PodEndpoint p{&vmi, e.ip, {}};
      if (const Json* ifaces = At(vmi, {"spec", "domain", "devices", "interfaces"});
          ifaces != nullptr && ifaces->is_array()) {
        for (const auto& iface : *ifaces) {
          if (iface.value("name", "") != r.interface_name || !iface.contains("ports")) continue;
          for (const auto& port : iface["ports"]) {
            if (port.contains("name") && port["name"].is_string() && port.contains("port") &&
                port["port"].is_number_integer()) {
              p.named_ports.emplace_back(port["name"].get<std::string>(),
                                         port["port"].get<uint16_t>());
            }
          }
        }
      }
      pods.push_back(std::move(p));
      break;
    }
  }
  for (const auto& svc : services) {
    const std::string type = Str(svc, {"spec", "type"});
    if (type != "ClusterIP" && type != "NodePort") continue;
    const Json* selector = At(svc, {"spec", "selector"});
    if (selector == nullptr) continue;
    // One endpoint per Service: the first selected VMI by name in the Service's namespace
    // (KubeVirt would balance over several pods; one host rarely runs two replicas).
    const PodEndpoint* target = nullptr;
    for (const auto& p : pods) {
      if (Str(*p.vmi, {"metadata", "namespace"}) != Str(svc, {"metadata", "namespace"})) continue;
      if (!Selects(*selector, *p.vmi)) continue;
      if (target == nullptr ||
          Str(*p.vmi, {"metadata", "name"}) < Str(*target->vmi, {"metadata", "name"})) {
        target = &p;
      }
    }
    if (target == nullptr) continue;
    std::string cluster_ip = Str(svc, {"spec", "clusterIP"});
    if (cluster_ip == "None") cluster_ip.clear();
    const Json* ports = At(svc, {"spec", "ports"});
    if (ports == nullptr || !ports->is_array()) continue;
    for (const auto& port : *ports) {
      net::Forward f;
      f.protocol = port.value("protocol", "TCP");
      f.port = port.value("port", uint16_t{0});
      f.cluster_ip = cluster_ip;
      if (type == "NodePort") f.node_port = port.value("nodePort", uint16_t{0});
      f.target_ip = target->ip;
      const Json& tp = port.contains("targetPort") ? port["targetPort"] : Json(f.port);
      if (tp.is_number_integer()) {
        f.target_port = tp.get<uint16_t>();
      } else if (tp.is_string()) {
        // A named port of the VMI's interface (KubeVirt's pod exposes them by name).
        for (const auto& [pname, pnum] : target->named_ports) {
          if (pname == tp.get<std::string>()) f.target_port = pnum;
        }
      }
      if (f.target_port == 0 || (f.node_port == 0 && f.cluster_ip.empty())) continue;
      plane.forwards.push_back(f);
    }
  }
  const std::string rendered = net::Network::RenderRuleset(options_.net, plane) + "\n--\n" +
                               net::Network::RenderHostsFile(plane);
  if (applied_ && *applied_ == rendered) return Ok();
  RETURN_IF_ERROR(network_->Apply(plane));
  applied_ = rendered;
  if (auto s = network_->RemoveStaleLeases(); !s) {
    EV_LOG(kWarning) << "DHCP leases: " << s.error().message;
  }
  return Ok();
}

Result<std::string> Networking::PodAddress(const Json& vmi) {
  ASSIGN_OR_RETURN(std::vector<NetworkRequest> reqs, NetworkRequests(vmi));
  std::lock_guard lock(mu_);
  if (network_ != nullptr) {
    ASSIGN_OR_RETURN(auto all, network_->Allocations());
    for (const auto& r : reqs) {
      if (!r.pod) continue;
      const std::string key = Owner(vmi) + "/" + r.interface_name;
      for (const auto& [k, addr] : all) {
        if (k == key) return addr.ip;
      }
    }
  }
  return MakeError(Code::kUnavailable, "the VMI has no address on the default network");
}

Status Networking::Release(const std::string& owner) {
  if (network_ == nullptr) {
    auto has = net::Network::HasAddresses(*options_.net.store);
    if (!has) return has.error();
    if (!*has) return Ok();
    RETURN_IF_ERROR(Network());
  }
  return network_->Release(owner);
}

Status Networking::Cleanup(const std::string& uid) {
  // Every NIC of the VMI shares the name up to the index (two base-36 digits).
  const std::string name = MacvtapName(uid, 0);
  return net::RemoveMacvtaps(options_.net.ip_path, name.substr(0, name.size() - 2));
}

Json Networking::InterfaceStatus(const Json& vmi, const Json* agent, bool* complete) {
  *complete = true;
  Json out = Json::array();
  auto reqs = NetworkRequests(vmi);
  if (!reqs) return out;
  const std::string owner = Owner(vmi);
  std::map<std::string, net::Address> by_key;
  std::vector<net::Lease> leases;
  if (network_ != nullptr) {
    if (auto all = network_->Allocations()) by_key.insert(all->begin(), all->end());
    if (auto l = network_->Leases()) leases = std::move(*l);
  }
  for (const auto& r : *reqs) {
    Json i = {{"name", r.interface_name}, {"infoSource", "domain"}, {"queueCount", 1}};
    std::string mac = r.mac;
    if (r.pod) {
      auto it = by_key.find(owner + "/" + r.interface_name);
      if (it != by_key.end()) mac = it->second.mac;
    } else if (mac.empty()) {
      mac = StableMac(owner, r.interface_name);
    }
    if (!mac.empty()) i["mac"] = mac;
    Json ips = Json::array();
    if (r.pod) {
      for (const auto& l : leases) {
        if (l.mac == mac) ips.push_back(l.ip);
      }
      if (ips.empty()) *complete = false;
    }
    if (agent != nullptr && agent->is_array()) {
      for (const auto& g : *agent) {
        std::string hw = g.value("hardware-address", "");
        std::transform(hw.begin(), hw.end(), hw.begin(), ::tolower);
        if (mac.empty() || hw != mac) continue;
        i["interfaceName"] = g.value("name", "");
        i["infoSource"] = "domain, guest-agent";
        if (g.contains("ip-addresses") && g["ip-addresses"].is_array()) {
          for (const auto& a : g["ip-addresses"]) {
            const std::string ip = a.value("ip-address", "");
            if (ip.empty() ||
                (a.value("ip-address-type", "") == "ipv6" && ip.rfind("fe80:", 0) == 0)) {
              continue;
            }
            if (std::find(ips.begin(), ips.end(), ip) == ips.end()) ips.push_back(ip);
          }
        }
      }
    }
    if (!ips.empty()) {
      i["ipAddress"] = ips[0];
      i["ipAddresses"] = ips;
    }
    out.push_back(std::move(i));
  }
  return out;
}

}  // namespace edgevirt::daemon
