// VM networking for the controller: maps a VMI's interfaces onto net/ (the default network's
// addresses, taps, DHCP host entries and nft rules) and onto the host networks of the config,
// builds the whole data plane from the VMIs and core/v1 Services in the store, and reports
// status.interfaces.
//
// The default network is opened lazily: on a host where no VMI ever used it, edgevirtd creates
// no bridge, no nft table and no dnsmasq. Once it holds addresses, every start reopens it and
// rebuilds the table from the store.
//
// Address owner: "<namespace>/<name>", shared by a VirtualMachine and the VMIs it starts (they
// have its name), so a VM keeps its addresses across restarts; they are released when neither
// the VM nor a VMI of that name exists any more.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/result.h"
#include "daemon/config.h"
#include "daemon/vmi_domain.h"
#include "net/net.h"

namespace edgevirt::daemon {

struct NetworkingOptions {
  // The default network and the host networks (options.store is the controller's).
  net::Options net;
  // network.serviceCIDR is the API's business; the controller only needs the bridge's MTU,
  // which is net.mtu.
};

// net/'s options from the config's `network` section (runtime files under <runDir>/net).
net::Options NetOptions(const Config& config);

class Networking {
 public:
  explicit Networking(NetworkingOptions options);
  ~Networking();

  // At start: opens the default network if the store holds addresses or a VMI in `vmis` (every
  // VMI in the store) uses it; releases the addresses of owners in neither `vms` nor `vmis`
  // (names "ns/name"); removes taps and macvtaps of ours that no VMI in `vmis` owns. Errors
  // are returned after everything was tried.
  Status Recover(const std::vector<Json>& vmis, const std::set<std::string>& vm_owners);

  // The NICs of `vmi` (NetworkRequests order): allocates its default-network addresses (opening
  // the network on first use), checks host networks against the config and creates macvtaps.
  // Errors: NetworkRequests' errors; kNotFound for a host network the config does not name;
  // net/'s errors (an exhausted subnet, a MAC taken by another VM).
  Result<std::vector<NicAttachment>> Attach(const Json& vmi);

  // Applies the data plane of these VMIs (those not in a final phase) and Services (every
  // core/v1 Service in the store). Does nothing until the default network is open, and nothing
  // when the result equals what was applied last.
  Status Sync(const std::vector<Json>& vmis, const std::vector<Json>& services);

  // The owner ("ns/name") is gone: frees its addresses.
  Status Release(const std::string& owner);

  // Removes the macvtaps made for the VMI `uid` (its taps vanish with QEMU).
  Status Cleanup(const std::string& uid);

  // status.interfaces of a running VMI: name and MAC of every interface, the address of each
  // default-network NIC from its DHCP lease, and the guest agent's view (`agent`: the return
  // of guest-network-get-interfaces, or null) matched by MAC. Sets `complete` to whether every
  // default-network NIC has its address (the caller polls until then).
  Json InterfaceStatus(const Json& vmi, const Json* agent, bool* complete);

  bool opened() const { return network_ != nullptr; }
  // The default-network address of the VMI's first pod interface (kUnavailable when it has
  // none, or none yet). Thread-safe.
  Result<std::string> PodAddress(const Json& vmi);
  // Restarts the default network's dnsmasq if it died; whether it did.
  Result<bool> Supervise() { return network_ ? network_->Supervise() : Result<bool>(false); }

  // The MAC of a host-network NIC without a macAddress: stable for the owner and interface,
  // locally administered.
  static std::string StableMac(const std::string& owner, const std::string& interface);
  // The name of the macvtap of the index-th NIC of VMI `uid`.
  static std::string MacvtapName(const std::string& uid, size_t index);

 private:
  Result<net::Network*> Network();
  const net::HostNetwork* HostNetwork(const std::string& name) const;

  NetworkingOptions options_;
  // Set once by the controller thread (under mu_); PodAddress reads it from API threads.
  std::mutex mu_;
  std::unique_ptr<net::Network> network_;
  std::optional<std::string> applied_;  // rendered ruleset + hosts file of the last Apply
};

}  // namespace edgevirt::daemon
