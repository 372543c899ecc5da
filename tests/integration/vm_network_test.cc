// Networking end to end through the real edgevirtd, booting the test guest under TCG. The test
// process runs in a network namespace of its own (EnterPrivateNetns, as every test daemon
// does): there it plays the host. It adds a host bridge with a DHCP server of its own (the
// site LAN a second NIC joins), an "outside" namespace joined to the host by a veth pair (a
// client elsewhere on the network reaching a NodePort), and a foreign nft table that nothing
// of edgevirt may change.
//
// It also scrapes /metrics with the guests running and traffic exchanged: KubeVirt's VMI
// metrics from libvirt's real domain statistics, checked by the real promtool.
//
// The guest prints DHCP:<if>:<ip> for each lease it takes, serves TCP echo on 7 and HTTP on 80,
// and runs a root shell on its serial console (tests/fixtures/guest).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/socket.h>

#include <numeric>
#include <regex>
#include <sstream>
#include <thread>

#include "tests/integration/daemon_test_util.h"
#include "tests/integration/vm_test_util.h"
#include "tests/support/net.h"
#include "tests/support/promtool.h"

namespace edgevirt::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

std::string Run(const std::vector<std::string>& argv, const fs::path& dir) {
  auto [code, out] = RunCommand(argv, dir);
  INFO("command: " << argv[0] << " " << (argv.size() > 1 ? argv[1] : "") << " ...");
  REQUIRE(code == 0);
  return out;
}

// A TCP exchange: connects to ip:port, sends `request`, reads until `want` bytes came back or
// the peer closed. nullopt when the connection could not be made within `timeout`.
std::optional<std::string> TcpExchange(const std::string& ip, int port, const std::string& request,
                                       size_t want, std::chrono::milliseconds timeout = 5s) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return std::nullopt;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, ip.c_str(), &a.sin_addr) != 1) return std::nullopt;
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 && errno != EINPROGRESS) {
    return std::nullopt;
  }
  pollfd p{fd.get(), POLLOUT, 0};
  if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return std::nullopt;
  int err = 0;
  socklen_t len = sizeof err;
  ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len);
  if (err != 0) return std::nullopt;
  if (::send(fd.get(), request.data(), request.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(request.size())) {
    return std::nullopt;
  }
  std::string got;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (got.size() < want && std::chrono::steady_clock::now() < deadline) {
    pollfd q{fd.get(), POLLIN, 0};
    if (::poll(&q, 1, 100) != 1) continue;
    char buf[4096];
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  return got;
}

bool Echoes(const std::string& ip, int port) {
  const std::string msg = "edgevirt-echo-" + std::to_string(::getpid()) + "\n";
  auto got = TcpExchange(ip, port, msg, msg.size());
  return got && *got == msg;
}

std::string HttpGet(const std::string& ip, int port) {
  auto got = TcpExchange(ip, port, "GET / HTTP/1.0\r\n\r\n", 1 << 20);
  return got ? *got : std::string();
}

// The site LAN: a host bridge with a DHCP server that is not edgevirt's.
struct HostLan {
  explicit HostLan(const fs::path& dir) : dir(dir) {
    REQUIRE(EnterPrivateNetns() == 0);
    fs::create_directories(dir);
    Run({"/usr/sbin/ip", "link", "add", "br-lan", "type", "bridge"}, dir);
    Run({"/usr/sbin/ip", "addr", "add", "10.99.0.1/24", "dev", "br-lan"}, dir);
    Run({"/usr/sbin/ip", "link", "set", "br-lan", "up"}, dir);
    dnsmasq = std::make_unique<Child>(
        std::vector<std::string>{"/usr/sbin/dnsmasq", "--keep-in-foreground",
                                 "--conf-file=/dev/null", "--port=0", "--bind-interfaces",
                                 "--interface=br-lan", "--except-interface=lo",
                                 "--dhcp-range=10.99.0.50,10.99.0.99,1h", "--dhcp-option=3",
                                 "--dhcp-leasefile=" + (dir / "lan.leases").string(),
                                 "--pid-file=" + (dir / "lan.pid").string()},
        std::map<std::string, std::optional<std::string>>{}, dir, "lan-dnsmasq");
  }
  fs::path dir;
  std::unique_ptr<Child> dnsmasq;
};

// A client outside the host: a namespace of its own behind a veth pair, 10.98.0.2 there and
// 10.98.0.1 on the host, each the other's default route.
struct Outside {
  explicit Outside(const fs::path& dir) : dir(dir), name("ev-out-" + std::to_string(::getpid())) {
    REQUIRE(EnterPrivateNetns() == 0);
    Run({"/usr/sbin/ip", "netns", "add", name}, dir);
    Run({"/usr/sbin/ip", "link", "add", "ev-out0", "type", "veth", "peer", "name", "ev-out1",
         "netns", name},
        dir);
    Run({"/usr/sbin/ip", "addr", "add", "10.98.0.1/24", "dev", "ev-out0"}, dir);
    Run({"/usr/sbin/ip", "link", "set", "ev-out0", "up"}, dir);
    Run({"/usr/sbin/ip", "-n", name, "addr", "add", "10.98.0.2/24", "dev", "ev-out1"}, dir);
    Run({"/usr/sbin/ip", "-n", name, "link", "set", "ev-out1", "up"}, dir);
    Run({"/usr/sbin/ip", "-n", name, "link", "set", "lo", "up"}, dir);
    Run({"/usr/sbin/ip", "-n", name, "route", "add", "default", "via", "10.98.0.1"}, dir);
    // The host's uplink: like any host, it has a default route (ClusterIPs are routed before
    // the output hook rewrites them).
    Run({"/usr/sbin/ip", "route", "add", "default", "via", "10.98.0.2"}, dir);
  }
  ~Outside() {
    dhcp.reset();
    RunCommand({"/usr/sbin/ip", "netns", "del", name}, dir);
  }

  // A second link to the outside, ev-wan0 on the host (no address: a host NIC a macvtap
  // network uses) and ev-wan1 there (10.97.0.2/24) with a DHCP server (10.97.0.50-99, no
  // router): what a VM NIC on a macvtap over ev-wan0 finds.
  void StartWan() {
    Run({"/usr/sbin/ip", "link", "add", "ev-wan0", "type", "veth", "peer", "name", "ev-wan1",
         "netns", name},
        dir);
    Run({"/usr/sbin/ip", "link", "set", "ev-wan0", "up"}, dir);
    Run({"/usr/sbin/ip", "-n", name, "addr", "add", "10.97.0.2/24", "dev", "ev-wan1"}, dir);
    Run({"/usr/sbin/ip", "-n", name, "link", "set", "ev-wan1", "up"}, dir);
    dhcp = std::make_unique<Child>(
        std::vector<std::string>{
            "/usr/sbin/ip", "netns", "exec", name, "/usr/sbin/dnsmasq", "--keep-in-foreground",
            "--conf-file=/dev/null", "--port=0", "--bind-interfaces", "--interface=ev-wan1",
            "--except-interface=lo", "--dhcp-range=10.97.0.50,10.97.0.99,1h", "--dhcp-option=3",
            "--dhcp-leasefile=" + (dir / "out.leases").string(),
            "--pid-file=" + (dir / "out.pid").string()},
        std::map<std::string, std::optional<std::string>>{}, dir, "out-dnsmasq");
  }

  // Runs `f` on a thread inside the outside namespace.
  template <typename F>
  auto From(F f) -> decltype(f()) {
    decltype(f()) result{};
    std::thread t([&] {
      UniqueFd ns(::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC));
      if (!ns || ::setns(ns.get(), CLONE_NEWNET) != 0) return;
      result = f();
    });
    t.join();
    return result;
  }

  fs::path dir;
  std::string name;
  std::unique_ptr<Child> dhcp;
};

std::string Nft(const std::vector<std::string>& args, const fs::path& dir) {
  std::vector<std::string> argv = {"/usr/sbin/nft"};
  argv.insert(argv.end(), args.begin(), args.end());
  return Run(argv, dir);
}

// The guest's address on `iface` from its serial log ("DHCP:eth0:10.208.0.2").
std::string GuestIp(VmEnv& env, const std::string& uid, const std::string& iface) {
  std::smatch m;
  std::string log = env.SerialLog(uid);
  std::regex re("DHCP:" + iface + ":([0-9.]+)");
  return std::regex_search(log, m, re) ? m[1].str() : std::string();
}

// Names of the links in this namespace whose name starts with `prefix`.
std::vector<std::string> Links(const fs::path& dir, const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in(Run({"/usr/sbin/ip", "-o", "link", "show"}, dir));
  std::string line;
  while (std::getline(in, line)) {
    auto a = line.find(": ");
    if (a == std::string::npos) continue;
    auto b = line.find_first_of(":@", a + 2);
    std::string n = line.substr(a + 2, b - a - 2);
    if (n.rfind(prefix, 0) == 0) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

// dnsmasq processes in this network namespace whose command line mentions `needle`.
int DnsmasqCount(const std::string& needle) {
  const std::string my_ns = fs::read_symlink("/proc/self/ns/net").string();
  int n = 0;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string pid = e.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    std::error_code ec;
    if (fs::read_symlink(e.path() / "ns" / "net", ec).string() != my_ns) continue;
    std::string cmd = ReadFile(e.path() / "cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find("dnsmasq") != std::string::npos && cmd.find(needle) != std::string::npos) ++n;
  }
  return n;
}

Json ServiceFor(const std::string& name, const std::string& app, int port, int target,
                const std::string& type) {
  // What `virtctl expose vm <app> --name <name> --port <port> --target-port <target>
  // --type <type>` POSTs (selector: the VM template's labels).
  return {{"apiVersion", "v1"},
          {"kind", "Service"},
          {"metadata", {{"name", name}, {"namespace", "default"}}},
          {"spec",
           {{"ports", Json::array({{{"port", port}, {"protocol", "TCP"}, {"targetPort", target}}})},
            {"selector", {{"app", app}}},
            {"type", type}}}};
}

// The samples of `family` in a Prometheus text exposition whose label set contains every one of
// `labels` (each written as key="value"), with their values.
std::vector<double> Samples(const std::string& text, const std::string& family,
                            const std::vector<std::string>& labels) {
  std::vector<double> out;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind(family + "{", 0) != 0) continue;
    const size_t close = line.rfind("} ");
    if (close == std::string::npos) continue;
    const std::string set = line.substr(family.size(), close - family.size() + 1);
    bool all = true;
    for (const auto& l : labels) all = all && set.find(l) != std::string::npos;
    if (all) out.push_back(std::strtod(line.c_str() + close + 2, nullptr));
  }
  return out;
}

TEST_CASE("VM networking: DHCP, NAT, bindings, a host-bridge NIC, Services, kill -9, deletion") {
  REQUIRE(EnterPrivateNetns() == 0);
  TempDir work("ev-net");
  // A table of someone else's: byte-identical at the end.
  Nft({"add", "table", "inet", "sitefw"}, work.path());
  Nft({"add", "chain", "inet", "sitefw", "input",
       "{ type filter hook input priority 10; policy accept; }"},
      work.path());
  Nft({"add", "rule", "inet", "sitefw", "input", "tcp", "dport", "9999", "counter"}, work.path());
  const std::string foreign = Nft({"list", "table", "inet", "sitefw"}, work.path());

  HostLan lan(work / "lan");
  Outside outside(work.path());
  outside.StartWan();
  VmEnv env("ev-net",
            "network:\n  hostNetworks:\n  - name: lan\n    bridge: br-lan\n"
            "  - name: wan\n    macvtap: ev-wan0\n    macvtapMode: bridge\n");

  // a: masquerade on the pod network, inbound limited to port 7, plus a NIC on the site LAN.
  Json a = env.VmManifest("a", "Always");
  a["spec"]["template"]["spec"]["domain"]["devices"]["interfaces"] = Json::array(
      {{{"name", "default"}, {"masquerade", Json::object()}, {"ports", {{{"port", 7}}}}},
       {{"name", "lan"}, {"bridge", Json::object()}},
       {{"name", "wan"}, {"bridge", Json::object()}}});
  a["spec"]["template"]["spec"]["networks"] =
      Json::array({{{"name", "default"}, {"pod", Json::object()}},
                   {{"name", "lan"}, {"multus", {{"networkName", "lan"}}}},
                   {{"name", "wan"}, {"multus", {{"networkName", "wan"}}}}});
  // b: KubeVirt's default interface (bridge binding on the pod network, nothing declared).
  Json b = env.VmManifest("b", "Always");
  env.Create(a);
  env.Create(b);
  REQUIRE(env.WaitPhase("a", "Running"));
  REQUIRE(env.WaitPhase("b", "Running"));
  const std::string uid_a = env.Vmi("a")["metadata"]["uid"];
  const std::string uid_b = env.Vmi("b")["metadata"]["uid"];
  REQUIRE(env.WaitSerial(uid_a, "DHCP:eth0:10.208.0.", 1, 300s));
  REQUIRE(env.WaitSerial(uid_a, "DHCP:eth1:10.99.0.", 1, 120s));
  REQUIRE(env.WaitSerial(uid_a, "DHCP:eth2:10.97.0.", 1, 120s));
  REQUIRE(env.WaitSerial(uid_b, "DHCP:eth0:10.208.0.", 1, 300s));
  const std::string ip_a = GuestIp(env, uid_a, "eth0");
  const std::string ip_b = GuestIp(env, uid_b, "eth0");
  const std::string lan_a = GuestIp(env, uid_a, "eth1");
  const std::string wan_a = GuestIp(env, uid_a, "eth2");
  INFO("a " << ip_a << " (lan " << lan_a << ", wan " << wan_a << "), b " << ip_b);
  // The macvtap NIC: reached from the outside directly (a macvtap never talks to its host).
  CHECK(outside.From([&] { return Echoes(wan_a, 7); }));
  CHECK(Links(work.path(), "evm").size() == 1);
  CHECK(ip_a != ip_b);

  {
    // status.interfaces: the pod NIC's address from the DHCP lease; the agent adds the rest.
    REQUIRE(WaitUntil(
        [&] {
          Json ifs = env.Vmi("a")["status"].value("interfaces", Json::array());
          bool pod = false, site = false;
          for (const auto& i : ifs) {
            if (i.value("name", "") == "default" && i.value("ipAddress", "") == ip_a) pod = true;
            if (i.value("name", "") == "lan" && i.value("ipAddress", "") == lan_a) site = true;
          }
          return pod && site;
        },
        90s));
    Json ifs = env.Vmi("a")["status"]["interfaces"];
    for (const auto& i : ifs) {
      INFO(i.dump());
      CHECK(i.value("mac", "").size() == 17);
      if (i["name"] == "default") CHECK(i.value("interfaceName", "") == "eth0");
    }
  }

  // The guest reaches its gateway (the bridge) and the other VM.
  // Markers as printed, not as echoed: the quotes split them in the typed line.
  REQUIRE(env.SerialType(uid_a, "ping -c 2 -W 5 10.208.0.1 >/dev/null && echo GW-PING\"\"-OK"));
  CHECK(env.WaitSerial(uid_a, "GW-PING-OK", 1, 60s));
  REQUIRE(env.SerialType(uid_a, "wget -q -O - http://" + ip_b + "/ && echo VM2VM\"\"-OK"));
  CHECK(env.WaitSerial(uid_a, "VM2VM-OK", 1, 60s));

  // The host reaches the guests' services; masquerade with ports admits only those.
  CHECK(Echoes(ip_b, 7));
  CHECK(HttpGet(ip_b, 80).find("edge-guest") != std::string::npos);
  CHECK(Echoes(ip_a, 7));
  CHECK(HttpGet(ip_a, 80).empty());

  {
    // /metrics with both guests running and traffic exchanged: KubeVirt's names and labels,
    // figures from libvirt's domain statistics, and an exposition promtool accepts.
    auto scraped = Http(env.daemon.url(), "GET", "/metrics", "", "", 30s, {"Accept: text/plain"});
    REQUIRE(scraped.status == 200);
    CHECK(scraped.headers["content-type"].rfind("text/plain; version=0.0.4", 0) == 0);
    const std::string& text = scraped.body;
    INFO(text);
    const std::string problems = PromtoolProblems(text);
    INFO(problems);
    CHECK(problems.empty());
    const std::string vm_a = "namespace=\"default\",name=\"a\"";
    CHECK(Samples(text, "kubevirt_vmi_phase_count", {"phase=\"running\""}) ==
          std::vector<double>{2});
    double vcpu_seconds = 0;
    for (double v : Samples(text, "kubevirt_vmi_vcpu_seconds", {vm_a, "id=\"0\""})) {
      vcpu_seconds += v;
    }
    CHECK(vcpu_seconds > 0);
    const auto rss = Samples(text, "kubevirt_vmi_memory_resident_bytes", {vm_a});
    REQUIRE(rss.size() == 1);
    CHECK(rss[0] > 1e6);  // QEMU's resident set: megabytes at least
    // The interface label is the KubeVirt interface name (the NIC's user alias).
    const auto rx =
        Samples(text, "kubevirt_vmi_network_receive_bytes_total", {vm_a, "interface=\"default\""});
    REQUIRE(rx.size() == 1);
    CHECK(rx[0] > 0);
    CHECK(Samples(text, "kubevirt_vmi_network_receive_bytes_total", {vm_a}).size() == 3);
    const auto rd = Samples(text, "kubevirt_vmi_storage_read_traffic_bytes_total", {vm_a});
    CHECK(!rd.empty());
    CHECK(std::accumulate(rd.begin(), rd.end(), 0.0) > 0);  // the guest read its disk to boot
    // The scrape itself and every request before it are in the latency histogram.
    CHECK(!Samples(text, "edgevirt_api_request_duration_seconds_count",
                   {"verb=\"create\"", "resource=\"virtualmachines\"", "code=\"201\""})
               .empty());
  }

  // Services: a NodePort reached from outside, its ClusterIP from the host.
  auto created = Http(env.daemon.url(), "POST", "/api/v1/namespaces/default/services",
                      ServiceFor("a-echo", "a", 7007, 7, "NodePort").dump());
  INFO(created.body);
  REQUIRE(created.status == 201);
  Json svc = ParseJson(created.body);
  const int node_port = svc["spec"]["ports"][0]["nodePort"];
  const std::string cluster_ip = svc["spec"]["clusterIP"];
  CHECK((node_port >= 30000 && node_port <= 32767));
  CHECK(
      WaitUntil([&] { return outside.From([&] { return Echoes("10.98.0.1", node_port); }); }, 30s));
  CHECK(WaitUntil([&] { return Echoes(cluster_ip, 7007); }, 30s));
  auto get = env.kubectl.Run({"get", "svc", "a-echo"});
  CHECK(get.out.find(std::to_string(7007) + ":" + std::to_string(node_port) + "/TCP") !=
        std::string::npos);

  // kill -9 and restart: the same rules, taps, leases and one dnsmasq; the guests keep their
  // addresses and stay reachable.
  auto ruleset = [&] { return Nft({"list", "ruleset"}, work.path()); };
  REQUIRE(WaitUntil([&] { return DnsmasqCount(env.daemon.run_dir().string()) == 1; }, 10s));
  const std::string rules_before = ruleset();
  const auto taps_before = Links(work.path(), "evt");
  const fs::path leases = env.daemon.run_dir() / "net" / "dnsmasq.leases";
  const std::string leases_before = ReadFile(leases);
  CHECK(leases_before.find(ip_a) != std::string::npos);
  CHECK(taps_before.size() == 3);
  env.daemon.Kill();
  env.daemon.Start();
  REQUIRE(WaitUntil([&] { return env.Vmi("a")["status"].value("phase", "") == "Running"; }, 60s));
  CHECK(WaitUntil([&] { return ruleset() == rules_before; }, 30s));
  CHECK(Links(work.path(), "evt") == taps_before);
  CHECK(Links(work.path(), "evm").size() == 1);
  CHECK(ReadFile(leases) == leases_before);
  CHECK(DnsmasqCount(env.daemon.run_dir().string()) == 1);
  CHECK(Echoes(ip_a, 7));
  CHECK(outside.From([&] { return Echoes("10.98.0.1", node_port); }));

  // A restarted VM keeps its address.
  auto restart = env.Virtctl("PUT", "virtualmachines", "a", "restart", "{}");
  REQUIRE(restart.status == 202);
  REQUIRE(WaitUntil(
      [&] {
        Json vmi = env.Vmi("a");
        return !vmi.is_null() && vmi["metadata"]["uid"] != uid_a &&
               vmi["status"].value("phase", "") == "Running";
      },
      180s));
  const std::string uid_a2 = env.Vmi("a")["metadata"]["uid"];
  REQUIRE(env.WaitSerial(uid_a2, "DHCP:eth0:", 1, 300s));
  CHECK(GuestIp(env, uid_a2, "eth0") == ip_a);
  CHECK(WaitUntil([&] { return Echoes(ip_a, 7); }, 30s));

  // Deleting the VMs frees their addresses, taps and rules; the foreign table never changed.
  for (const std::string name : {"a", "b"}) {
    auto del = Http(env.daemon.url(), "DELETE",
                    "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/" + name);
    REQUIRE((del.status == 200 || del.status == 202));
  }
  REQUIRE(env.WaitUntilGone("a"));
  REQUIRE(env.WaitUntilGone("b"));
  CHECK(WaitUntil([&] { return Links(work.path(), "evt").empty(); }, 30s));
  CHECK(WaitUntil([&] { return Links(work.path(), "evm").empty(); }, 30s));
  CHECK(WaitUntil(
      [&] {
        std::string r = ruleset();
        return r.find(ip_a) == std::string::npos && r.find(ip_b) == std::string::npos;
      },
      30s));
  CHECK(Nft({"list", "table", "inet", "sitefw"}, work.path()) == foreign);
}

}  // namespace
}  // namespace edgevirt::testing
