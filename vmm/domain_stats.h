// Per-domain statistics from virConnectGetAllDomainStats, as plain values (no libvirt types).
// Part of the public header vmm/vmm.h. Field names follow libvirt's stats keys
// (virConnectGetAllDomainStats(3): "cpu.time", "balloon.rss", "vcpu.<N>.time", "net.<N>.rx.bytes",
// "block.<N>.rd.bytes", ...). A value libvirt did not report stays nullopt: QEMU reports the
// balloon's guest-side figures only with a balloon driver in the guest, vCPU times only while
// the domain runs, and so on.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace edgevirt::vmm {

// virVcpuState.
enum class VcpuState { kOffline, kRunning, kBlocked, kUnknown };

struct VcpuStats {
  int id = 0;                             // the N of vcpu.<N>.*
  VcpuState state = VcpuState::kUnknown;  // vcpu.<N>.state
  std::optional<uint64_t> time_ns;        // vcpu.<N>.time: the vCPU thread's CPU time
  std::optional<uint64_t> wait_ns;        // vcpu.<N>.wait: time waiting for a host CPU
};

struct NetStats {
  std::string device;  // net.<N>.name: the host-side device (tap) name
  // The NIC's user alias without "ua-" (the KubeVirt interface name), from the live XML's
  // <interface><target dev>/<alias>; empty when the NIC has none.
  std::string alias;
  std::optional<uint64_t> rx_bytes, rx_pkts, rx_errs, rx_drop;
  std::optional<uint64_t> tx_bytes, tx_pkts, tx_errs, tx_drop;
};

struct BlockStats {
  std::string target;  // block.<N>.name: the target ("vda", "sdb")
  std::string path;    // block.<N>.path, when libvirt reports it
  // The disk's user alias without "ua-" (the KubeVirt volume name), from the live XML; empty
  // when the disk has none.
  std::string alias;
  std::optional<uint64_t> rd_reqs, rd_bytes, rd_times_ns;
  std::optional<uint64_t> wr_reqs, wr_bytes, wr_times_ns;
  std::optional<uint64_t> fl_reqs, fl_times_ns;
};

struct DomainStats {
  std::string name;
  std::string uuid;  // lower-case canonical form
  int state = 0;     // state.state (virDomainState)
  int reason = 0;    // state.reason
  // cpu.*: nanoseconds of host CPU time of the whole QEMU process (vCPUs + emulator).
  std::optional<uint64_t> cpu_time_ns, cpu_user_ns, cpu_system_ns;
  // balloon.*: KiB (libvirt's unit), except the fault counts.
  std::optional<uint64_t> balloon_current_kib;  // memory the guest has now
  std::optional<uint64_t> balloon_maximum_kib;  // the domain's maximum memory
  std::optional<uint64_t> balloon_swap_in_kib, balloon_swap_out_kib;
  std::optional<uint64_t> balloon_major_fault, balloon_minor_fault;
  std::optional<uint64_t> balloon_unused_kib, balloon_available_kib, balloon_usable_kib;
  std::optional<uint64_t> balloon_rss_kib;          // QEMU's resident set size
  std::optional<uint64_t> balloon_disk_caches_kib;  // guest page cache
  std::optional<uint64_t> vcpu_current, vcpu_maximum;
  std::vector<VcpuStats> vcpus;  // ordered by id
  std::vector<NetStats> nets;    // in libvirt's order
  std::vector<BlockStats> blocks;
};

}  // namespace edgevirt::vmm
