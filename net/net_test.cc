#include "net/net.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "store/store.h"
#include "tests/support/catch.h"
#include "tests/support/netns.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::net {
namespace {

using edgevirt::testing::EnterNetNs;
using edgevirt::testing::NetNs;
using edgevirt::testing::TempDir;

const std::string kTestdata = std::string(EDGEVIRT_SOURCE_DIR) + "/net/testdata/";

// Compares `text` byte for byte with testdata/<file>; UPDATE_GOLDEN=1 rewrites it.
void CheckGolden(const std::string& file, const std::string& text) {
  const std::string path = kTestdata + file;
  const char* update = std::getenv("UPDATE_GOLDEN");
  if (update != nullptr && std::string(update) == "1") {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    REQUIRE(out.good());
    WARN("rewrote " << path);
    return;
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) FAIL("missing golden file " << path << " (run with UPDATE_GOLDEN=1 to create it)");
  std::stringstream golden;
  golden << in.rdbuf();
  INFO("golden file " << path << " differs; review, then run with UPDATE_GOLDEN=1");
  CHECK(text == golden.str());
}

DataPlane Sample() {
  DataPlane p;
  Endpoint web{"default/web", "10.208.0.2", "02:00:00:00:00:02", ""};
  web.tap = Network::TapName("uid-web", 0);
  web.ports = {{"TCP", 8080}, {"udp", 5353}};
  web.hostname = "web";
  Endpoint db{"default/db", "10.208.0.3", "02:00:00:00:00:03", Network::TapName("uid-db", 0)};
  Endpoint br{"prod/bridged", "10.208.0.4", "02:00:00:00:00:04", Network::TapName("uid-br", 0)};
  br.binding = Binding::kBridge;
  br.ports = {{"TCP", 22}};  // bridge binding: ports do not limit
  p.endpoints = {web, db, br};
  Forward np{"TCP", 30080, "", 0, "10.208.0.2", 8080};
  Forward both{"UDP", 30053, "10.96.0.10", 53, "10.208.0.3", 5353};
  Forward cip{"TCP", 0, "10.96.0.11", 80, "10.208.0.2", 8080};
  p.forwards = {np, both, cip};
  return p;
}

TEST_CASE("RenderRuleset matches the golden file and ignores input order", "[net]") {
  Options o;
  DataPlane p = Sample();
  const std::string script = Network::RenderRuleset(o, p);
  CheckGolden("ruleset.nft", script);
  std::reverse(p.endpoints.begin(), p.endpoints.end());
  std::reverse(p.forwards.begin(), p.forwards.end());
  p.forwards.push_back(p.forwards.front());  // an identical duplicate renders once
  CHECK(Network::RenderRuleset(o, p) == script);
  REQUIRE(Network::Validate(o, p));
  // Only masquerade endpoints with ports are limited.
  CHECK(script.find("10.208.0.2 . tcp . 8080") != std::string::npos);
  CHECK(script.find("10.208.0.4 . tcp . 22") == std::string::npos);
  CHECK(script.find("flush ruleset") == std::string::npos);
}

TEST_CASE("Rendered rulesets pass nft's own check", "[net]") {
  TempDir dir("ev-net-nft");
  NetNs ns("evn-nftc-" + std::to_string(::getpid()));
  REQUIRE(ns.ok());
  Options o;
  for (const auto& plane : {Sample(), DataPlane{}}) {
    auto path = dir.Write("r.nft", Network::RenderRuleset(o, plane));
    auto r = ns.Run({"nft", "-c", "-f", path.string()});
    if (!r) FAIL(r.error().ToString());
  }
}

TEST_CASE("RenderRuleset of an empty data plane still masquerades the subnet", "[net]") {
  Options o;
  o.bridge = "evbr1";
  o.cidr = "172.30.4.0/23";
  const std::string script = Network::RenderRuleset(o, {});
  CheckGolden("empty.nft", script);
  CHECK(script.find("ip saddr 172.30.4.0/23 ip daddr != 172.30.4.0/23 masquerade") !=
        std::string::npos);
  CHECK(script.find("elements") == std::string::npos);
}

TEST_CASE("RenderHostsFile lists mac,ip[,hostname] sorted", "[net]") {
  CHECK(Network::RenderHostsFile(Sample()) ==
        "02:00:00:00:00:02,10.208.0.2,web\n"
        "02:00:00:00:00:03,10.208.0.3\n"
        "02:00:00:00:00:04,10.208.0.4\n");
}

TEST_CASE("Validate refuses bad data planes with the reason", "[net]") {
  Options o;
  auto bad = [&](const DataPlane& p, const std::string& needle) {
    auto s = Network::Validate(o, p);
    REQUIRE_FALSE(s);
    CHECK(s.error().code == Code::kInvalid);
    INFO(s.error().message);
    CHECK(s.error().message.find(needle) != std::string::npos);
  };
  DataPlane p = Sample();
  p.endpoints[0].ip = "10.209.0.2";
  bad(p, "not an assignable address");
  p = Sample();
  p.endpoints[0].ip = "10.208.0.1";  // the gateway
  bad(p, "not an assignable address");
  p = Sample();
  p.endpoints[1].ip = p.endpoints[0].ip;
  bad(p, "two endpoints");
  p = Sample();
  p.endpoints[0].mac = "01:00:00:00:00:01";
  bad(p, "multicast");
  p = Sample();
  p.endpoints[0].tap = "tap; rm -rf /";
  bad(p, "interface name");
  p = Sample();
  p.endpoints[0].hostname = "a b";
  bad(p, "DNS label");
  p = Sample();
  p.endpoints[0].ports[0].protocol = "SCTP";
  bad(p, "TCP or UDP");
  p = Sample();
  p.forwards[0].node_port = 8080;
  bad(p, "outside 30000-32767");
  p = Sample();
  p.forwards[0].target_ip = "10.208.0.999";
  bad(p, "not an IPv4 address");
  p = Sample();
  p.forwards.push_back(p.forwards[0]);
  p.forwards.back().target_port = 9090;
  bad(p, "already forwards elsewhere");
  p = Sample();
  p.forwards[0].node_port = 0;
  bad(p, "neither a node port nor a cluster IP");
}

TEST_CASE("NormalizeMac", "[net]") {
  CHECK(*Network::NormalizeMac("02:AB:cd:00:11:22") == "02:ab:cd:00:11:22");
  CHECK(*Network::NormalizeMac("02-ab-cd-00-11-22") == "02:ab:cd:00:11:22");
  for (const char* bad : {"", "02:ab:cd:00:11", "02:ab:cd:00:11:2g", "03:00:00:00:00:01",
                          "00:00:00:00:00:00", "02:ab:cd:00:11:22:33", "02.ab.cd.00.11.22"}) {
    INFO(bad);
    auto r = Network::NormalizeMac(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Code::kInvalid);
  }
}

TEST_CASE("TapName: 15 characters, fixed prefix, stable, distinct", "[net]") {
  const std::string a = Network::TapName("6a1a24a1-4061-4607-8bf4-a3963d0c5895", 0);
  CHECK(a.size() == 15);
  CHECK(a.rfind(std::string(kTapPrefix), 0) == 0);
  CHECK(a == Network::TapName("6a1a24a1-4061-4607-8bf4-a3963d0c5895", 0));
  std::set<std::string> names;
  for (int u = 0; u < 200; ++u) {
    for (size_t i = 0; i < 5; ++i) {
      std::string n = Network::TapName("uid-" + std::to_string(u), i);
      CHECK(n.size() == 15);
      CHECK(std::all_of(n.begin(), n.end(), [](char c) { return std::isalnum(c); }));
      names.insert(n);
    }
  }
  CHECK(names.size() == 1000);
  CHECK(Network::TapName("x", 1295).substr(13) == "zz");
}

// IPAM needs an opened Network: a private netns holds its bridge and dnsmasq.
struct IpamFixture {
  TempDir dir{"ev-net-ipam"};
  NetNs ns{"evn-ipam-" + std::to_string(::getpid())};
  std::unique_ptr<store::Store> store;

  Options NetOptions(const std::string& cidr = "10.208.0.0/24") {
    Options o;
    o.run_dir = dir.Path("run");
    o.store = store.get();
    o.cidr = cidr;
    return o;
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
  std::unique_ptr<Network> Open(const Options& o) {
    auto n = Network::Open(o);
    if (!n) FAIL("Open: " << n.error().ToString());
    return std::move(*n);
  }
};

TEST_CASE("IPAM: stable addresses across reopen, release, exhaustion, MAC rules", "[net][ipam]") {
  IpamFixture f;
  REQUIRE(f.ns.ok());
  EnterNetNs enter(f.ns.path());
  REQUIRE(enter.ok());
  f.OpenStore();
  Address a1, a2;
  std::string b_mac;
  {
    auto net = f.Open(f.NetOptions());
    auto r1 = net->Allocate("default/a", "default", "");
    REQUIRE(r1);
    a1 = *r1;
    CHECK(a1.ip == "10.208.0.2");
    CHECK(a1.gateway == "10.208.0.1");
    CHECK(a1.prefix_len == 24);
    auto mac = Network::NormalizeMac(a1.mac);
    REQUIRE(mac);
    CHECK(*mac == a1.mac);
    CHECK(a1.mac.substr(0, 3) == "02:");  // locally administered unicast
    auto r2 = net->Allocate("default/a", "second", "02:AA:BB:CC:DD:EE");
    REQUIRE(r2);
    a2 = *r2;
    CHECK(a2.ip == "10.208.0.3");
    CHECK(a2.mac == "02:aa:bb:cc:dd:ee");
    // The same pair again: the same answer, nothing new allocated.
    auto again = net->Allocate("default/a", "default", "");
    REQUIRE(again);
    CHECK(again->ip == a1.ip);
    CHECK(again->mac == a1.mac);
    // A changed MAC request replaces the pair's MAC and keeps its address.
    auto remac = net->Allocate("default/a", "second", "02:aa:bb:cc:dd:ef");
    REQUIRE(remac);
    CHECK(remac->ip == a2.ip);
    CHECK(remac->mac == "02:aa:bb:cc:dd:ef");
    REQUIRE(net->Allocate("default/a", "second", "02:aa:bb:cc:dd:ee"));
    // A MAC held by another pair.
    auto taken = net->Allocate("default/b", "default", "02:aa:bb:cc:dd:ee");
    REQUIRE_FALSE(taken);
    CHECK(taken.error().code == Code::kAlreadyExists);
    auto invalid = net->Allocate("default/b", "default", "ff:ff:ff:ff:ff:ff");
    REQUIRE_FALSE(invalid);
    CHECK(invalid.error().code == Code::kInvalid);
    auto bad_owner = net->Allocate("", "default", "");
    REQUIRE_FALSE(bad_owner);
    CHECK(bad_owner.error().code == Code::kInvalid);
    auto b = net->Allocate("default/b", "default", "");
    REQUIRE(b);
    CHECK(b->ip == "10.208.0.4");
    b_mac = b->mac;
    CHECK(b_mac != a1.mac);
    REQUIRE(net->StopDhcp());
  }
  // Reopen the store and the network: the same addresses come back.
  f.OpenStore();
  {
    auto net = f.Open(f.NetOptions());
    auto all = net->Allocations();
    REQUIRE(all);
    REQUIRE(all->size() == 3);
    CHECK((*all)[0].first == "default/a/default");
    CHECK((*all)[0].second.ip == a1.ip);
    CHECK((*all)[0].second.mac == a1.mac);
    CHECK((*all)[1].first == "default/a/second");
    CHECK((*all)[2].first == "default/b/default");
    auto r1 = net->Allocate("default/a", "default", "");
    REQUIRE(r1);
    CHECK(r1->ip == a1.ip);
    CHECK(r1->mac == a1.mac);
    auto rb = net->Allocate("default/b", "default", "");
    REQUIRE(rb);
    CHECK(rb->mac == b_mac);
    // Release frees both interfaces of a; the lowest free address is reused.
    REQUIRE(net->Release("default/a"));
    REQUIRE(net->Release("default/a"));  // idempotent
    auto c = net->Allocate("default/c", "default", "");
    REQUIRE(c);
    CHECK(c->ip == "10.208.0.2");
    REQUIRE(net->StopDhcp());
  }
  f.OpenStore();
  {
    auto net = f.Open(f.NetOptions());
    auto all = net->Allocations();
    REQUIRE(all);
    REQUIRE(all->size() == 2);
    CHECK((*all)[0].first == "default/b/default");
    CHECK((*all)[1].first == "default/c/default");
    // Start-up GC keeps the owners that exist; "default/nope" has nothing to keep.
    REQUIRE(net->Allocate("default/d", "default", ""));
    auto freed = net->RetainOwners({"default/b", "default/c", "default/nope"});
    REQUIRE(freed);
    CHECK(*freed == 1);
    CHECK(net->Allocations()->size() == 2);
    REQUIRE(net->StopDhcp());
  }
  // A /29 has 5 assignable addresses (.2-.6); b and c keep their MACs and move into it.
  f.OpenStore();
  {
    auto net = f.Open(f.NetOptions("10.208.0.0/29"));
    int ok = 0;
    Result<Address> last = MakeError(Code::kInternal, "none");
    for (int i = 0; i < 6; ++i) {
      last = net->Allocate("ns/vm" + std::to_string(i), "default", "");
      if (last) ++ok;
    }
    CHECK(ok == 3);  // b and c already hold two of the five
    REQUIRE_FALSE(last);
    CHECK(last.error().code == Code::kUnavailable);
    CHECK(last.error().message.find("exhausted") != std::string::npos);
    REQUIRE(net->StopDhcp());
  }
}

TEST_CASE("Open refuses bad options and missing host networks", "[net]") {
  IpamFixture f;
  REQUIRE(f.ns.ok());
  EnterNetNs enter(f.ns.path());
  REQUIRE(enter.ok());
  f.OpenStore();
  auto fails = [&](const Options& o, Code code, const std::string& needle) {
    auto n = Network::Open(o);
    REQUIRE_FALSE(n);
    INFO(n.error().ToString());
    CHECK(n.error().code == code);
    CHECK(n.error().message.find(needle) != std::string::npos);
  };
  Options o = f.NetOptions();
  o.run_dir = "relative/run";
  fails(o, Code::kInvalid, "run_dir");
  o.run_dir = f.dir.Path("run") + "\ndhcp-script=/bin/false";
  fails(o, Code::kInvalid, "control characters");
  o.run_dir = f.dir.Path("x/../run");
  fails(o, Code::kInvalid, "normalised");
  std::filesystem::create_directory(f.dir / "open");
  std::filesystem::permissions(f.dir / "open", std::filesystem::perms::all);
  o.run_dir = f.dir.Path("open");
  fails(o, Code::kInvalid, "writable by it alone");
  o = f.NetOptions("10.208.0.1/24");
  fails(o, Code::kInvalid, "host bits set");
  o = f.NetOptions("10.208.0.0/31");
  fails(o, Code::kInvalid, "8..30");
  o = f.NetOptions();
  o.bridge = "-bad";
  fails(o, Code::kInvalid, "interface name");
  o = f.NetOptions();
  o.host_networks = {{"lan", "nosuchbr0", "", "bridge"}};
  fails(o, Code::kNotFound, "does not exist");
  o.host_networks = {{"lan", "lo", "", "bridge"}};
  fails(o, Code::kInvalid, "not a bridge");
  o.host_networks = {{"lan", "", "lo", "sideways"}};
  fails(o, Code::kInvalid, "macvtap mode");
  o.host_networks = {{"lan", "", "", "bridge"}};
  fails(o, Code::kInvalid, "exactly one");
  // Nothing was created by the refused opens.
  CHECK_FALSE(f.ns.Run({"ip", "link", "show", "dev", "edgevirt0"}));
  CHECK_FALSE(std::filesystem::exists(f.dir.Path("run")));
  o.mtu = 40;
  fails(o, Code::kInvalid, "mtu");
  o.mtu = 1400;
  o.host_networks = {{"lan", "", "lo", "private"}};
  auto n = Network::Open(o);
  REQUIRE(n);
  auto link = f.ns.Run({"ip", "-d", "link", "show", "dev", "edgevirt0"});
  REQUIRE(link);
  CHECK(link->stdout_text.find("bridge") != std::string::npos);
  CHECK(link->stdout_text.find("mtu 1400") != std::string::npos);
  // A link of the bridge's name that is not a bridge is refused, not taken over.
  REQUIRE((*n)->StopDhcp());
  REQUIRE(f.ns.Run({"ip", "link", "add", "evveth0", "type", "veth", "peer", "name", "evveth1"}));
  o.bridge = "evveth0";
  fails(o, Code::kConflict, "not a bridge");
  REQUIRE((*n)->StopDhcp());
}

}  // namespace
}  // namespace edgevirt::net
