// net/ against the real parts, each test in network namespaces of its own:
//   H  the "host": the Network under test (bridge edgevirt0, dnsmasq, the nft table)
//   V  a stand-in VM: a veth whose peer is enslaved to H's bridge, address from DHCP (busybox
//      udhcpc), TCP listeners on 8080 and 9090 (python3)
//   C  a client outside: a veth to H (192.168.77.2 <-> 192.168.77.1), default route via H
// Nothing here touches the machine's own namespace.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/exec.h"
#include "net/net.h"
#include "store/store.h"
#include "tests/support/catch.h"
#include "tests/support/netns.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::net {
namespace {

using edgevirt::testing::EnterNetNs;
using edgevirt::testing::NetNs;
using edgevirt::testing::TempDir;
using namespace std::chrono_literals;

// Accepts on every port given, answers "vm:<port> peer:<client address>" and closes.
constexpr const char* kServer = R"(
import selectors, socket, sys
sel = selectors.DefaultSelector()
for p in sys.argv[1:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(p))); s.listen(16); sel.register(s, selectors.EVENT_READ, p)
while True:
    for key, _ in sel.select():
        c, addr = key.fileobj.accept()
        c.sendall(("vm:%s peer:%s\n" % (key.data, addr[0])).encode()); c.close()
)";
// Connects to argv[1]:argv[2] within argv[3] seconds and prints the first line it gets.
constexpr const char* kClient = R"(
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
print(s.makefile().readline().strip())
)";
// udhcpc's event script: configure what the lease says.
constexpr const char* kUdhcpcScript = R"(#!/bin/sh
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route replace default via "$router"
    ;;
esac
exit 0
)";

void Must(const Result<ExecResult>& r) {
  if (!r) FAIL(r.error().ToString());
}

// A process started in the background; SIGKILLed and reaped when the object goes.
class Background {
 public:
  explicit Background(std::vector<std::string> argv) {
    pid_ = ::fork();
    if (pid_ == 0) {
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      ::_exit(127);
    }
  }
  ~Background() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

 private:
  pid_t pid_ = -1;
};

struct Topology {
  TempDir dir{"ev-net-it"};
  std::string tag = std::to_string(::getpid());
  NetNs h{"evn-h-" + tag}, v{"evn-v-" + tag}, c{"evn-c-" + tag};
  std::unique_ptr<store::Store> store;

  Topology() {
    REQUIRE(h.ok());
    REQUIRE(v.ok());
    REQUIRE(c.ok());
    dir.Write("udhcpc.sh", kUdhcpcScript);
    std::filesystem::permissions(dir / "udhcpc.sh", std::filesystem::perms::owner_all);
  }

  void OpenStore() {
    store.reset();
    store::Options so;
    so.dir = dir.path() / "state";
    so.initial_map_size = 4u << 20;
    auto s = store::Store::Open(so);
    REQUIRE(s);
    store = std::move(*s);
  }
  Options NetOptions() {
    Options o;
    o.run_dir = dir.Path("run");
    o.store = store.get();
    return o;
  }

  // V's eth0 joins H's bridge, with the MAC IPAM gave the VM; C gets its uplink to H.
  void Wire(const std::string& vm_mac) {
    Must(h.Run(
        {"ip", "link", "add", "evvm0", "type", "veth", "peer", "name", "eth0", "netns", v.name()}));
    Must(h.Run({"ip", "link", "set", "evvm0", "master", "edgevirt0", "up"}));
    Must(v.Run({"ip", "link", "set", "eth0", "address", vm_mac, "up"}));
    Must(h.Run(
        {"ip", "link", "add", "evup0", "type", "veth", "peer", "name", "eth0", "netns", c.name()}));
    Must(h.Run({"ip", "addr", "add", "192.168.77.1/24", "dev", "evup0"}));
    Must(h.Run({"ip", "link", "set", "evup0", "up"}));
    // H's uplink: without a route the host could not even try a ClusterIP.
    Must(h.Run({"ip", "route", "add", "default", "via", "192.168.77.2"}));
    Must(c.Run({"ip", "addr", "add", "192.168.77.2/24", "dev", "eth0"}));
    Must(c.Run({"ip", "link", "set", "eth0", "up"}));
    Must(c.Run({"ip", "route", "add", "default", "via", "192.168.77.1"}));
  }

  // busybox udhcpc in V; returns V's eth0 IPv4 address afterwards.
  std::string Dhcp() {
    ExecOptions eo;
    eo.timeout = 20s;
    Must(v.Run({"busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "10", "-T", "1", "-s",
                dir.Path("udhcpc.sh")},
               eo));
    auto a = v.Run({"ip", "-4", "-o", "addr", "show", "dev", "eth0"});
    Must(a);
    auto& t = a->stdout_text;
    auto p = t.find("inet ");
    REQUIRE(p != std::string::npos);
    return t.substr(p + 5, t.find('/', p) - p - 5);
  }

  // The reply of host:port seen from `ns`, or "" when the connection fails.
  static std::string Connect(const NetNs& ns, const std::string& host, int port,
                             const std::string& timeout = "1.5") {
    auto r = Exec({"ip", "netns", "exec", ns.name(), "python3", "-c", kClient, host,
                   std::to_string(port), timeout});
    if (!r || !r->ok()) return "";
    auto s = r->stdout_text;
    while (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }

  std::string ListTable() {
    auto r = h.Run({"nft", "list", "table", "inet", "edgevirt"});
    Must(r);
    return r->stdout_text;
  }
  std::string ListRuleset() {
    auto r = h.Run({"nft", "list", "ruleset"});
    Must(r);
    return r->stdout_text;
  }
  std::vector<int> OurDnsmasqs() {
    std::vector<int> pids;
    const std::string arg = "--conf-file=" + dir.Path("run") + "/dnsmasq.conf";
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
      const std::string n = e.path().filename().string();
      if (n.find_first_not_of("0123456789") != std::string::npos) continue;
      std::ifstream in(e.path() / "cmdline", std::ios::binary);
      std::string cmd((std::istreambuf_iterator<char>(in)), {});
      std::ifstream st(e.path() / "stat");
      std::string stat((std::istreambuf_iterator<char>(st)), {});
      auto paren = stat.rfind(')');
      if (paren == std::string::npos || stat.substr(paren + 2, 1) == "Z") continue;
      if (cmd.find(arg + '\0') != std::string::npos) pids.push_back(std::stoi(n));
    }
    return pids;
  }
  void StopDnsmasqs() {
    for (int pid : OurDnsmasqs()) ::kill(pid, SIGKILL);
  }
  ~Topology() { StopDnsmasqs(); }
};

// A foreign table in H that the driver must leave byte for byte alone.
constexpr const char* kForeign = R"(table ip foreign {
	set blocked {
		type ipv4_addr
		elements = { 203.0.113.7 }
	}

	chain filter_forward {
		type filter hook forward priority 10; policy accept;
		ip saddr @blocked drop
	}
}
)";

DataPlane PlaneFor(const Address& vm) {
  DataPlane p;
  Endpoint e;
  e.owner = "default/vm1";
  e.ip = vm.ip;
  e.mac = vm.mac;
  e.hostname = "vm1";
  e.tap = "evvm0";            // the veth standing in for the VM's tap (see Topology::Wire)
  e.ports = {{"TCP", 8080}};  // masquerade: only 8080 may come in
  p.endpoints = {e};
  p.forwards = {Forward{"TCP", 30080, "10.96.0.10", 80, vm.ip, 8080},
                Forward{"TCP", 30090, "", 0, vm.ip, 9090}};
  return p;
}

TEST_CASE("net: bridge, DHCP, NodePort/ClusterIP, port limits, masquerade, idempotent Apply",
          "[net][integration]") {
  Topology t;
  Must(t.h.Run({"nft", "-f", t.dir.Write("foreign.nft", kForeign).string()}));
  const std::string foreign_before =
      t.h.Run({"nft", "list", "table", "ip", "foreign"})->stdout_text;

  EnterNetNs enter(t.h.path());
  REQUIRE(enter.ok());
  t.OpenStore();
  auto opened = Network::Open(t.NetOptions());
  if (!opened) FAIL(opened.error().ToString());
  auto& net = *opened;

  // The bridge with the gateway address, and exactly one dnsmasq.
  auto link = t.h.Run({"ip", "-d", "-o", "addr", "show", "dev", "edgevirt0"});
  Must(link);
  CHECK(link->stdout_text.find("inet 10.208.0.1/24") != std::string::npos);
  REQUIRE(t.OurDnsmasqs().size() == 1);
  CHECK(net->DhcpPid() == t.OurDnsmasqs()[0]);
  CHECK(t.h.Run({"cat", "/proc/sys/net/ipv4/ip_forward"})->stdout_text == "1\n");

  auto vm = net->Allocate("default/vm1", "default", "");
  REQUIRE(vm);
  const DataPlane plane = PlaneFor(*vm);
  {
    auto applied = net->Apply(plane);
    if (!applied) FAIL(applied.error().ToString());
  }
  const std::string table = t.ListTable();
  REQUIRE(net->Apply(plane));
  CHECK(t.ListTable() == table);

  // A bad data plane changes nothing.
  DataPlane bad = plane;
  bad.forwards.push_back(Forward{"TCP", 80, "", 0, vm->ip, 8080});
  auto refused = net->Apply(bad);
  REQUIRE_FALSE(refused);
  CHECK(refused.error().code == Code::kInvalid);
  CHECK(t.ListTable() == table);

  // DHCP: the static lease for the allocated MAC.
  t.Wire(vm->mac);
  REQUIRE(net->Apply(plane));  // the "tap" now exists: hairpin on its bridge port
  auto port = t.h.Run({"ip", "-d", "link", "show", "dev", "evvm0"});
  Must(port);
  CHECK(port->stdout_text.find("hairpin on") != std::string::npos);
  CHECK(t.ListTable() == table);
  CHECK(t.Dhcp() == vm->ip);
  auto leases = net->Leases();
  REQUIRE(leases);
  REQUIRE(leases->size() == 1);
  CHECK((*leases)[0].mac == vm->mac);
  CHECK((*leases)[0].ip == vm->ip);
  CHECK((*leases)[0].hostname == "vm1");

  Background server(
      {"ip", "netns", "exec", t.v.name(), "python3", "-c", kServer, "8080", "9090", "7000"});
  Background outside({"ip", "netns", "exec", t.c.name(), "python3", "-c", kServer, "7000"});
  for (int i = 0; i < 100 && (Topology::Connect(t.v, "127.0.0.1", 9090).empty() ||
                              Topology::Connect(t.c, "127.0.0.1", 7000).empty());
       ++i) {
    std::this_thread::sleep_for(50ms);
  }
  REQUIRE(Topology::Connect(t.v, "127.0.0.1", 9090) == "vm:9090 peer:127.0.0.1");

  // NodePort from outside, to a declared port: forwarded, client address preserved.
  CHECK(Topology::Connect(t.c, "192.168.77.1", 30080) == "vm:8080 peer:192.168.77.2");
  // NodePort to an undeclared port, and the undeclared port routed directly: refused.
  CHECK(Topology::Connect(t.c, "192.168.77.1", 30090, "1") == "");
  CHECK(Topology::Connect(t.c, vm->ip, 9090, "1") == "");
  CHECK(Topology::Connect(t.c, vm->ip, 8080) == "vm:8080 peer:192.168.77.2");
  // From the host itself the same limits hold (refused at once: reject, not drop).
  CHECK(Topology::Connect(t.h, vm->ip, 9090, "1") == "");
  CHECK(Topology::Connect(t.h, vm->ip, 8080).rfind("vm:8080 peer:", 0) == 0);
  // ClusterIP from outside (prerouting) and from the host itself (output).
  CHECK(Topology::Connect(t.c, "10.96.0.10", 80) == "vm:8080 peer:192.168.77.2");
  CHECK(Topology::Connect(t.h, "10.96.0.10", 80).rfind("vm:8080 peer:", 0) == 0);
  // A VM through a Service back to itself: hairpin-masqueraded behind the gateway.
  CHECK(Topology::Connect(t.v, "10.96.0.10", 80) == "vm:8080 peer:10.208.0.1");
  // Outbound from the VM is masqueraded behind H's uplink address.
  CHECK(Topology::Connect(t.v, "192.168.77.2", 7000) == "vm:7000 peer:192.168.77.1");

  // Bridge binding: everything comes in.
  DataPlane bridged = plane;
  bridged.endpoints[0].binding = Binding::kBridge;
  REQUIRE(net->Apply(bridged));
  CHECK(Topology::Connect(t.c, "192.168.77.1", 30090) == "vm:9090 peer:192.168.77.2");
  REQUIRE(net->Apply(plane));
  CHECK(t.ListTable() == table);

  // One table of ours, the foreign one untouched, no other table appeared.
  const std::string ruleset = t.ListRuleset();
  size_t tables = 0;
  for (size_t p = ruleset.find("\ntable "); p != std::string::npos;
       p = ruleset.find("\ntable ", p + 1)) {
    ++tables;
  }
  CHECK(tables + (ruleset.rfind("table ", 0) == 0 ? 1 : 0) == 2);
  CHECK(t.h.Run({"nft", "list", "table", "ip", "foreign"})->stdout_text == foreign_before);
  REQUIRE(net->StopDhcp());
  CHECK(t.OurDnsmasqs().empty());
}

TEST_CASE("net: kill -9 then re-Open: one dnsmasq, same leases and rules, stale taps gone",
          "[net][integration]") {
  Topology t;
  const std::string live_tap = Network::TapName("uid-live", 0);
  const std::string stale_tap = Network::TapName("uid-gone", 0);
  for (const auto& tap : {live_tap, stale_tap, std::string("othertap0")}) {
    Must(t.h.Run({"ip", "tuntap", "add", "dev", tap, "mode", "tap"}));
  }
  Must(t.h.Run({"ip", "link", "add", "evtveth0", "type", "veth", "peer", "name", "evtveth1"}));

  // A process that opens the network, applies, reports, and is then SIGKILLed.
  int ready[2];
  REQUIRE(::pipe(ready) == 0);
  pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(ready[0]);
    EnterNetNs enter(t.h.path());
    store::Options so;
    so.dir = t.dir.path() / "state";
    so.initial_map_size = 4u << 20;
    auto s = store::Store::Open(so);
    if (!s || !enter.ok()) ::_exit(2);
    Options o;
    o.run_dir = t.dir.Path("run");
    o.store = s->get();
    auto n = Network::Open(o);
    if (!n) ::_exit(3);
    auto a = (*n)->Allocate("default/vm1", "default", "");
    if (!a || !(*n)->Apply(PlaneFor(*a))) ::_exit(4);
    std::string msg = a->ip + " " + a->mac + "\n";
    (void)!::write(ready[1], msg.data(), msg.size());
    ::pause();
    ::_exit(0);
  }
  ::close(ready[1]);
  char buf[128] = {};
  ssize_t got = ::read(ready[0], buf, sizeof buf - 1);
  ::close(ready[0]);
  if (got <= 0) {
    int st = 0;
    ::waitpid(child, &st, 0);
    FAIL("child failed, exit " << WEXITSTATUS(st));
  }
  std::string ip, mac;
  std::istringstream(buf) >> ip >> mac;
  REQUIRE(t.OurDnsmasqs().size() == 1);
  const int dnsmasq_before = t.OurDnsmasqs()[0];

  // A real lease, then the crash.
  t.Wire(mac);
  CHECK(t.Dhcp() == ip);
  const std::string table_before = t.ListTable();
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);

  EnterNetNs enter(t.h.path());
  REQUIRE(enter.ok());
  t.OpenStore();
  auto opened = Network::Open(t.NetOptions());
  if (!opened) FAIL(opened.error().ToString());
  auto& net = *opened;
  // The dnsmasq of the killed process is adopted, not doubled.
  REQUIRE(t.OurDnsmasqs().size() == 1);
  CHECK(t.OurDnsmasqs()[0] == dnsmasq_before);
  auto leases = net->Leases();
  REQUIRE(leases);
  REQUIRE(leases->size() == 1);
  CHECK((*leases)[0].ip == ip);
  CHECK((*leases)[0].mac == mac);
  auto a = net->Allocate("default/vm1", "default", "");
  REQUIRE(a);
  CHECK(a->ip == ip);
  CHECK(a->mac == mac);
  REQUIRE(net->Apply(PlaneFor(*a)));
  CHECK(t.ListTable() == table_before);

  // Start-up GC of taps: only our stale tap goes; a live one, a foreign tap and a veth with
  // our prefix stay.
  REQUIRE(net->RemoveStaleTaps({live_tap}));
  auto links = t.h.Run({"ip", "-o", "link", "show"});
  Must(links);
  CHECK(links->stdout_text.find(stale_tap) == std::string::npos);
  CHECK(links->stdout_text.find(live_tap + ":") != std::string::npos);
  CHECK(links->stdout_text.find("othertap0:") != std::string::npos);
  CHECK(links->stdout_text.find("evtveth0@") != std::string::npos);

  // Lease GC: vm1's lease stays while vm1 is an endpoint, goes when it is not.
  auto none = net->RemoveStaleLeases();
  REQUIRE(none);
  CHECK(*none == 0);
  REQUIRE(t.OurDnsmasqs() == std::vector<int>{dnsmasq_before});
  REQUIRE(net->Apply({}));
  auto removed = net->RemoveStaleLeases();
  if (!removed) FAIL(removed.error().ToString());
  CHECK(*removed == 1);
  CHECK(net->Leases()->empty());
  REQUIRE(t.OurDnsmasqs().size() == 1);
  const int dnsmasq_gc = t.OurDnsmasqs()[0];
  CHECK(dnsmasq_gc != dnsmasq_before);
  REQUIRE(net->Apply(PlaneFor(*a)));
  CHECK(t.Dhcp() == ip);
  CHECK(net->Leases()->size() == 1);

  // A dnsmasq that dies is restarted by Supervise, once; the lease survives (the lease file).
  auto first = net->Supervise();
  REQUIRE(first);
  CHECK_FALSE(*first);
  ::kill(dnsmasq_gc, SIGKILL);
  for (int i = 0; i < 100 && !t.OurDnsmasqs().empty(); ++i) std::this_thread::sleep_for(10ms);
  auto restarted = net->Supervise();
  if (!restarted) FAIL(restarted.error().ToString());
  CHECK(*restarted);
  REQUIRE(t.OurDnsmasqs().size() == 1);
  CHECK(t.OurDnsmasqs()[0] != dnsmasq_gc);
  CHECK(net->Leases()->size() == 1);
  // And it serves: V renews its address.
  CHECK(t.Dhcp() == ip);
  REQUIRE(net->StopDhcp());
}

}  // namespace
}  // namespace edgevirt::net
