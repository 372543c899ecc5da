// bench_network: net/'s data plane at scale, in a private network namespace of this process
// (unshare(CLONE_NEWNET); nothing outside it is touched). Prints one JSON object on stdout;
// progress and errors go to stderr.
//
//   bench_network [--forwards N] [--vms N] [--runs N] [--quick]
//
// 1. Port forwards: N Service NodePorts (30000.., each to a distinct VM address:port) applied
//    by Network::Apply — the whole table in ONE `nft -f` transaction — against the reference,
//    N separate `nft add rule ip ref prerouting tcp dport P dnat to IP:PORT` invocations into
//    an empty nat chain (how a rule-at-a-time tool reconciles). Both end states are counted
//    (N map elements, N rules). `ratio` = reference / edgevirt (median of the runs).
// 2. Restore at start: with --vms taps already present (as running QEMUs keep theirs) and their
//    addresses in the store, the time a restarted daemon needs to restore networking:
//    Network::Open + Allocate per VM (the stored addresses) + Apply (every endpoint with a
//    declared port and one NodePort each) + RemoveStaleTaps + RemoveStaleLeases. `warm`: the
//    previous process's bridge, table and dnsmasq are still there (a daemon restart, dnsmasq
//    adopted). `cold`: dnsmasq stopped, bridge and table deleted first (a host reboot with taps
//    re-made).
//
// Needs root, ip, nft and dnsmasq.
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "common/exec.h"
#include "net/net.h"
#include "store/store.h"

namespace edgevirt::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using nlohmann::ordered_json;

struct Flags {
  int forwards = 1000;
  int vms = 100;
  int runs = 3;
};

[[noreturn]] void Usage() {
  std::fprintf(stderr, "usage: bench_network [--forwards N] [--vms N] [--runs N] [--quick]\n");
  std::exit(2);
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> int {
      if (i + 1 >= argc) Usage();
      return std::atoi(argv[++i]);
    };
    if (a == "--forwards") {
      f.forwards = next();
    } else if (a == "--vms") {
      f.vms = next();
    } else if (a == "--runs") {
      f.runs = next();
    } else if (a == "--quick") {
      f.forwards = 100;
      f.vms = 10;
      f.runs = 1;
    } else {
      Usage();
    }
  }
  // NodePorts are 30000-32767 (2768 of them); VMs live in one /16.
  if (f.forwards < 1 || f.forwards > 2768 || f.vms < 1 || f.vms > 2000 || f.runs < 1) Usage();
  return f;
}

// The run dir, so that a failing run does not leave its dnsmasq behind.
std::string g_run_dir;

[[noreturn]] void Die(const std::string& what, const Error& e) {
  std::fprintf(stderr, "bench_network: %s: %s\n", what.c_str(), e.ToString().c_str());
  if (!g_run_dir.empty()) {
    std::ifstream in(g_run_dir + "/dnsmasq.pid");
    int pid = 0;
    if (in >> pid && pid > 0) ::kill(pid, SIGTERM);
  }
  std::exit(1);
}
template <typename T>
T Must(Result<T> r, const std::string& what) {
  if (!r) Die(what, r.error());
  return std::move(r).value();
}
void Must(Status s, const std::string& what) {
  if (!s) Die(what, s.error());
}

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

ordered_json Summary(std::vector<double> ms) {
  std::sort(ms.begin(), ms.end());
  double median =
      ms.size() % 2 ? ms[ms.size() / 2] : (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]) / 2;
  return ordered_json{
      {"samples", ms.size()}, {"median_ms", median}, {"min_ms", ms.front()}, {"max_ms", ms.back()}};
}

// Address i of the bench's /16 (10.208.0.0/16), skipping network and gateway.
std::string VmIp(int i) {
  int host = i + 2;
  return "10.208." + std::to_string(host / 256) + "." + std::to_string(host % 256);
}

size_t Count(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

net::DataPlane ForwardPlane(int n) {
  net::DataPlane p;
  for (int i = 0; i < n; ++i) {
    p.forwards.push_back(
        net::Forward{"TCP", static_cast<uint16_t>(30000 + i), "", 0, VmIp(i % 250), 8080});
  }
  return p;
}

net::DataPlane VmPlane(const std::vector<net::Address>& addrs,
                       const std::vector<std::string>& taps) {
  net::DataPlane p;
  for (size_t i = 0; i < addrs.size(); ++i) {
    net::Endpoint e;
    e.owner = "bench/vm" + std::to_string(i);
    e.ip = addrs[i].ip;
    e.mac = addrs[i].mac;
    e.tap = taps[i];
    e.ports = {{"TCP", 22}};
    p.endpoints.push_back(e);
    p.forwards.push_back(
        net::Forward{"TCP", static_cast<uint16_t>(30000 + i), "", 0, addrs[i].ip, 22});
  }
  return p;
}

std::string Nft(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"nft"};
  argv.insert(argv.end(), args.begin(), args.end());
  return Must(ExecChecked(argv), "nft").stdout_text;
}

int Main(int argc, char** argv) {
  const Flags flags = ParseFlags(argc, argv);
  if (::unshare(CLONE_NEWNET) != 0) {
    std::perror("bench_network: unshare(CLONE_NEWNET) (needs root)");
    return 1;
  }
  Must(ExecChecked({"ip", "link", "set", "lo", "up"}), "lo up");

  std::string tmpl = (fs::temp_directory_path() / "bench-network-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  const fs::path dir = tmpl;
  store::Options so;
  so.dir = dir / "state";
  auto store = Must(store::Store::Open(so), "open store");
  net::Options no;
  no.run_dir = (dir / "run").string();
  no.store = store.get();
  no.cidr = "10.208.0.0/16";
  g_run_dir = no.run_dir;

  std::vector<double> atomic_ms, separate_ms, warm_ms, cold_ms;
  {
    auto network = Must(net::Network::Open(no), "open");
    const net::DataPlane forwards = ForwardPlane(flags.forwards);
    for (int run = 0; run < flags.runs; ++run) {
      std::fprintf(stderr, "bench_network: run %d: %d forwards\n", run + 1, flags.forwards);
      Must(network->Apply({}), "apply empty");
      auto t0 = Clock::now();
      Must(network->Apply(forwards), "apply forwards");
      atomic_ms.push_back(Ms(Clock::now() - t0));
      const std::string map = Nft({"list", "map", "inet", "edgevirt", "nodeports"});
      if (Count(map, " . 8080") != static_cast<size_t>(flags.forwards)) {
        Die("nodeports map",
            MakeError(Code::kInternal, std::to_string(Count(map, " . 8080")) + " elements, not " +
                                           std::to_string(flags.forwards)));
      }

      Nft({"add", "table", "ip", "ref"});
      Nft({"add", "chain", "ip", "ref", "prerouting",
           "{ type nat hook prerouting priority dstnat; policy accept; }"});
      t0 = Clock::now();
      for (int i = 0; i < flags.forwards; ++i) {
        const auto& f = forwards.forwards[static_cast<size_t>(i)];
        Nft({"add", "rule", "ip", "ref", "prerouting", "tcp", "dport", std::to_string(f.node_port),
             "dnat", "to", f.target_ip + ":" + std::to_string(f.target_port)});
      }
      separate_ms.push_back(Ms(Clock::now() - t0));
      const std::string chain = Nft({"list", "chain", "ip", "ref", "prerouting"});
      if (Count(chain, " dnat to ") != static_cast<size_t>(flags.forwards)) {
        Die("reference chain",
            MakeError(Code::kInternal, std::to_string(Count(chain, " dnat to ")) + " rules, not " +
                                           std::to_string(flags.forwards)));
      }
      Nft({"delete", "table", "ip", "ref"});
    }
    Must(network->Apply({}), "apply empty");
  }

  // The VMs' taps and stored addresses, as a previous daemon left them.
  std::vector<std::string> taps;
  std::vector<net::Address> addrs;
  {
    auto network = Must(net::Network::Open(no), "open");
    for (int i = 0; i < flags.vms; ++i) {
      taps.push_back(net::Network::TapName("bench-uid-" + std::to_string(i), 0));
      Must(ExecChecked({"ip", "tuntap", "add", "dev", taps.back(), "mode", "tap"}), "tuntap");
      Must(ExecChecked({"ip", "link", "set", "dev", taps.back(), "master", "edgevirt0", "up"}),
           "enslave tap");
      addrs.push_back(
          Must(network->Allocate("bench/vm" + std::to_string(i), "default", ""), "allocate"));
    }
    Must(network->Apply(VmPlane(addrs, taps)), "apply vms");
  }
  const std::set<std::string> live(taps.begin(), taps.end());
  auto restore = [&]() {
    auto t0 = Clock::now();
    auto network = Must(net::Network::Open(no), "open");
    std::vector<net::Address> again;
    for (int i = 0; i < flags.vms; ++i) {
      again.push_back(
          Must(network->Allocate("bench/vm" + std::to_string(i), "default", ""), "allocate"));
    }
    Must(network->Apply(VmPlane(again, taps)), "apply vms");
    Must(network->RemoveStaleTaps(live), "remove stale taps");
    Must(network->RemoveStaleLeases(), "remove stale leases");
    double ms = Ms(Clock::now() - t0);
    for (size_t i = 0; i < again.size(); ++i) {
      if (again[i].ip != addrs[i].ip || again[i].mac != addrs[i].mac) {
        Die("restore", MakeError(Code::kInternal, "vm" + std::to_string(i) + " lost its address"));
      }
    }
    return std::make_pair(ms, std::move(network));
  };
  for (int run = 0; run < flags.runs; ++run) {
    std::fprintf(stderr, "bench_network: run %d: restore %d VMs\n", run + 1, flags.vms);
    auto [warm, network] = restore();
    warm_ms.push_back(warm);
    // Cold: no dnsmasq, no bridge (the taps fall off it), no table.
    Must(network->StopDhcp(), "stop dhcp");
    network.reset();
    Must(ExecChecked({"ip", "link", "del", "dev", "edgevirt0"}), "delete bridge");
    Nft({"delete", "table", "inet", "edgevirt"});
    auto [cold, network2] = restore();
    cold_ms.push_back(cold);
    // libvirt re-enslaves taps to a re-made bridge; do that too (untimed) for the next run.
    for (const auto& tap : taps) {
      Must(ExecChecked({"ip", "link", "set", "dev", tap, "master", "edgevirt0"}), "enslave");
    }
  }
  {
    auto network = Must(net::Network::Open(no), "open");
    Must(network->StopDhcp(), "stop dhcp");
  }
  store.reset();
  std::error_code ec;
  fs::remove_all(dir, ec);

  auto median = [](const ordered_json& s) { return s["median_ms"].get<double>(); };
  ordered_json atomic = Summary(atomic_ms), separate = Summary(separate_ms);
  ordered_json out{
      {"bench", "network"},
      {"runs", flags.runs},
      {"nft_version", Must(ExecChecked({"nft", "--version"}), "nft --version").stdout_text},
      {"forwards",
       {{"count", flags.forwards},
        {"edgevirt_one_transaction", atomic},
        {"nft_add_rule_each", separate},
        {"ratio", median(separate) / median(atomic)}}},
      {"restore",
       {{"vms", flags.vms},
        {"warm", Summary(warm_ms)},
        {"cold", Summary(cold_ms)},
        {"warm_per_vm_ms", median(Summary(warm_ms)) / flags.vms}}},
  };
  std::string& v = out["nft_version"].get_ref<std::string&>();
  while (!v.empty() && v.back() == '\n') v.pop_back();
  std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace
}  // namespace edgevirt::bench

int main(int argc, char** argv) { return edgevirt::bench::Main(argc, argv); }
