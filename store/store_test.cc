#include "store/store.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::store {
namespace {

using std::chrono::milliseconds;

using edgevirt::testing::TempDir;

ObjectKey Vm(const std::string& ns, const std::string& name) {
  return ObjectKey{"kubevirt.io", "VirtualMachine", ns, name};
}
ObjectKey Vmi(const std::string& ns, const std::string& name) {
  return ObjectKey{"kubevirt.io", "VirtualMachineInstance", ns, name};
}

Options TestOptions(const TempDir& dir) {
  Options o;
  o.dir = dir.path() / "state";
  o.initial_map_size = 4u << 20;
  return o;
}

std::unique_ptr<Store> MustOpen(const Options& o) {
  auto s = Store::Open(o);
  if (!s) FAIL("open: " << s.error().ToString());
  return std::move(s).value();
}

template <typename T>
T Must(Result<T> r) {
  if (!r) FAIL(r.error().ToString());
  return std::move(r).value();
}

Event MustNext(Watch& w, milliseconds timeout = milliseconds(5000)) {
  auto r = w.Next(timeout);
  if (!r) FAIL("watch: " << r.error().ToString());
  if (!r->has_value()) FAIL("watch: timed out");
  return std::move(**r);
}

// Catch2 assertions are not thread-safe: worker threads record failures here and the test
// thread checks them after joining.
class ThreadErrors {
 public:
  void Add(std::string message) {
    std::lock_guard<std::mutex> lock(mu_);
    messages_.push_back(std::move(message));
  }
  void Check() {
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& m : messages_) FAIL_CHECK(m);
    CHECK(messages_.empty());
  }

 private:
  std::mutex mu_;
  std::vector<std::string> messages_;
};

// Waits up to 5 s for `pred`, which a committer callback makes true shortly after a write
// returns (events are fanned out after writers are released).
template <typename Pred>
bool Eventually(Pred pred) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(milliseconds(1));
  }
  return true;
}

void ExpectNoEvent(Watch& w) {
  auto r = w.TryNext();
  REQUIRE(r.has_value());
  CHECK_FALSE(r->has_value());
}

TEST_CASE("create, get, update, delete and their errors") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));

  Record created = Must(store->Create(Vm("default", "vm1"), R"({"a":1})"));
  CHECK(created.key == Vm("default", "vm1"));
  CHECK(created.uid.size() == 36);
  CHECK(created.resource_version == 1);
  CHECK(created.generation == 1);
  CHECK(created.creation_timestamp.size() == 20);
  CHECK(created.creation_timestamp.back() == 'Z');
  CHECK(created.data == R"({"a":1})");

  Record got = Must(store->Get(Vm("default", "vm1")));
  CHECK(got.uid == created.uid);
  CHECK(got.resource_version == 1);
  CHECK(got.data == created.data);
  CHECK(got.creation_timestamp == created.creation_timestamp);

  auto dup = store->Create(Vm("default", "vm1"), "{}");
  REQUIRE_FALSE(dup.has_value());
  CHECK(dup.error().code == Code::kAlreadyExists);

  CHECK(store->Get(Vm("default", "nope")).error().code == Code::kNotFound);
  CHECK(store->Get(Vm("other", "vm1")).error().code == Code::kNotFound);
  CHECK(store->Update(Vm("default", "nope"), "{}", 0, false).error().code == Code::kNotFound);
  CHECK(store->Delete(Vm("default", "nope")).error().code == Code::kNotFound);

  // Stale RV.
  auto stale = store->Update(Vm("default", "vm1"), "{}", 99, false);
  REQUIRE_FALSE(stale.has_value());
  CHECK(stale.error().code == Code::kConflict);

  Record updated = Must(store->Update(Vm("default", "vm1"), R"({"a":2})", 1, false));
  CHECK(updated.resource_version == 2);
  CHECK(updated.generation == 1);
  CHECK(updated.uid == created.uid);
  CHECK(updated.creation_timestamp == created.creation_timestamp);
  CHECK(Must(store->Get(Vm("default", "vm1"))).data == R"({"a":2})");

  // Unconditional update (expected_rv 0) with a generation bump.
  Record bumped = Must(store->Update(Vm("default", "vm1"), R"({"a":3})", 0, true));
  CHECK(bumped.resource_version == 3);
  CHECK(bumped.generation == 2);
  CHECK(Must(store->Update(Vm("default", "vm1"), "{}", 3, true)).generation == 3);

  CHECK(store->Delete(Vm("default", "vm1"), 1).error().code == Code::kConflict);
  CHECK(store->Delete(Vm("default", "vm1"), 0, "wrong-uid").error().code == Code::kConflict);
  Record deleted = Must(store->Delete(Vm("default", "vm1"), 4, created.uid));
  CHECK(deleted.resource_version == 5);
  CHECK(deleted.data == "{}");
  CHECK(deleted.uid == created.uid);
  CHECK(store->Get(Vm("default", "vm1")).error().code == Code::kNotFound);

  // Re-creating gives a new uid and generation 1.
  Record again = Must(store->Create(Vm("default", "vm1"), "{}"));
  CHECK(again.uid != created.uid);
  CHECK(again.generation == 1);
  CHECK(again.resource_version == 6);
  CHECK(store->CurrentResourceVersion() == 6);

  // Cluster-scoped objects have an empty namespace; core objects an empty group.
  Record node = Must(store->Create(ObjectKey{"", "Node", "", "n1"}, "{}"));
  CHECK(Must(store->Get(ObjectKey{"", "Node", "", "n1"})).uid == node.uid);
  CHECK(ObjectKey{"", "Node", "", "n1"}.ToString() == "Node n1");
  CHECK(Vm("default", "vm1").ToString() == "kubevirt.io/VirtualMachine default/vm1");
  CHECK(store->Verify().has_value());
}

TEST_CASE("keys and bodies are validated") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));
  auto invalid = [&](ObjectKey key) {
    auto r = store->Create(key, "{}");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Code::kInvalid);
    CHECK(store->Get(key).error().code == Code::kInvalid);
  };
  invalid(ObjectKey{"g", "", "ns", "n"});
  invalid(ObjectKey{"g", "K", "ns", ""});
  invalid(ObjectKey{"g", "K", std::string("a\0b", 3), "n"});
  invalid(ObjectKey{"g", "K", "ns", std::string("a\0b", 3)});
  invalid(ObjectKey{std::string("a\0b", 3), "K", "ns", "n"});
  invalid(ObjectKey{"g", "K", "ns", std::string(254, 'n')});
  invalid(ObjectKey{"g", "K", std::string(64, 'n'), "n"});
  invalid(ObjectKey{"g", std::string(64, 'k'), "ns", "n"});
  invalid(ObjectKey{std::string(129, 'g'), "K", "ns", "n"});
  // The longest valid key still fits LMDB's key size.
  ObjectKey longest{std::string(128, 'g'), std::string(63, 'k'), std::string(63, 'n'),
                    std::string(253, 'x')};
  CHECK(store->Create(longest, "{}").has_value());
  CHECK(store->Get(longest).has_value());

  auto big = store->Create(Vm("default", "big"), std::string((8u << 20) + 1, 'x'));
  REQUIRE_FALSE(big.has_value());
  CHECK(big.error().code == Code::kTooLarge);

  CHECK(store->List(ListOptions{}).error().code == Code::kInvalid);
  CHECK(store->PutRaw("", "k", "v").error().code == Code::kInvalid);
  CHECK(store->PutRaw("s", "", "v").error().code == Code::kInvalid);
  CHECK(store->PutRaw(std::string("a\0b", 3), "k", "v").error().code == Code::kInvalid);
  CHECK(store->GetRaw(std::string(65, 's'), "k").error().code == Code::kInvalid);
  // Nothing above consumed a resourceVersion.
  CHECK(store->CurrentResourceVersion() == 1);
}

TEST_CASE("resourceVersion is global and strictly increasing across kinds") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));
  uint64_t last = 0;
  for (int i = 0; i < 20; ++i) {
    ObjectKey key = i % 2 == 0 ? Vm("ns" + std::to_string(i % 3), "a" + std::to_string(i))
                               : Vmi("ns", "b" + std::to_string(i));
    Record r = Must(store->Create(key, "{}"));
    CHECK(r.resource_version == last + 1);
    last = r.resource_version;
    Record u = Must(store->Update(key, "{\"x\":1}", r.resource_version, false));
    CHECK(u.resource_version == last + 1);
    last = u.resource_version;
  }
  // Raw writes do not consume RVs.
  REQUIRE(store->PutRaw("leases", "a", "1").has_value());
  CHECK(store->CurrentResourceVersion() == last);
  CHECK(store->GetStats().resource_version == last);
}

TEST_CASE("list by kind, namespace and all namespaces with paging") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));
  std::vector<std::pair<std::string, std::string>> all;
  for (const std::string ns : {"a", "b", "c"}) {
    for (int i = 0; i < 7; ++i) {
      std::string name = "vm" + std::to_string(i);
      Must(store->Create(Vm(ns, name), ns + "/" + name));
      all.emplace_back(ns, name);
    }
  }
  Must(store->Create(Vmi("a", "vmi"), "{}"));  // other kind, same group
  Must(store->Create(ObjectKey{"", "VirtualMachine", "a", "core"}, "{}"));  // other group
  std::sort(all.begin(), all.end());

  ListResult everything =
      Must(store->List(ListOptions{"kubevirt.io", "VirtualMachine", "", std::nullopt, 0}));
  REQUIRE(everything.items.size() == all.size());
  CHECK_FALSE(everything.more);
  CHECK(everything.resource_version == store->CurrentResourceVersion());
  for (size_t i = 0; i < all.size(); ++i) {
    CHECK(everything.items[i].key.ns == all[i].first);
    CHECK(everything.items[i].key.name == all[i].second);
    CHECK(everything.items[i].data == all[i].first + "/" + all[i].second);
    CHECK(everything.items[i].uid.size() == 36);
  }

  ListResult ns_b = Must(store->List(ListOptions{"kubevirt.io", "VirtualMachine", "b", {}, 0}));
  REQUIRE(ns_b.items.size() == 7);
  for (const Record& r : ns_b.items) CHECK(r.key.ns == "b");
  CHECK(Must(store->List(ListOptions{"kubevirt.io", "VirtualMachineInstance", "", {}, 0}))
            .items.size() == 1);
  CHECK(Must(store->List(ListOptions{"", "VirtualMachine", "", {}, 0})).items.size() == 1);
  CHECK(Must(store->List(ListOptions{"kubevirt.io", "VirtualMachine", "zz", {}, 0})).items.empty());

  SECTION("paging across all namespaces") {
    for (size_t limit : {1u, 4u, 7u, 20u, 21u, 50u}) {
      std::vector<std::pair<std::string, std::string>> seen;
      ListOptions lo{"kubevirt.io", "VirtualMachine", "", std::nullopt, limit};
      for (int pages = 0;; ++pages) {
        REQUIRE(pages < 100);
        ListResult page = Must(store->List(lo));
        CHECK(page.items.size() <= limit);
        for (const Record& r : page.items) seen.emplace_back(r.key.ns, r.key.name);
        if (!page.more) break;
        REQUIRE_FALSE(page.items.empty());
        lo.start_after = std::make_pair(page.items.back().key.ns, page.items.back().key.name);
      }
      CHECK(seen == all);
    }
  }
  SECTION("paging within one namespace") {
    ListOptions lo{"kubevirt.io", "VirtualMachine", "b", std::nullopt, 3};
    ListResult p1 = Must(store->List(lo));
    REQUIRE(p1.items.size() == 3);
    CHECK(p1.more);
    lo.start_after = std::make_pair(std::string("b"), p1.items.back().key.name);
    ListResult p2 = Must(store->List(lo));
    REQUIRE(p2.items.size() == 3);
    CHECK(p2.items.front().key.name == "vm3");
    CHECK(p2.more);
    lo.start_after = std::make_pair(std::string("b"), p2.items.back().key.name);
    ListResult p3 = Must(store->List(lo));
    REQUIRE(p3.items.size() == 1);
    CHECK_FALSE(p3.more);
    // A start_after whose object was deleted meanwhile still resumes at the right place.
    Must(store->Delete(Vm("b", "vm2")));
    lo.start_after = std::make_pair(std::string("b"), std::string("vm2"));
    lo.limit = 0;
    ListResult rest = Must(store->List(lo));
    REQUIRE(rest.items.size() == 4);
    CHECK(rest.items.front().key.name == "vm3");
  }
}

TEST_CASE("Apply is all-or-nothing and assigns consecutive RVs") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));
  Record base = Must(store->Create(Vm("d", "base"), "v1"));

  SECTION("success") {
    std::vector<Mutation> ms(3);
    ms[0].op = Mutation::Op::kCreate;
    ms[0].key = Vm("d", "x");
    ms[0].data = "x1";
    ms[1].op = Mutation::Op::kUpdate;
    ms[1].key = Vm("d", "x");  // sees the create before it in the same Apply
    ms[1].data = "x2";
    ms[1].expected_rv = 2;
    ms[1].bump_generation = true;
    ms[2].op = Mutation::Op::kDelete;
    ms[2].key = Vm("d", "base");
    ms[2].expected_uid = base.uid;
    auto out = Must(store->Apply(ms));
    REQUIRE(out.size() == 3);
    CHECK(out[0].resource_version == 2);
    CHECK(out[1].resource_version == 3);
    CHECK(out[1].generation == 2);
    CHECK(out[1].uid == out[0].uid);
    CHECK(out[2].resource_version == 4);
    CHECK(Must(store->Get(Vm("d", "x"))).data == "x2");
    CHECK(store->Get(Vm("d", "base")).error().code == Code::kNotFound);
    CHECK(store->GetStats().commits == 2);
  }
  SECTION("one failure rolls back everything") {
    uint64_t commits = store->GetStats().commits;
    std::vector<Mutation> ms(3);
    ms[0].op = Mutation::Op::kCreate;
    ms[0].key = Vm("d", "y");
    ms[1].op = Mutation::Op::kUpdate;
    ms[1].key = Vm("d", "base");
    ms[1].data = "changed";
    ms[2].op = Mutation::Op::kUpdate;
    ms[2].key = Vm("d", "base");
    ms[2].expected_rv = 1;  // stale after ms[1]
    auto out = store->Apply(ms);
    REQUIRE_FALSE(out.has_value());
    CHECK(out.error().code == Code::kConflict);
    CHECK(store->Get(Vm("d", "y")).error().code == Code::kNotFound);
    CHECK(Must(store->Get(Vm("d", "base"))).data == "v1");
    CHECK(store->CurrentResourceVersion() == 1);
    CHECK(store->GetStats().commits == commits);  // nothing to commit

    ms[2].op = Mutation::Op::kCreate;
    ms[2].key = Vm("d", "base");
    CHECK(store->Apply(ms).error().code == Code::kAlreadyExists);
    ms[2].key = ObjectKey{"g", "", "n", "x"};
    CHECK(store->Apply(ms).error().code == Code::kInvalid);
    CHECK(store->Get(Vm("d", "y")).error().code == Code::kNotFound);
    CHECK(store->CurrentResourceVersion() == 1);
  }
  CHECK(store->Apply({}).has_value());
}

TEST_CASE("watch replays, then streams live events, filtered") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));
  Record a = Must(store->Create(Vm("ns1", "a"), "a1"));  // 1
  Must(store->Create(Vmi("ns1", "a"), "i1"));            // 2
  Must(store->Create(Vm("ns2", "b"), "b1"));             // 3
  Must(store->Update(Vm("ns1", "a"), "a2", 0, true));    // 4
  Record del = Must(store->Delete(Vm("ns2", "b")));      // 5

  SECTION("all VMs from rv 1") {
    auto w = Must(store->StartWatch(WatchOptions{"kubevirt.io", "VirtualMachine", "", "", 1}));
    CHECK(w->last_rv() == 1);
    Event e = MustNext(*w);
    CHECK(e.type == EventType::kAdded);
    CHECK(e.object.key == Vm("ns2", "b"));
    CHECK(e.object.resource_version == 3);
    e = MustNext(*w);
    CHECK(e.type == EventType::kModified);
    CHECK(e.object.data == "a2");
    CHECK(e.object.generation == 2);
    CHECK(e.object.uid == a.uid);
    e = MustNext(*w);
    CHECK(e.type == EventType::kDeleted);
    CHECK(e.object.resource_version == 5);
    CHECK(e.object.data == "b1");
    CHECK(e.object.uid == del.uid);
    CHECK(w->last_rv() == 5);
    ExpectNoEvent(*w);
    // Live.
    Must(store->Create(Vmi("ns1", "z"), "{}"));  // 6, filtered out
    Must(store->Create(Vm("ns3", "c"), "c1"));   // 7
    e = MustNext(*w);
    CHECK(e.object.resource_version == 7);
    CHECK(e.object.key == Vm("ns3", "c"));
    CHECK(w->Next(milliseconds(20))->has_value() == false);
  }
  SECTION("from 0 is from now") {
    auto w = Must(store->StartWatch(WatchOptions{"", "", "", "", 0}));
    CHECK(w->last_rv() == 5);
    ExpectNoEvent(*w);
    Must(store->Create(Vm("ns1", "new"), "{}"));
    CHECK(MustNext(*w).object.resource_version == 6);
  }
  SECTION("a future RV is from now") {
    auto w = Must(store->StartWatch(WatchOptions{"", "", "", "", 1000}));
    ExpectNoEvent(*w);
    Must(store->Create(Vm("ns1", "new"), "{}"));
    CHECK(MustNext(*w).object.resource_version == 6);
  }
  SECTION("filter by namespace and name, every kind") {
    auto w = Must(store->StartWatch(WatchOptions{"", "", "ns1", "a", 0 + 1}));
    Event e = MustNext(*w);
    CHECK(e.object.key == Vmi("ns1", "a"));
    e = MustNext(*w);
    CHECK(e.object.key == Vm("ns1", "a"));
    CHECK(e.object.resource_version == 4);
    ExpectNoEvent(*w);
    Must(store->Update(Vm("ns1", "a"), "a3", 0, false));   // 6
    Must(store->Create(Vm("ns1", "other"), "{}"));         // 7
    Must(store->Update(Vmi("ns1", "a"), "i2", 0, false));  // 8
    CHECK(MustNext(*w).object.resource_version == 6);
    CHECK(MustNext(*w).object.resource_version == 8);
  }
  SECTION("notify runs when events arrive and when already pending") {
    auto w = Must(store->StartWatch(WatchOptions{"", "", "", "", 0}));
    std::atomic<int> calls{0};
    w->SetNotify([&] { ++calls; });
    CHECK(calls == 0);
    Must(store->Create(Vm("ns1", "n1"), "{}"));
    CHECK(Eventually([&] { return calls >= 1; }));
    CHECK(calls == 1);  // no spurious call for the setup's writes still being fanned out
    // The asynchronous pattern: the callback itself drains with TryNext.
    std::vector<uint64_t> drained;
    std::mutex drained_mu;
    w->SetNotify([&] {
      std::lock_guard<std::mutex> lock(drained_mu);
      for (;;) {
        auto e = w->TryNext();
        if (!e || !e->has_value()) break;
        drained.push_back((*e)->object.resource_version);
      }
    });
    Must(store->Create(Vm("ns1", "n2"), "{}"));
    Must(store->Create(Vm("ns1", "n3"), "{}"));
    CHECK(Eventually([&] {
      std::lock_guard<std::mutex> lock(drained_mu);
      return drained.size() == 3;  // n1 (pending when the callback was set), n2, n3
    }));
    {
      std::lock_guard<std::mutex> lock(drained_mu);
      CHECK(drained == std::vector<uint64_t>{6, 7, 8});
    }
    auto w2 = Must(store->StartWatch(WatchOptions{"", "", "", "", 2}));
    std::atomic<int> calls2{0};
    w2->SetNotify([&] { ++calls2; });
    CHECK(calls2 == 1);  // replay pending
  }
}

TEST_CASE("watch started while writers run sees every event exactly once") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));
  std::atomic<bool> stop{false};
  ThreadErrors errors;
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        auto r = store->Create(Vm("w", std::to_string(t) + "-" + std::to_string(i)), "{}");
        if (!r) errors.Add(r.error().ToString());
      }
    });
  }
  std::vector<std::unique_ptr<Watch>> watches;
  std::vector<uint64_t> starts;
  for (int i = 0; i < 8; ++i) {
    std::this_thread::sleep_for(milliseconds(5));
    uint64_t from = i % 2 == 0 ? 0 : store->CurrentResourceVersion() / 2;
    auto w = Must(store->StartWatch(WatchOptions{"", "", "", "", from}));
    starts.push_back(w->last_rv());
    watches.push_back(std::move(w));
  }
  std::this_thread::sleep_for(milliseconds(20));
  stop = true;
  for (auto& t : writers) t.join();
  errors.Check();
  const uint64_t end = store->CurrentResourceVersion();
  for (size_t i = 0; i < watches.size(); ++i) {
    uint64_t expect = starts[i] + 1;
    while (expect <= end) {
      Event e = MustNext(*watches[i]);
      REQUIRE(e.object.resource_version == expect);
      ++expect;
    }
    ExpectNoEvent(*watches[i]);
  }
}

TEST_CASE("retention by count compacts the log and old watches are gone") {
  TempDir dir;
  Options o = TestOptions(dir);
  o.event_retention_count = 10;
  auto store = MustOpen(o);
  for (int i = 0; i < 25; ++i) Must(store->Create(Vm("d", "o" + std::to_string(i)), "{}"));
  Stats st = store->GetStats();
  CHECK(st.resource_version == 25);
  CHECK(st.compacted_rv == 15);

  auto gone = store->StartWatch(WatchOptions{"", "", "", "", 14});
  REQUIRE_FALSE(gone.has_value());
  CHECK(gone.error().code == Code::kGone);
  CHECK(gone.error().message.find("<= 15") != std::string::npos);

  // from_rv == compacted_rv: everything retained, nothing missing.
  auto w = Must(store->StartWatch(WatchOptions{"", "", "", "", 15}));
  for (uint64_t rv = 16; rv <= 25; ++rv) CHECK(MustNext(*w).object.resource_version == rv);
  ExpectNoEvent(*w);

  SECTION("live delivery is unaffected by trimming") {
    auto slow = Must(store->StartWatch(WatchOptions{"", "", "", "", 15}));
    CHECK(MustNext(*slow).object.resource_version == 16);
    for (int i = 0; i < 15; ++i) Must(store->Create(Vm("d", "p" + std::to_string(i)), "{}"));
    for (uint64_t rv = 17; rv <= 40; ++rv) {
      CHECK(MustNext(*slow).object.resource_version == rv);
    }
  }
  SECTION("reopen keeps compacted_rv") {
    store.reset();
    store = MustOpen(o);
    CHECK(store->GetStats().compacted_rv == 15);
    CHECK(store->StartWatch(WatchOptions{"", "", "", "", 14}).error().code == Code::kGone);
    CHECK(store->StartWatch(WatchOptions{"", "", "", "", 15}).has_value());
    CHECK(store->Verify().has_value());
  }
}

TEST_CASE("retention by age") {
  TempDir dir;
  Options o = TestOptions(dir);
  o.event_retention_age = std::chrono::seconds(60);
  auto now = std::make_shared<std::atomic<int64_t>>(1'700'000'000);
  o.clock = [now] { return WallClock::time_point(std::chrono::seconds(now->load())); };
  auto store = MustOpen(o);
  for (int i = 0; i < 5; ++i) Must(store->Create(Vm("d", "old" + std::to_string(i)), "{}"));
  CHECK(Must(store->Get(Vm("d", "old0"))).creation_timestamp == "2023-11-14T22:13:20Z");
  *now += 30;
  for (int i = 0; i < 3; ++i) Must(store->Create(Vm("d", "mid" + std::to_string(i)), "{}"));
  CHECK(store->GetStats().compacted_rv == 0);
  CHECK(store->StartWatch(WatchOptions{"", "", "", "", 1}).has_value());
  *now += 31;  // the first five are now 61 s old, the next three 31 s
  Must(store->Create(Vm("d", "new"), "{}"));  // rv 9; trims in its own transaction
  CHECK(store->GetStats().compacted_rv == 5);
  auto gone = store->StartWatch(WatchOptions{"", "", "", "", 4});
  REQUIRE_FALSE(gone.has_value());
  CHECK(gone.error().code == Code::kGone);
  auto w = Must(store->StartWatch(WatchOptions{"", "", "", "", 5}));
  for (uint64_t rv = 6; rv <= 9; ++rv) CHECK(MustNext(*w).object.resource_version == rv);
  CHECK(store->Verify().has_value());
}

TEST_CASE("a watch replaying while retention trims its range fails with kGone") {
  TempDir dir;
  Options o = TestOptions(dir);
  o.event_retention_count = 2000;
  auto store = MustOpen(o);
  std::vector<Mutation> ms(1000);
  for (int batch = 0; batch < 2; ++batch) {
    for (int i = 0; i < 1000; ++i) {
      ms[i].op = Mutation::Op::kCreate;
      ms[i].key = Vm("d", std::to_string(batch) + "-" + std::to_string(i));
    }
    Must(store->Apply(ms));
  }
  auto w = Must(store->StartWatch(WatchOptions{"", "", "", "", 0 + 1}));
  // The first chunk (512 events) is buffered; now trim past it.
  for (int i = 0; i < 1000; ++i) {
    ms[i].key = Vm("d", "2-" + std::to_string(i));
  }
  Must(store->Apply(ms));  // rv 3000, compacted 1000
  Result<std::optional<Event>> r = std::optional<Event>();
  uint64_t delivered = 0;
  for (;;) {
    r = w->Next(milliseconds(1000));
    if (!r || !r->has_value()) break;
    ++delivered;
  }
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == Code::kGone);
  CHECK(delivered == 512);
  CHECK(w->Next(milliseconds(0)).error().code == Code::kGone);  // stays broken
}

TEST_CASE("a slow watcher is cut off, others are not") {
  TempDir dir;
  Options o = TestOptions(dir);
  o.watch_queue_limit = 5;
  auto store = MustOpen(o);
  auto slow = Must(store->StartWatch(WatchOptions{"", "", "", "", 0}));
  auto filtered = Must(store->StartWatch(WatchOptions{"", "Other", "", "", 0}));
  auto fast = Must(store->StartWatch(WatchOptions{"", "", "", "", 0}));
  std::atomic<int> notified{0};
  slow->SetNotify([&] { ++notified; });
  for (int i = 0; i < 6; ++i) {
    Must(store->Create(Vm("d", std::to_string(i)), "{}"));
    CHECK(MustNext(*fast).object.resource_version == uint64_t(i + 1));
  }
  auto r = slow->Next(milliseconds(0));
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == Code::kUnavailable);
  CHECK(r.error().message.find("too slow") != std::string::npos);
  CHECK(Eventually([&] { return notified == 6; }));  // 5 events, then the break
  ExpectNoEvent(*filtered);
  CHECK(store->GetStats().watches == 3);
  slow.reset();
  CHECK(store->GetStats().watches == 2);
}

TEST_CASE("Close fails writes and breaks watches; watches may outlive the store") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));
  Must(store->Create(Vm("d", "a"), "{}"));
  auto w = Must(store->StartWatch(WatchOptions{"", "", "", "", 0}));
  std::atomic<bool> broken_unavailable{false};
  std::thread waiter([&] {
    auto r = w->Next(milliseconds(10000));
    broken_unavailable = !r.has_value() && r.error().code == Code::kUnavailable;
  });
  std::this_thread::sleep_for(milliseconds(20));
  store->Close();
  waiter.join();
  CHECK(broken_unavailable);
  CHECK(store->Create(Vm("d", "b"), "{}").error().code == Code::kUnavailable);
  CHECK(store->PutRaw("s", "k", "v").error().code == Code::kUnavailable);
  CHECK(store->StartWatch(WatchOptions{}).error().code == Code::kUnavailable);
  CHECK(Must(store->Get(Vm("d", "a"))).resource_version == 1);  // reads still work
  store->Close();                                               // idempotent
  store.reset();
  CHECK(w->Next(milliseconds(0)).error().code == Code::kUnavailable);
  w.reset();
}

TEST_CASE("Close while writers run: every write either commits or fails kUnavailable") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));
  std::atomic<int> ok{0}, unavailable{0}, other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0;; ++i) {
        auto r = store->Create(Vm("c", std::to_string(t) + "-" + std::to_string(i)), "{}");
        if (r) {
          ++ok;
        } else if (r.error().code == Code::kUnavailable) {
          ++unavailable;
          return;
        } else {
          ++other;
          return;
        }
      }
    });
  }
  std::this_thread::sleep_for(milliseconds(50));
  store->Close();
  for (auto& t : threads) t.join();
  CHECK(unavailable == 8);
  CHECK(other == 0);
  CHECK(store->GetStats().writes == static_cast<uint64_t>(ok.load()));
  CHECK(Must(store->List(ListOptions{"kubevirt.io", "VirtualMachine", "c", {}, 0})).items.size() ==
        static_cast<size_t>(ok.load()));
}

TEST_CASE("group commit batches concurrent writers into few commits") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));
  constexpr int kThreads = 16;
  constexpr int kPerThread = 40;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  std::mutex mu;
  std::set<uint64_t> rvs;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        auto r = store->Create(Vm("g", std::to_string(t) + "-" + std::to_string(i)),
                               std::string(512, 'x'));
        if (!r) {
          ++failures;
          continue;
        }
        std::lock_guard<std::mutex> lock(mu);
        rvs.insert(r->resource_version);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failures == 0);
  Stats st = store->GetStats();
  INFO("commits=" << st.commits << " writes=" << st.writes);
  CHECK(st.writes == kThreads * kPerThread);
  CHECK(rvs.size() == kThreads * kPerThread);
  CHECK(*rvs.rbegin() == kThreads * kPerThread);
  CHECK(st.commits < st.writes / 2);
  // The committer's time accounting: every commit builds, syncs and releases; concurrent
  // writers make it gather at least once. Each commit fsyncs, so it takes at least 1 us.
  INFO("gather=" << st.gather_nanos << " build=" << st.build_nanos << " commit=" << st.commit_nanos
                 << " release=" << st.release_nanos);
  CHECK(st.gather_nanos > 0);
  CHECK(st.build_nanos > 0);
  CHECK(st.commit_nanos >= st.commits * 1000);
  CHECK(st.release_nanos > 0);
}

TEST_CASE("concurrent creates of one key: exactly one wins, the batch's others are unaffected") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));
  std::vector<std::thread> threads;
  std::atomic<int> won{0}, exists{0}, other_ok{0};
  for (int t = 0; t < 16; ++t) {
    threads.emplace_back([&, t] {
      auto r = store->Create(Vm("d", "contended"), std::to_string(t));
      if (r)
        ++won;
      else if (r.error().code == Code::kAlreadyExists)
        ++exists;
      if (store->Create(Vm("d", "own" + std::to_string(t)), "{}")) ++other_ok;
    });
  }
  for (auto& t : threads) t.join();
  CHECK(won == 1);
  CHECK(exists == 15);
  CHECK(other_ok == 16);
  CHECK(store->CurrentResourceVersion() == 17);
  CHECK(store->Verify().has_value());
}

TEST_CASE("the map grows from 1 MiB under many big writes while readers run") {
  TempDir dir;
  Options o = TestOptions(dir);
  o.initial_map_size = 1u << 20;
  auto store = MustOpen(o);
  CHECK(store->GetStats().map_size == 1u << 20);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0};
  ThreadErrors errors;
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      while (!stop) {
        auto l = store->List(ListOptions{"kubevirt.io", "VirtualMachine", "", {}, 5});
        if (!l) errors.Add(l.error().ToString());
        auto g = store->Get(Vm("big", "0-0"));
        if (!g && g.error().code != Code::kNotFound) errors.Add(g.error().ToString());
        ++reads;
      }
    });
  }
  std::vector<std::thread> writers;
  const std::string body(20000, 'b');
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      for (int i = 0; i < 60; ++i) {
        auto r = store->Create(Vm("big", std::to_string(t) + "-" + std::to_string(i)), body);
        if (!r) errors.Add(r.error().ToString());
        if (i % 10 == 0) {
          auto p = store->PutRaw("blobs", std::to_string(t) + "-" + std::to_string(i),
                                 std::string(100000, 'r'));
          if (!p) errors.Add(p.error().ToString());
        }
      }
    });
  }
  for (auto& t : writers) t.join();
  stop = true;
  for (auto& t : readers) t.join();
  errors.Check();
  Stats st = store->GetStats();
  INFO("map_size=" << st.map_size << " resizes=" << st.map_resizes);
  CHECK(st.map_resizes >= 2);
  CHECK(st.map_size >= 8u << 20);
  CHECK(reads > 0);
  ListResult all = Must(store->List(ListOptions{"kubevirt.io", "VirtualMachine", "big", {}, 0}));
  CHECK(all.items.size() == 240);
  for (const Record& r : all.items) CHECK(r.data == body);
  CHECK(Must(store->ListRaw("blobs", "")).size() == 24);
  CHECK(store->Verify().has_value());

  // Reopen with the same tiny initial size: no data lost, map sized to the file.
  store.reset();
  store = MustOpen(o);
  CHECK(store->GetStats().map_size >= st.map_size);
  CHECK(
      Must(store->List(ListOptions{"kubevirt.io", "VirtualMachine", "big", {}, 0})).items.size() ==
      240);
  Must(store->Create(Vm("big", "after"), body));
}

TEST_CASE("one write several times bigger than the map goes through") {
  TempDir dir;
  Options o = TestOptions(dir);
  o.initial_map_size = 1u << 20;
  auto store = MustOpen(o);
  Record r = Must(store->Create(Vm("big", "huge"), std::string(7u << 20, 'h')));
  CHECK(Must(store->Get(Vm("big", "huge"))).data.size() == 7u << 20);
  CHECK(store->GetStats().map_resizes >= 3);
  CHECK(store->Verify().has_value());
}

TEST_CASE("reopen keeps objects, events, raw records, and RVs continue") {
  TempDir dir;
  Options o = TestOptions(dir);
  std::string uid;
  {
    auto store = MustOpen(o);
    uid = Must(store->Create(Vm("d", "a"), "a1")).uid;
    Must(store->Create(Vm("d", "b"), "b1"));
    Must(store->Update(Vm("d", "a"), "a2", 1, true));
    Must(store->Delete(Vm("d", "b")));
    REQUIRE(store->PutRaw("devices", "vm1/disk0", "rule").has_value());
  }
  struct stat st;
  REQUIRE(::stat(o.dir.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  auto store = MustOpen(o);
  CHECK(store->CurrentResourceVersion() == 4);
  Record a = Must(store->Get(Vm("d", "a")));
  CHECK(a.uid == uid);
  CHECK(a.data == "a2");
  CHECK(a.generation == 2);
  CHECK(a.resource_version == 3);
  CHECK(store->Get(Vm("d", "b")).error().code == Code::kNotFound);
  CHECK(Must(store->GetRaw("devices", "vm1/disk0")) == "rule");
  auto w = Must(store->StartWatch(WatchOptions{"", "", "", "", 1}));
  CHECK(MustNext(*w).type == EventType::kAdded);
  CHECK(MustNext(*w).type == EventType::kModified);
  CHECK(MustNext(*w).type == EventType::kDeleted);
  CHECK(Must(store->Create(Vm("d", "c"), "{}")).resource_version == 5);
  CHECK(MustNext(*w).object.resource_version == 5);
  CHECK(store->Verify().has_value());

  // One process per environment.
  auto second = Store::Open(o);
  REQUIRE_FALSE(second.has_value());
  CHECK(second.error().code == Code::kUnavailable);
}

TEST_CASE("raw spaces") {
  TempDir dir;
  Options o = TestOptions(dir);
  {
    auto store = MustOpen(o);
    REQUIRE(store->PutRaw("leases", "10.0.0.2", "vm-a").has_value());
    REQUIRE(store->PutRaw("leases", "10.0.0.3", "vm-b").has_value());
    REQUIRE(store->PutRaw("leases", "10.0.1.1", "vm-c").has_value());
    REQUIRE(store->PutRaw("lease", "x", "other space").has_value());
    REQUIRE(store->PutRaw("leasesz", "10.0.0.9", "other space").has_value());
    REQUIRE(store->PutRaw("bin", std::string("a\0b", 3), std::string("\0\1\2", 3)).has_value());
    CHECK(Must(store->GetRaw("leases", "10.0.0.2")) == "vm-a");
    REQUIRE(store->PutRaw("leases", "10.0.0.2", "vm-z").has_value());  // overwrite
    CHECK(Must(store->GetRaw("leases", "10.0.0.2")) == "vm-z");
    CHECK(Must(store->GetRaw("bin", std::string("a\0b", 3))) == std::string("\0\1\2", 3));
    CHECK(store->GetRaw("leases", "nope").error().code == Code::kNotFound);
    CHECK(store->GetRaw("lease", "10.0.0.2").error().code == Code::kNotFound);

    auto all = Must(store->ListRaw("leases", ""));
    REQUIRE(all.size() == 3);
    CHECK(all[0] == std::make_pair(std::string("10.0.0.2"), std::string("vm-z")));
    CHECK(all[2].first == "10.0.1.1");
    auto sub = Must(store->ListRaw("leases", "10.0.0."));
    CHECK(sub.size() == 2);
    CHECK(Must(store->ListRaw("nothing", "")).empty());

    REQUIRE(store->DeleteRaw("leases", "10.0.0.3").has_value());
    REQUIRE(store->DeleteRaw("leases", "10.0.0.3").has_value());  // idempotent
    CHECK(store->GetRaw("leases", "10.0.0.3").error().code == Code::kNotFound);
    CHECK(store->CurrentResourceVersion() == 0);
    CHECK(store->GetStats().raw_writes == 9);
  }
  auto store = MustOpen(o);
  CHECK(Must(store->ListRaw("leases", "")).size() == 2);
  CHECK(Must(store->GetRaw("lease", "x")) == "other space");
  CHECK(store->Verify().has_value());
}

TEST_CASE("readers run concurrently with writers and see consistent snapshots") {
  TempDir dir;
  auto store = MustOpen(TestOptions(dir));
  std::atomic<bool> stop{false};
  ThreadErrors errors;
  std::atomic<uint64_t> reads{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      // Each writer advances its own counter object with compare-and-swap updates.
      ObjectKey counter = Vm("c", "counter" + std::to_string(t));
      auto created = store->Create(counter, "0");
      if (!created) return errors.Add("create: " + created.error().ToString());
      uint64_t rv = created->resource_version;
      for (int i = 1; !stop; ++i) {
        auto r = store->Update(counter, std::to_string(i), rv, false);
        if (!r) return errors.Add("update: " + r.error().ToString());
        rv = r->resource_version;
      }
    });
  }
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      uint64_t last_list_rv = 0;
      std::map<std::string, int> last_counter;
      while (!stop) {
        auto l = store->List(ListOptions{"kubevirt.io", "VirtualMachine", "c", {}, 0});
        if (!l) return errors.Add("list: " + l.error().ToString());
        if (l->resource_version < last_list_rv) {
          return errors.Add("list RV went back from " + std::to_string(last_list_rv) + " to " +
                            std::to_string(l->resource_version));
        }
        last_list_rv = l->resource_version;
        for (const Record& r : l->items) {
          if (r.resource_version > l->resource_version) {
            return errors.Add(r.key.name + " RV above the list's RV");
          }
          int v = std::stoi(r.data);
          if (v < last_counter[r.key.name]) return errors.Add(r.key.name + " went back");
          last_counter[r.key.name] = v;
        }
        ++reads;
      }
    });
  }
  std::this_thread::sleep_for(milliseconds(300));
  stop = true;
  for (auto& t : threads) t.join();
  errors.Check();
  CHECK(reads > 10);
  CHECK(store->Verify().has_value());
}

}  // namespace
}  // namespace edgevirt::store
