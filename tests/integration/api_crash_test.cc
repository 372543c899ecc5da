// Crash consistency of the API under load: 100 concurrent creates of distinct VMs (a quarter
// through real `kubectl apply`, the rest as direct POSTs) while edgevirtd is SIGKILLed at a
// random moment; then the daemon restarts on the same state directory and the test checks:
//   - every acknowledged create (kubectl exit 0, HTTP 201) is there, with the uid and
//     resourceVersion of its acknowledgement and the content that was sent;
//   - every object present is complete and is one that was sent (no partial or foreign
//     objects; unacknowledged ones may or may not be there);
//   - resourceVersions are unique, the list's RV is >= every item's RV, a watch from the list
//     RV works (sees the next write, and nothing older), and new writes get larger RVs.
// The kill comes after a random number (1..70) of POSTs were acknowledged, plus a random
// 0-30 ms, so that it lands while both kubectl and POSTs are in flight. Five rounds on one
// state directory; API_CRASH_SEED reproduces the choices (not the timing) of a run.
#include <mutex>
#include <random>
#include <set>
#include <thread>

#include "tests/integration/kubectl_test_util.h"

namespace edgevirt::testing {
namespace {

// The API alone (vms.enabled false): these tests check exact event sequences and
// resourceVersions, which the controller's own writes (finalizers, status) would add to.
constexpr char kApiOnly[] = "vms:\n  enabled: false\n";

constexpr int kRounds = 5;
constexpr int kPerRound = 100;
constexpr int kViaKubectl = 25;  // the first 25 of each round

const std::string kVms = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

// A distinct VM: its own name, labels, payload annotation and memory size.
Json MakeVm(const std::string& name, int round, int index, const std::string& payload) {
  Json vm = {{"apiVersion", "kubevirt.io/v1"},
             {"kind", "VirtualMachine"},
             {"metadata",
              {{"name", name},
               {"namespace", "default"},
               {"labels", {{"suite", "crash"}, {"round", std::to_string(round)}}},
               {"annotations", {{"edgevirt.test/payload", payload}}}}},
             {"spec",
              {{"runStrategy", "Halted"},
               {"template",
                {{"metadata", {{"labels", {{"kubevirt.io/domain", name}}}}},
                 {"spec",
                  {{"domain",
                    {{"resources", {{"requests", {{"memory", std::to_string(64 + index) + "Mi"}}}}},
                     {"devices",
                      {{"disks",
                        {{{"name", "containerdisk"}, {"disk", {{"bus", "virtio"}}}},
                         {{"name", "cloudinitdisk"}, {"disk", {{"bus", "virtio"}}}}}},
                       {"interfaces", {{{"name", "default"}, {"masquerade", Json::object()}}}}}}}},
                   {"networks", {{{"name", "default"}, {"pod", Json::object()}}}},
                   {"volumes",
                    {{{"name", "containerdisk"},
                      {"containerDisk", {{"image", "quay.io/containerdisks/fedora:39"}}}},
                     {{"name", "cloudinitdisk"},
                      {"cloudInitNoCloud",
                       {{"userData", "#cloud-config\nhostname: " + name + "\n"}}}}}}}}}}}}};
  return vm;
}

struct Submitted {
  Json object;
  bool via_kubectl = false;
  bool acked = false;
  std::string ack_uid;
  std::string ack_rv;
  std::string outcome;  // for messages
};

std::string HexPayload(std::mt19937_64& rng) {
  static const char kHex[] = "0123456789abcdef";
  std::string s;
  for (int i = 0; i < 48; ++i) s += kHex[rng() % 16];
  return s;
}

// The checks after a restart; returns the list RV.
uint64_t Verify(EdgevirtDaemon& daemon, Kubectl& k, const std::map<std::string, Submitted>& sent,
                int round) {
  // Every acknowledged create is there, exactly as acknowledged.
  int acked = 0;
  for (const auto& [name, s] : sent) {
    if (!s.acked) continue;
    ++acked;
    auto r = Http(daemon.url(), "GET", kVms + "/" + name);
    INFO("acknowledged " << name << " (" << s.outcome << "): GET " << r.status << " " << r.error
                         << " " << r.body.substr(0, 500));
    REQUIRE(r.ok);
    REQUIRE(r.status == 200);
    Json got = ParseJson(r.body);
    CHECK(got["metadata"]["uid"] == s.ack_uid);
    CHECK(got["metadata"]["resourceVersion"] == s.ack_rv);
    CHECK(IsSubset(s.object["spec"], got["spec"]));
    CHECK(IsSubset(s.object["metadata"]["labels"], got["metadata"]["labels"]));
    CHECK(got["metadata"]["annotations"]["edgevirt.test/payload"] ==
          s.object["metadata"]["annotations"]["edgevirt.test/payload"]);
  }

  // The list: complete objects that were sent, unique RVs and uids, list RV >= item RVs.
  auto list = Http(daemon.url(), "GET", kVms + "?labelSelector=suite%3Dcrash");
  INFO("LIST " << list.status << " " << list.error << " " << list.body.substr(0, 500));
  REQUIRE(list.ok);
  REQUIRE(list.status == 200);
  Json l = ParseJson(list.body);
  const uint64_t list_rv = Rv(l);
  REQUIRE(list_rv > 0);
  std::set<uint64_t> rvs;
  std::set<std::string> uids;
  int present_unacked = 0;
  for (const auto& item : l["items"]) {
    const std::string name = item["metadata"].value("name", "");
    INFO("listed " << item.dump().substr(0, 800));
    auto it = sent.find(name);
    REQUIRE(it != sent.end());
    const uint64_t rv = Rv(item);
    CHECK(rv > 0);
    CHECK(rv <= list_rv);
    CHECK(rvs.insert(rv).second);
    CHECK(uids.insert(item["metadata"].value("uid", "")).second);
    CHECK(item["metadata"]["generation"] == 1);
    CHECK(item["metadata"].contains("creationTimestamp"));
    CHECK(IsSubset(it->second.object["spec"], item["spec"]));
    CHECK(IsSubset(it->second.object["metadata"]["annotations"], item["metadata"]["annotations"]));
    if (!it->second.acked) ++present_unacked;
  }
  size_t acked_total = 0;
  for (const auto& [name, s] : sent) acked_total += s.acked;
  CHECK(l["items"].size() >= acked_total);
  WARN("round " << round << ": " << acked << " acknowledged so far, " << l["items"].size()
                << " present (" << present_unacked << " committed without acknowledgement)");

  // The same list through kubectl.
  auto kl = k.Run({"get", "vm", "-l", "suite=crash", "-o", "json"}, std::chrono::seconds(60));
  INFO(Describe(kl));
  REQUIRE(kl.code == 0);
  CHECK(ParseJson(kl.out)["items"].size() == l["items"].size());

  // A watch from the list RV: the next write is its first event, with a larger RV.
  WatchStream watch(daemon.url(), kVms + "?watch=true&resourceVersion=" + std::to_string(list_rv) +
                                      "&labelSelector=suite%3Dcrash");
  INFO("watch: " << watch.error());
  REQUIRE(watch.started());
  CHECK(watch.status() == 200);
  const std::string probe = "probe-" + std::to_string(round);
  Json probe_vm = MakeVm(probe, round, 0, "probe");
  auto created = Http(daemon.url(), "POST", kVms, probe_vm.dump());
  INFO("probe create " << created.status << " " << created.body.substr(0, 500));
  REQUIRE(created.status == 201);
  const uint64_t probe_rv = Rv(ParseJson(created.body));
  CHECK(probe_rv > list_rv);
  auto ev = watch.Next(std::chrono::seconds(10));
  INFO("watch error: " << watch.error());
  REQUIRE(ev.has_value());
  INFO("list RV " << list_rv << ", probe RV " << probe_rv
                  << ", first event: " << ev->dump().substr(0, 3000));
  CHECK((*ev)["type"] == "ADDED");
  CHECK((*ev)["object"]["metadata"]["name"] == probe);
  CHECK(Rv((*ev)["object"]) == probe_rv);
  // Drop the probe so later rounds' lists hold only submitted objects.
  auto del = Http(daemon.url(), "DELETE", kVms + "/" + probe);
  CHECK(del.status == 200);
  auto deleted = watch.Next(std::chrono::seconds(10));
  REQUIRE(deleted.has_value());
  CHECK((*deleted)["type"] == "DELETED");
  CHECK(Rv((*deleted)["object"]) > probe_rv);
  return list_rv;
}

TEST_CASE("SIGKILL during 100 concurrent creates loses nothing acknowledged") {
  uint64_t seed = std::random_device{}();
  if (const char* s = std::getenv("API_CRASH_SEED")) seed = std::stoull(s);
  INFO("API_CRASH_SEED=" << seed);
  std::mt19937_64 rng(seed);

  TempDir tmp("ev-api-crash");
  EdgevirtDaemon daemon(tmp / "daemon", "", kApiOnly);
  Kubectl k(tmp / "kubectl");
  daemon.Start();
  k.SetServer(daemon.url());
  // Warm kubectl's discovery and OpenAPI caches (one real apply) so the timed rounds spend
  // their time in requests that write.
  MustRun(k, {"apply", "-f", Testdata("vm-web.yaml").string()});

  std::map<std::string, Submitted> sent;
  uint64_t last_list_rv = 0;
  int kills_mid_load = 0;

  for (int round = 0; round < kRounds; ++round) {
    INFO("round " << round);
    std::vector<std::string> names;
    for (int i = 0; i < kPerRound; ++i) {
      std::string name = "crash-" + std::to_string(round) + "-" + std::to_string(i);
      Submitted s;
      s.object = MakeVm(name, round, i, HexPayload(rng));
      s.via_kubectl = i < kViaKubectl;
      sent[name] = s;
      names.push_back(name);
      if (s.via_kubectl) WriteFile(tmp / (name + ".json"), s.object.dump(2));
    }

    // Launch: kubectl processes first (they are slower to start), then the POST threads, each
    // after a random delay so that the requests spread over the kill window.
    const auto t0 = Clock::now();
    std::vector<std::pair<std::string, std::unique_ptr<Child>>> kubectls;
    for (int i = 0; i < kViaKubectl; ++i) {
      kubectls.emplace_back(
          names[i], k.Start({"apply", "-o", "json", "-f", (tmp / (names[i] + ".json")).string()}));
    }
    std::mutex mu;
    std::atomic<int> posts_acked{0};
    std::vector<std::thread> posters;
    const std::string url = daemon.url();
    for (int i = kViaKubectl; i < kPerRound; ++i) {
      const auto delay = std::chrono::milliseconds(rng() % 1500);
      const std::string body = sent[names[i]].object.dump();
      posters.emplace_back([&, delay, body, name = names[i]] {
        std::this_thread::sleep_for(delay);
        HttpResult r =
            Http(url, "POST", kVms + "?fieldManager=crash-test", body, "application/json", 20s);
        std::lock_guard<std::mutex> lock(mu);
        Submitted& s = sent[name];
        s.outcome = r.ok ? "HTTP " + std::to_string(r.status) : "no answer: " + r.error;
        if (r.ok && r.status == 201) {
          Json j = Json::parse(r.body, nullptr, false);
          if (!j.is_discarded()) {
            s.acked = true;
            s.ack_uid = j["metadata"].value("uid", "");
            s.ack_rv = j["metadata"].value("resourceVersion", "");
            ++posts_acked;
          }
        }
      });
    }

    // The kill: at a random moment while the load runs.
    const int kill_after = 1 + static_cast<int>(rng() % 70);
    const auto extra = std::chrono::milliseconds(rng() % 31);
    WaitUntil([&] { return posts_acked.load() >= kill_after; }, 10s);
    std::this_thread::sleep_for(extra);
    daemon.Kill();
    const auto killed = Clock::now();

    for (auto& t : posters) t.join();
    int kubectl_failed = 0;
    for (auto& [name, child] : kubectls) {
      auto code = child->Wait(60s);
      REQUIRE(code.has_value());
      Submitted& s = sent[name];
      const std::string out = child->Stdout();
      s.outcome = "kubectl exit " + std::to_string(*code) + ": " + child->Stderr().substr(0, 300);
      if (*code == 0) {
        Json j = Json::parse(out, nullptr, false);
        INFO("kubectl apply " << name << " exit 0 but stdout is not the object: " << out);
        REQUIRE_FALSE(j.is_discarded());
        s.acked = true;
        s.ack_uid = j["metadata"].value("uid", "");
        s.ack_rv = j["metadata"].value("resourceVersion", "");
      } else {
        ++kubectl_failed;
      }
    }
    int acked_now = 0, post_acks = 0;
    for (const auto& n : names) {
      acked_now += sent[n].acked;
      post_acks += sent[n].acked && !sent[n].via_kubectl;
    }
    if (acked_now < kPerRound) ++kills_mid_load;
    WARN("round " << round << ": killed "
                  << std::chrono::duration_cast<std::chrono::milliseconds>(killed - t0).count()
                  << " ms after the start; " << acked_now << "/" << kPerRound << " acknowledged ("
                  << post_acks << " POSTs, " << acked_now - post_acks << " kubectl applies; "
                  << kubectl_failed << " kubectl failed)");

    // Restart on the same state directory and check.
    daemon.Start();
    k.SetServer(daemon.url());
    const uint64_t list_rv = Verify(daemon, k, sent, round);
    CHECK(list_rv >= last_list_rv);
    last_list_rv = list_rv;
  }
  // The random kill times are meant to land while requests are in flight.
  CHECK(kills_mid_load >= 1);

  // A clean stop at the end; the state opens again.
  CHECK(daemon.Stop() == 0);
  daemon.Start();
  k.SetServer(daemon.url());
  auto r = Http(daemon.url(), "GET", kVms + "?labelSelector=suite%3Dcrash");
  REQUIRE(r.ok);
  CHECK(r.status == 200);
}

}  // namespace
}  // namespace edgevirt::testing
