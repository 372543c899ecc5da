// net/ — the default ("pod") network of edgevirtd: a NAT bridge owned by the daemon, IPAM
// persisted in the store, DHCP from a supervised dnsmasq with static leases, and one nftables
// table (`inet edgevirt`) holding masquerade, inbound limits and Service port forwards. Host
// networks (existing bridges, macvtap on a host NIC) are only validated here.
//
// Contract: nothing outside our bridge, our taps (TapName prefix), our dnsmasq (run_dir) and
// our nft table is ever changed. Every program is run with an argv (common/exec.h), never a
// shell. All methods of Network are thread-safe (one mutex); they act on the network namespace
// of the calling thread (and the programs it runs).
#pragma once

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace edgevirt::store {
class Store;
}

namespace edgevirt::net {

// A network of the host a VM NIC joins directly (the standalone stand-in for Multus). Exactly
// one of `bridge` / `macvtap_device` is set.
struct HostNetwork {
  std::string name;
  std::string bridge;                   // an existing Linux bridge
  std::string macvtap_device;           // an existing host NIC
  std::string macvtap_mode = "bridge";  // vepa | bridge | private | passthrough
};

struct Options {
  std::string run_dir;            // dnsmasq conf, hosts file, lease file, pid file (created 0700)
  store::Store* store = nullptr;  // IPAM persistence (raw space "ipam"); required
  std::string bridge = "edgevirt0";
  std::string cidr = "10.208.0.0/24";  // IPv4 only, prefix 8..30; gateway = first host address
  uint32_t mtu = 0;                    // 0: leave the bridge's MTU alone
  std::vector<HostNetwork> host_networks;
  // Bare names are looked up in common/exec.h's kExecSearchPath; absolute paths used as given.
  std::string nft_path = "nft", dnsmasq_path = "dnsmasq", ip_path = "ip";
};

struct Address {
  std::string ip;   // "10.208.0.2"
  std::string mac;  // lower case "02:xx:xx:xx:xx:xx"
  int prefix_len = 0;
  std::string gateway;
};

enum class Binding { kMasquerade, kBridge };

struct PortSpec {
  std::string protocol = "TCP";  // TCP | UDP (case-insensitive)
  uint16_t port = 0;             // 1..65535
};

// One VM NIC on the default network.
struct Endpoint {
  std::string owner;  // IPAM owner key, e.g. "ns/vmname" (informational here)
  std::string ip, mac, tap;
  Binding binding = Binding::kMasquerade;
  // Masquerade: new inbound connections (routed or port-forwarded) reach the VM only on these
  // ports when the list is non-empty. Bridge binding (or an empty list): everything.
  std::vector<PortSpec> ports;
  std::string hostname;  // DHCP host name (optional; must be a DNS label when set)
};

// One Service port.
struct Forward {
  std::string protocol = "TCP";
  uint16_t node_port = 0;  // 0: none; else 30000..32767, DNAT from every host address
  std::string cluster_ip;  // empty: none; else DNAT of cluster_ip:port
  uint16_t port = 0;
  std::string target_ip;
  uint16_t target_port = 0;
};

struct DataPlane {
  std::vector<Endpoint> endpoints;
  std::vector<Forward> forwards;
};

struct Lease {
  std::string mac, ip, hostname;  // hostname empty when the client sent none
  int64_t expiry = 0;             // unix seconds (0: infinite)
};

// The nft table every rule of ours lives in (family inet).
inline constexpr std::string_view kNftTable = "edgevirt";
// Every tap name starts with this; RemoveStaleTaps deletes only tun/tap links with it.
inline constexpr std::string_view kTapPrefix = "evt";
// Every macvtap of a host network's NIC starts with this (EnsureMacvtap, RemoveMacvtaps).
inline constexpr std::string_view kMacvtapPrefix = "evm";
// The socket mark (SO_MARK) of the daemon's own port-forward connections to VMs: like
// virt-handler's forwarder inside the pod, they reach every port of a masquerade VM, declared
// or not (the host's other connections are held to the declared ports).
inline constexpr uint32_t kPortForwardMark = 0x65760001;

// A VM NIC on a macvtap host network: the macvtap `name` (kMacvtapPrefix, <= 15 characters) on
// host NIC `device` in `mode` (vepa | bridge | private | passthrough) with the guest's `mac`,
// up. net/ makes it and libvirt only opens it (libvirt 9.0's embedded driver crashes the
// process when it deletes a macvtap it made itself). An existing macvtap of that name is
// reused (address and state set again). Errors: kInvalid (a name, mode or MAC), kConflict (a
// link of that name that is not a macvtap), kInternal (ip(8) failed).
Status EnsureMacvtap(const std::string& ip_path, const std::string& name, const std::string& device,
                     const std::string& mode, const std::string& mac);
// Deletes the macvtap links whose name starts with `prefix` (which must start with
// kMacvtapPrefix) and are not in `keep`. The first failure after trying all.
Status RemoveMacvtaps(const std::string& ip_path, std::string_view prefix,
                      const std::set<std::string>& keep = {});

class Network {
 public:
  // Validates the options (bridge name, cidr, host networks: the bridge must exist and be a
  // bridge, the NIC must exist, the mode known), creates run_dir (0700), ensures the bridge
  // (created if missing; a non-bridge link of that name is kConflict), its gateway address and
  // MTU, brings it up, enables IPv4 forwarding in this network namespace, loads the IPAM
  // records and starts dnsmasq — or adopts the one a killed daemon left (pid file and
  // /proc/PID/cmdline naming our conf file, the same conf), killing every other dnsmasq that
  // uses our conf, so there is never more than one. The nft table is left as it is until Apply.
  // Errors: kInvalid (options), kNotFound (a host network's device, a program), kConflict,
  // kInternal (a command failed; its stderr is in the message).
  static Result<std::unique_ptr<Network>> Open(const Options& options);
  // Leaves dnsmasq, the bridge and the table running (they outlive the daemon like QEMU does).
  ~Network();

  // One stable address per (owner, interface): the same pair gets the same ip+mac back, also
  // after a reopen. `mac` empty: a generated locally administered unicast MAC (unique among
  // our allocations); else it is validated, normalised and must not belong to another
  // allocation (a changed request replaces the pair's MAC, the IP stays). The lowest free
  // address after the gateway is taken. Durable before it returns.
  // Errors: kInvalid (owner/interface/mac), kAlreadyExists (mac taken by another pair),
  // kUnavailable "subnet <cidr> exhausted" (common/result.h has no kResourceExhausted).
  // owner: 1-256 bytes without NUL or newline; interface: 1-63 bytes without NUL, '/' or newline.
  Result<Address> Allocate(const std::string& owner, const std::string& interface,
                           const std::string& mac);
  // Frees every address of the owner (none is success).
  Status Release(const std::string& owner);
  // Start-up GC: releases every allocation whose owner is not in `owners` (the VMs that exist);
  // returns how many (owner, interface) allocations were freed.
  Result<size_t> RetainOwners(const std::set<std::string>& owners);
  // Every allocation as (owner + "/" + interface, address), sorted by owner then interface.
  Result<std::vector<std::pair<std::string, Address>>> Allocations() const;

  // Applies the whole desired data plane: validates it all first (bad input: kInvalid, nothing
  // changed), rewrites dnsmasq's dhcp-hostsfile (SIGHUP only when it changed) and replaces our
  // nft table in ONE `nft -f` transaction (add table; delete table; table { ... }), and puts
  // the endpoints' taps that are ports of our bridge in hairpin mode (missing taps are
  // skipped). Idempotent: the same DataPlane gives the same table.
  Status Apply(const DataPlane& plane);

  // dnsmasq's lease file (missing file: no leases).
  Result<std::vector<Lease>> Leases() const;

  // Deletes the leases whose (mac, ip) is not an endpoint of the last Apply (start-up GC, after
  // the first Apply; also fine on resync). Restarts dnsmasq when there are any (it holds its
  // leases in memory); returns how many were removed.
  Result<size_t> RemoveStaleLeases();

  // Deletes tun/tap links named with kTapPrefix that are not in `live`. Returns OK when they
  // are gone; the first failure otherwise (after trying all).
  Status RemoveStaleTaps(const std::set<std::string>& live);

  // Restarts dnsmasq if it is no longer running; returns whether it did.
  Result<bool> Supervise();

  // Stops dnsmasq (SIGTERM, then SIGKILL after 2 s) and removes its pid file. For tests and
  // uninstall; the daemon does not call it on shutdown.
  Status StopDhcp();

  // The pid of the dnsmasq serving us, 0 if none runs.
  int DhcpPid() const;

  // Whether `store` holds any address (a network that must be reopened at start).
  static Result<bool> HasAddresses(const store::Store& store);

  // The tap name of a VMI's NIC: kTapPrefix + 10 hex digits of a 64-bit FNV-1a hash of the uid
  // + the index in two base-36 digits (index modulo 1296) — 15 characters, IFNAMSIZ-1.
  static std::string TapName(std::string_view vmi_uid, size_t index);

  // The `nft -f` script Apply feeds (pure; for tests and the bench). The DataPlane must be
  // valid (Apply validates).
  static std::string RenderRuleset(const Options& options, const DataPlane& plane);

  // The dnsmasq dhcp-hostsfile for the endpoints (pure): "mac,ip[,hostname]" per line.
  static std::string RenderHostsFile(const DataPlane& plane);

  // Validates a DataPlane against the options (kInvalid with the first problem).
  static Status Validate(const Options& options, const DataPlane& plane);

  // Parses a MAC address: six hex pairs separated by ':' or '-', unicast, not all zero;
  // returns it lower case with ':'. kInvalid otherwise.
  static Result<std::string> NormalizeMac(std::string_view mac);

 private:
  struct Impl;
  explicit Network(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace edgevirt::net
