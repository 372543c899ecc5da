// Watch semantics on the wire (what kubectl's reflector, `get -w`, `delete --wait` and
// `wait` rely on), against the real edgevirtd: events after a resourceVersion with their real
// types, label-selector transitions (an object entering the selector is ADDED, one leaving it
// is DELETED, also for changes between the RV and the start of the watch), 410 Expired for an
// RV older than the event log keeps, bookmarks, timeoutSeconds.
#include "tests/integration/kubectl_test_util.h"

namespace edgevirt::testing {
namespace {

// The API alone (vms.enabled false): these tests check exact event sequences and
// resourceVersions, which the controller's own writes (finalizers, status) would add to.
constexpr char kApiOnly[] = "vms:\n  enabled: false\n";

const std::string kVms = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";

Json Vm(const std::string& name, const std::string& suite) {
  return {{"apiVersion", "kubevirt.io/v1"},
          {"kind", "VirtualMachine"},
          {"metadata", {{"name", name}, {"labels", {{"suite", suite}}}}},
          {"spec",
           {{"runStrategy", "Halted"},
            {"template",
             {{"spec",
               {{"domain",
                 {{"resources", {{"requests", {{"memory", "64Mi"}}}}},
                  {"devices", {{"disks", {{{"name", "cd"}, {"disk", {{"bus", "virtio"}}}}}}}}}},
                {"volumes",
                 {{{"name", "cd"},
                   {"containerDisk",
                    {{"image", "quay.io/kubevirt/cirros-container-disk-demo:v1.0.0"}}}}}}}}}}}}};
}

uint64_t Create(const std::string& url, const std::string& name, const std::string& suite) {
  auto r = Http(url, "POST", kVms, Vm(name, suite).dump());
  INFO("POST " << name << ": " << r.status << " " << r.error << " " << r.body.substr(0, 500));
  REQUIRE(r.status == 201);
  return Rv(ParseJson(r.body));
}

uint64_t Relabel(const std::string& url, const std::string& name, const std::string& suite) {
  auto r = Http(url, "PATCH", kVms + "/" + name,
                Json({{"metadata", {{"labels", {{"suite", suite}}}}}}).dump(),
                "application/merge-patch+json");
  INFO("PATCH " << name << ": " << r.status << " " << r.body.substr(0, 500));
  REQUIRE(r.status == 200);
  return Rv(ParseJson(r.body));
}

uint64_t ListRv(const std::string& url, const std::string& query) {
  auto r = Http(url, "GET", kVms + query);
  REQUIRE(r.status == 200);
  return Rv(ParseJson(r.body));
}

// The events that arrive within `quiet` of each other, at most `max`.
// Events until `max` or until none came for `quiet`; the first one may take up to 10 s (a loaded
// CI machine), so a slow start is not mistaken for an empty stream.
std::vector<Json> Drain(WatchStream& w, size_t max, std::chrono::milliseconds quiet = 1500ms) {
  std::vector<Json> out;
  while (out.size() < max) {
    auto ev = w.Next(out.empty() ? std::max<std::chrono::milliseconds>(quiet, 10s) : quiet);
    if (!ev) break;
    out.push_back(*ev);
  }
  return out;
}

std::string Summary(const std::vector<Json>& events) {
  std::string s;
  for (const auto& e : events) {
    s += e.value("type", "?") + " " + e["object"]["metadata"].value("name", "") + "@" +
         e["object"]["metadata"].value("resourceVersion", "") + "; ";
  }
  return s;
}

TEST_CASE("watch from a resourceVersion: every later change, with its own type and RV") {
  TempDir tmp("ev-api-watch");
  EdgevirtDaemon d(tmp / "daemon", "", kApiOnly);
  d.Start();
  Create(d.url(), "before", "w");
  const uint64_t rv0 = ListRv(d.url(), "");
  const uint64_t rv_a = Create(d.url(), "a", "w");
  const uint64_t rv_a2 = Relabel(d.url(), "a", "w2");
  auto del = Http(d.url(), "DELETE", kVms + "/a");
  REQUIRE(del.status == 200);

  WatchStream w(d.url(), kVms + "?watch=true&resourceVersion=" + std::to_string(rv0));
  REQUIRE(w.started());
  CHECK(w.status() == 200);
  CHECK(w.headers().at("content-type").rfind("application/json", 0) == 0);
  auto events = Drain(w, 10);
  INFO(Summary(events));
  REQUIRE(events.size() == 3);
  CHECK(events[0]["type"] == "ADDED");
  CHECK(Rv(events[0]["object"]) == rv_a);
  CHECK(events[1]["type"] == "MODIFIED");
  CHECK(Rv(events[1]["object"]) == rv_a2);
  CHECK(events[2]["type"] == "DELETED");
  CHECK(Rv(events[2]["object"]) > rv_a2);
  for (const auto& e : events) CHECK(e["object"]["metadata"]["name"] == "a");

  // Live: the next change arrives on the open stream.
  const uint64_t rv_b = Create(d.url(), "b", "w");
  auto live = w.Next(5s);
  REQUIRE(live.has_value());
  CHECK((*live)["type"] == "ADDED");
  CHECK(Rv((*live)["object"]) == rv_b);
}

TEST_CASE(
    "watch from a resourceVersion with a label selector: ADDED on entering, DELETED on "
    "leaving, also for changes made before the watch started") {
  TempDir tmp("ev-api-watch");
  EdgevirtDaemon d(tmp / "daemon", "", kApiOnly);
  d.Start();
  Create(d.url(), "stays", "crash");
  Create(d.url(), "leaves", "crash");
  Create(d.url(), "enters", "other");
  const uint64_t rv0 = ListRv(d.url(), "?labelSelector=suite%3Dcrash");

  // Changes after rv0, before the watch starts.
  const uint64_t rv_new = Create(d.url(), "new", "crash");
  const uint64_t rv_leave = Relabel(d.url(), "leaves", "other");
  const uint64_t rv_enter = Relabel(d.url(), "enters", "crash");
  Create(d.url(), "unrelated", "other");

  const std::string path =
      kVms + "?watch=true&labelSelector=suite%3Dcrash&resourceVersion=" + std::to_string(rv0);
  WatchStream w(d.url(), path);
  REQUIRE(w.started());
  auto events = Drain(w, 10);
  INFO("GET " << path << "\nevents: " << Summary(events));
  // kube-apiserver: the creation of "new" is ADDED; "leaves" leaving the selector is DELETED;
  // "enters" entering it is ADDED; "unrelated" and "stays" send nothing.
  REQUIRE(events.size() == 3);
  CHECK(events[0]["type"] == "ADDED");
  CHECK(events[0]["object"]["metadata"]["name"] == "new");
  CHECK(Rv(events[0]["object"]) == rv_new);
  CHECK(events[1]["type"] == "DELETED");
  CHECK(events[1]["object"]["metadata"]["name"] == "leaves");
  CHECK(Rv(events[1]["object"]) == rv_leave);
  CHECK(events[2]["type"] == "ADDED");
  CHECK(events[2]["object"]["metadata"]["name"] == "enters");
  CHECK(Rv(events[2]["object"]) == rv_enter);
}

TEST_CASE("watch with a label selector, live: ADDED on entering, DELETED on leaving") {
  TempDir tmp("ev-api-watch");
  EdgevirtDaemon d(tmp / "daemon", "", kApiOnly);
  d.Start();
  Create(d.url(), "stays", "crash");
  Create(d.url(), "outside", "other");
  const uint64_t rv0 = ListRv(d.url(), "?labelSelector=suite%3Dcrash");
  WatchStream w(d.url(), kVms + "?watch=true&labelSelector=suite%3Dcrash&resourceVersion=" +
                             std::to_string(rv0));
  REQUIRE(w.started());
  // Give the server time to set the stream up before the changes.
  CHECK_FALSE(w.Next(500ms).has_value());

  Relabel(d.url(), "stays", "other");
  auto left = w.Next(5s);
  REQUIRE(left.has_value());
  CHECK((*left)["type"] == "DELETED");
  CHECK((*left)["object"]["metadata"]["name"] == "stays");
  Relabel(d.url(), "stays", "crash");
  auto back = w.Next(5s);
  REQUIRE(back.has_value());
  CHECK((*back)["type"] == "ADDED");
  CHECK((*back)["object"]["metadata"]["name"] == "stays");
  Relabel(d.url(), "outside", "crash");
  auto entered = w.Next(5s);
  REQUIRE(entered.has_value());
  CHECK((*entered)["type"] == "ADDED");
  CHECK((*entered)["object"]["metadata"]["name"] == "outside");
  Create(d.url(), "fresh", "crash");
  auto fresh = w.Next(5s);
  REQUIRE(fresh.has_value());
  CHECK((*fresh)["type"] == "ADDED");
  CHECK((*fresh)["object"]["metadata"]["name"] == "fresh");
}

TEST_CASE("watch: 410 Expired for a compacted RV, bookmarks, timeoutSeconds") {
  TempDir tmp("ev-api-watch");
  EdgevirtDaemon d(tmp / "daemon", "  watchBookmarkInterval: 1s\n",
                   std::string(kApiOnly) + "store:\n  eventRetention:\n    count: 10\n");
  d.Start();
  const uint64_t first = Create(d.url(), "vm-0", "w");
  for (int i = 1; i < 40; ++i) Create(d.url(), "vm-" + std::to_string(i), "w");

  // Too old: an ERROR event carrying a 410 Expired Status (or a plain 410).
  WatchStream old(d.url(), kVms + "?watch=true&resourceVersion=" + std::to_string(first));
  REQUIRE(old.started());
  if (old.status() == 200) {
    auto ev = old.Next(5s);
    REQUIRE(ev.has_value());
    INFO(ev->dump());
    CHECK((*ev)["type"] == "ERROR");
    CHECK((*ev)["object"]["kind"] == "Status");
    CHECK((*ev)["object"]["code"] == 410);
    CHECK((*ev)["object"]["reason"] == "Expired");
  } else {
    CHECK(old.status() == 410);
  }

  // Bookmarks when asked for: only metadata.resourceVersion, at least the list RV.
  const uint64_t rv = ListRv(d.url(), "");
  WatchStream bm(
      d.url(), kVms + "?watch=true&allowWatchBookmarks=true&resourceVersion=" + std::to_string(rv));
  REQUIRE(bm.started());
  auto b = bm.Next(5s);
  REQUIRE(b.has_value());
  INFO(b->dump());
  CHECK((*b)["type"] == "BOOKMARK");
  CHECK((*b)["object"]["kind"] == "VirtualMachine");
  CHECK(Rv((*b)["object"]) >= rv);
  CHECK_FALSE((*b)["object"].contains("spec"));

  // timeoutSeconds ends the stream (the last chunk; clients then re-watch).
  const auto t0 = Clock::now();
  WatchStream t(d.url(),
                kVms + "?watch=true&timeoutSeconds=1&resourceVersion=" + std::to_string(rv));
  REQUIRE(t.started());
  while (!t.ended() && Clock::now() - t0 < 10s) t.Next(500ms);
  CHECK(t.ended());
  CHECK(Clock::now() - t0 < 5s);
}

}  // namespace
}  // namespace edgevirt::testing
