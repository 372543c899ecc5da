// Kills a writing process with SIGKILL hundreds of times on one environment and checks after
// every kill that the store opens cleanly and that nothing acknowledged was lost or reordered.
//
// The child (store_crash_writer) writes from several threads and reports each acknowledged
// write on a pipe. The parent keeps a model of what must be durable: unique keys that never
// change, per-thread counters updated by compare-and-swap (+1 each), create/delete pairs,
// two-object Applies and raw records. A write that committed but whose acknowledgement was
// lost to the kill may show up too, but only as the next step of the workload.
//
// STORE_CRASH_ITERATIONS and STORE_CRASH_SEED override the defaults.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/log.h"
#include "store/store.h"
#include "tests/integration/store_crash_protocol.h"
#include "tests/support/catch.h"

namespace edgevirt::store::crash {
namespace {

// The checks below run millions of times per test; Catch's REQUIRE and INFO per element would
// dominate the run time, so they use ENSURE, which reaches Catch only on failure.
#define ENSURE(cond, context)                                         \
  do {                                                                \
    if (!(cond)) FAIL("check failed: " #cond " (" << context << ")"); \
  } while (false)

struct Parsed {
  uint32_t iter = 0;
  uint32_t thread = 0;
  uint32_t seq = 0;
};

// "x-<iter>-<thread>-<seq>[-<i>]"
Parsed ParseName(const std::string& name) {
  Parsed p;
  unsigned i = 0, t = 0, s = 0;
  if (std::sscanf(name.c_str() + 2, "%u-%u-%u", &i, &t, &s) != 3) FAIL("bad name " << name);
  p.iter = i;
  p.thread = t;
  p.seq = s;
  return p;
}

std::string IterPrefix(char prefix, uint32_t iter) {
  return std::string(1, prefix) + "-" + std::to_string(iter) + "-";
}

std::map<std::string, Record> ListKind(Store& store, const std::string& kind) {
  auto list = store.List(ListOptions{"crash.edgevirt.io", kind, "crash", std::nullopt, 0});
  if (!list) FAIL("list " << kind << ": " << list.error().ToString());
  std::map<std::string, Record> out;
  for (Record& r : list->items) {
    std::string name = r.key.name;
    out.emplace(std::move(name), std::move(r));
  }
  return out;
}

// What must be durable, built from acknowledgements and from what earlier checks found.
struct Model {
  std::map<std::string, uint64_t> u;                           // CrashU name -> rv
  std::map<uint32_t, std::pair<uint64_t, uint64_t>> counters;  // thread -> (value, rv)
  std::map<std::string, uint64_t> d;                           // CrashD name -> rv
  std::map<std::string, uint64_t> a;                           // CrashA name -> rv
  std::map<uint32_t, uint64_t> raw_counters;                   // thread -> value
  std::set<std::string> raw_u;
  uint64_t max_rv = 0;  // every RV handed out before this iteration is <= max_rv
};

struct Child {
  pid_t pid = -1;
  int fd = -1;
};

// posix_spawn (vfork-like in glibc) rather than fork: the parent's model grows large, and
// copying its page tables 300 times would dominate the test.
Child Spawn(const std::string& dir, uint32_t iter) {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  std::string iter_arg = std::to_string(iter);
  const char* argv[] = {STORE_CRASH_WRITER, dir.c_str(), iter_arg.c_str(), nullptr};
  posix_spawn_file_actions_t actions;
  REQUIRE(posix_spawn_file_actions_init(&actions) == 0);
  // dup2 onto kAckFd clears close-on-exec there; if the pipe already is kAckFd, clear it by
  // dup'ing through a spare descriptor.
  if (p[1] == kAckFd) {
    int spare = ::fcntl(p[1], F_DUPFD_CLOEXEC, kAckFd + 1);
    REQUIRE(spare >= 0);
    ::close(p[1]);
    p[1] = spare;
  }
  REQUIRE(posix_spawn_file_actions_adddup2(&actions, p[1], kAckFd) == 0);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0], &actions, nullptr, const_cast<char* const*>(argv), environ);
  posix_spawn_file_actions_destroy(&actions);
  REQUIRE(rc == 0);
  ::close(p[1]);
  return Child{pid, p[0]};
}

// Reads whole Ack records from `fd` until `deadline` (or EOF if none). Returns true at EOF.
bool Drain(int fd, std::string* buf, std::vector<Ack>* acks,
           std::optional<std::chrono::steady_clock::time_point> deadline) {
  for (;;) {
    int timeout_ms = -1;
    if (deadline) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          *deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      timeout_ms = static_cast<int>(left.count());
    }
    pollfd pfd{fd, POLLIN, 0};
    int n = ::poll(&pfd, 1, timeout_ms);
    if (n < 0 && errno == EINTR) continue;
    REQUIRE(n >= 0);
    if (n == 0) return false;
    char chunk[4096];
    ssize_t got = ::read(fd, chunk, sizeof(chunk));
    if (got < 0 && errno == EINTR) continue;
    REQUIRE(got >= 0);
    if (got == 0) return true;
    buf->append(chunk, static_cast<size_t>(got));
    size_t whole = buf->size() / sizeof(Ack) * sizeof(Ack);
    for (size_t off = 0; off < whole; off += sizeof(Ack)) {
      Ack ack;
      std::memcpy(&ack, buf->data() + off, sizeof(Ack));
      acks->push_back(ack);
    }
    buf->erase(0, whole);
  }
}

bool IsObjectWrite(AckOp op) {
  return op == AckOp::kCreateU || op == AckOp::kCounter || op == AckOp::kCreateD ||
         op == AckOp::kDeleteD || op == AckOp::kApply;
}

// Checks the reopened store against the model and this iteration's acks; updates the model.
void CheckAfterKill(Store& store, uint32_t iter, const std::vector<Ack>& acks, Model* model) {
  Status verified = store.Verify();
  if (!verified) FAIL("verify: " << verified.error().ToString());
  const Stats st = store.GetStats();
  const uint64_t cur = st.resource_version;
  INFO("iteration " << iter << ", rv " << cur << ", compacted " << st.compacted_rv);

  // Every acknowledged RV is new, unique and durable.
  std::set<uint64_t> acked_rvs;
  for (const Ack& ack : acks) {
    AckOp op = static_cast<AckOp>(ack.op);
    if (!IsObjectWrite(op)) continue;
    for (uint64_t rv = ack.rv; rv <= ack.rv + (op == AckOp::kApply ? 1 : 0); ++rv) {
      ENSURE(rv > model->max_rv, "acked rv " << rv);
      ENSURE(rv <= cur, "acked rv " << rv);
      ENSURE(acked_rvs.insert(rv).second, "acked rv " << rv);
    }
  }

  // The event log: contiguous up to the current RV, and it holds each acknowledged write.
  std::map<uint64_t, Event> events;
  if (cur > 0) {  // with nothing written there is nothing to replay
    uint64_t from = std::max<uint64_t>(st.compacted_rv, 1);  // 0 would mean "from now"
    auto w = store.StartWatch(WatchOptions{"", "", "", "", from});
    if (!w) FAIL("watch: " << w.error().ToString());
    uint64_t expect = from + 1;
    for (;;) {
      auto e = (*w)->TryNext();
      if (!e) FAIL("replay: " << e.error().ToString());
      if (!e->has_value()) break;
      ENSURE((*e)->object.resource_version == expect, "replay at " << expect);
      ++expect;
      events.emplace((*e)->object.resource_version, std::move(**e));
    }
    ENSURE(expect == cur + 1, "replay ended at " << expect);
  }
  auto check_event = [&](uint64_t rv, EventType type, const std::string& name) {
    auto it = events.find(rv);
    if (it == events.end()) return;  // trimmed (or rv 1, which no watch can replay)
    ENSURE(it->second.type == type, "event " << rv << " for " << name);
    ENSURE(it->second.object.key.name == name, "event " << rv << " for " << name);
  };

  // CrashU: immutable once created.
  {
    auto stored = ListKind(store, "CrashU");
    for (const auto& [name, rv] : model->u) {
      ENSURE(stored.count(name) == 1, name);
      ENSURE(stored[name].resource_version == rv, name);
    }
    std::set<std::string> acked;
    for (const Ack& ack : acks) {
      if (static_cast<AckOp>(ack.op) != AckOp::kCreateU) continue;
      std::string name = Name('u', ack.iter, ack.thread, ack.seq);
      ENSURE(stored.count(name) == 1, name);
      ENSURE(stored[name].resource_version == ack.rv, name);
      check_event(ack.rv, EventType::kAdded, name);
      acked.insert(name);
    }
    model->u.clear();
    // Bodies are checked when an object first shows up; later an unchanged RV vouches for them
    // (and Verify decodes every value each time).
    for (const auto& [name, r] : stored) {
      if (r.resource_version > model->max_rv) {
        ENSURE(r.data == Body(name, ParseName(name).seq), name);
      }
      ENSURE(r.generation == 1, name);
      if (!acked.count(name) && r.resource_version > model->max_rv) {
        // Durable, its ack lost to the kill.
        ENSURE(name.rfind(IterPrefix('u', iter), 0) == 0, name);
      }
      model->u[name] = r.resource_version;
    }
  }

  // CrashCounter: value advances by one per CAS update; at most one unacknowledged step.
  {
    auto stored = ListKind(store, "CrashCounter");
    for (uint32_t t = 0; t < kThreads; ++t) {
      std::optional<std::pair<uint64_t, uint64_t>> acked;  // (value, rv)
      for (const Ack& ack : acks) {
        if (static_cast<AckOp>(ack.op) == AckOp::kCounter && ack.thread == t) {
          if (!acked || ack.value > acked->first) acked = std::make_pair(ack.value, ack.rv);
          check_event(ack.rv, ack.value == 0 ? EventType::kAdded : EventType::kModified,
                      CounterName(t));
        }
      }
      std::optional<std::pair<uint64_t, uint64_t>> prev;
      if (model->counters.count(t)) prev = model->counters[t];
      std::optional<uint64_t> base;
      if (prev) base = prev->first;
      if (acked) base = std::max(base.value_or(0), acked->first);
      auto it = stored.find(CounterName(t));
      if (it == stored.end()) {
        ENSURE(!(base.has_value()), "counter " << t);
        continue;
      }
      const uint64_t v = std::stoull(it->second.data);
      const uint64_t rv = it->second.resource_version;
      ENSURE(it->second.generation == static_cast<int64_t>(v) + 1, "counter " << t);
      if (!base) {
        ENSURE(v == 0, "counter " << t);
        ENSURE(rv > model->max_rv, "counter " << t);
      } else {
        ENSURE(v >= *base, "counter " << t);
        ENSURE(v <= *base + 1, "counter " << t);
        if (acked && v == acked->first) {
          ENSURE(rv == acked->second, "counter " << t);
        } else if (!acked && v == prev->first) {
          ENSURE(rv == prev->second, "counter " << t);
        } else {
          ENSURE(rv > model->max_rv, "counter " << t);
        }
      }
      model->counters[t] = std::make_pair(v, rv);
    }
  }

  // CrashD: a delete acknowledged means gone; an older survivor never changes.
  {
    auto stored = ListKind(store, "CrashD");
    for (const auto& [name, rv] : model->d) {
      ENSURE(stored.count(name) == 1, name);
      ENSURE(stored[name].resource_version == rv, name);
    }
    std::map<std::string, uint64_t> created;
    std::set<std::string> deleted;
    for (const Ack& ack : acks) {
      AckOp op = static_cast<AckOp>(ack.op);
      std::string name = Name('d', ack.iter, ack.thread, ack.seq);
      if (op == AckOp::kCreateD) {
        created[name] = ack.rv;
        check_event(ack.rv, EventType::kAdded, name);
      } else if (op == AckOp::kDeleteD) {
        deleted.insert(name);
        check_event(ack.rv, EventType::kDeleted, name);
      }
    }
    int vanished = 0;
    for (const auto& [name, rv] : created) {
      if (deleted.count(name)) {
        ENSURE(stored.count(name) == 0, name);
      } else if (stored.count(name)) {
        ENSURE(stored[name].resource_version == rv, name);
      } else {
        ++vanished;  // its delete was durable but not acknowledged
      }
    }
    ENSURE(vanished <= kThreads, "vanished " << vanished);
    model->d.clear();
    for (const auto& [name, r] : stored) {
      if (r.resource_version > model->max_rv) {
        ENSURE(r.data == Body(name, ParseName(name).seq), name);
      }
      if (!created.count(name) && r.resource_version > model->max_rv) {
        ENSURE(name.rfind(IterPrefix('d', iter), 0) == 0, name);
      }
      model->d[name] = r.resource_version;
    }
  }

  // CrashA: the two objects of one Apply exist together, at consecutive RVs.
  {
    auto stored = ListKind(store, "CrashA");
    for (const auto& [name, rv] : model->a) {
      ENSURE(stored.count(name) == 1, name);
      ENSURE(stored[name].resource_version == rv, name);
    }
    for (const Ack& ack : acks) {
      if (static_cast<AckOp>(ack.op) != AckOp::kApply) continue;
      std::string name = Name('a', ack.iter, ack.thread, ack.seq);
      ENSURE(stored.count(name + "-0") == 1, name);
      ENSURE(stored.count(name + "-1") == 1, name);
      ENSURE(stored[name + "-0"].resource_version == ack.rv, name);
      check_event(ack.rv, EventType::kAdded, name + "-0");
      check_event(ack.rv + 1, EventType::kAdded, name + "-1");
    }
    model->a.clear();
    for (const auto& [name, r] : stored) {
      std::string base = name.substr(0, name.size() - 2);
      bool first = name.back() == '0';
      std::string other = base + (first ? "-1" : "-0");
      ENSURE(stored.count(other) == 1, name);
      ENSURE(
          stored[other].resource_version + (first ? 0 : 1) == r.resource_version + (first ? 1 : 0),
          name);
      if (r.resource_version > model->max_rv) {
        ENSURE(r.data == Body(base, ParseName(base).seq + (first ? 0 : 1)), name);
        ENSURE(name.rfind(IterPrefix('a', iter), 0) == 0, name);
      }
      model->a[name] = r.resource_version;
    }
  }

  // Raw records.
  {
    auto raw = store.ListRaw(kRawSpace, "");
    if (!raw) FAIL("list raw: " << raw.error().ToString());
    std::map<std::string, std::string> stored(raw->begin(), raw->end());
    for (uint32_t t = 0; t < kThreads; ++t) {
      std::optional<uint64_t> base;
      if (model->raw_counters.count(t)) base = model->raw_counters[t];
      for (const Ack& ack : acks) {
        if (static_cast<AckOp>(ack.op) == AckOp::kRawCounter && ack.thread == t) {
          base = std::max(base.value_or(0), ack.value);
        }
      }
      auto it = stored.find(RawCounterName(t));
      if (it == stored.end()) {
        ENSURE(!(base.has_value()), "raw counter " << t);
        continue;
      }
      uint64_t v = std::stoull(it->second);
      if (base) {
        ENSURE(v >= *base, "raw counter " << t);
        ENSURE(v <= *base + 1, "raw counter " << t);
      } else {
        ENSURE(v == 0, "raw counter " << t);
      }
      model->raw_counters[t] = v;
    }
    for (const std::string& name : model->raw_u) {
      ENSURE(stored.count(name) == 1, name);
    }
    for (const Ack& ack : acks) {
      if (static_cast<AckOp>(ack.op) != AckOp::kRawU) continue;
      std::string name = Name('v', ack.iter, ack.thread, ack.seq);
      ENSURE(stored.count(name) == 1, name);
    }
    const std::set<std::string> model_raw_before = std::move(model->raw_u);
    model->raw_u.clear();
    for (const auto& [name, value] : stored) {
      if (name[0] != 'v') continue;
      if (name.rfind(IterPrefix('v', iter), 0) == 0) {
        ENSURE(value == Body(name, ParseName(name).seq), name);
      } else {
        ENSURE(model_raw_before.count(name) == 1, name);  // no unexpected old record
      }
      model->raw_u.insert(name);
    }
  }

  // The first write after the reopen gets an RV above everything seen so far.
  ENSURE(store.CurrentResourceVersion() == cur, "parent write");
  auto p = store.Create(Key("CrashP", "p-" + std::to_string(iter)), "{}");
  if (!p) FAIL("parent write: " << p.error().ToString());
  ENSURE(p->resource_version == cur + 1, "parent write");
  ENSURE(p->resource_version > model->max_rv, "parent write");
  model->max_rv = p->resource_version;
}

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

TEST_CASE("acknowledged writes survive SIGKILL at random moments") {
  log::Configure(log::Level::kWarning, log::Target::kStderr);
  const int iterations = EnvInt("STORE_CRASH_ITERATIONS", 300);
  const unsigned seed = static_cast<unsigned>(
      EnvInt("STORE_CRASH_SEED", static_cast<int>(std::random_device()() & 0x7fffffff)));
  std::printf("store_crash_test: %d iterations, seed %u (STORE_CRASH_SEED to repeat)\n", iterations,
              seed);
  std::mt19937 rng(seed);

  std::string tmpl = (std::filesystem::temp_directory_path() / "store_crash.XXXXXX").string();
  REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
  struct RemoveOnExit {
    std::string path;
    ~RemoveOnExit() {
      std::error_code ec;
      std::filesystem::remove_all(path, ec);
    }
  } cleanup{tmpl};
  const std::string dir = tmpl + "/state";

  Model model;
  uint64_t total_acks = 0;
  int killed_before_first_ack = 0;
  int early_kills = 0;
  const auto started = std::chrono::steady_clock::now();
  for (int iter = 0; iter < iterations; ++iter) {
    INFO("iteration " << iter << " (seed " << seed << ")");
    // One kill in ten right away and one in ten 0-10 ms after the spawn (during exec, open and
    // recovery); the rest 0-50 ms after the child reports the store open, so that the kill
    // lands among writes whatever the disk's fsync latency.
    const unsigned mode = rng() % 10;
    const bool early = mode < 2;
    const auto delay = std::chrono::microseconds(mode == 0   ? 0
                                                 : mode == 1 ? rng() % 10001
                                                             : rng() % 50001);
    early_kills += early ? 1 : 0;

    Child child = Spawn(dir, static_cast<uint32_t>(iter));
    std::string buf;
    std::vector<Ack> acks;
    if (!early) {
      // Wait (bounded) for the ready record.
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      while (std::none_of(acks.begin(), acks.end(), [](const Ack& a) {
        return static_cast<AckOp>(a.op) == AckOp::kReady ||
               static_cast<AckOp>(a.op) == AckOp::kError;
      })) {
        REQUIRE(std::chrono::steady_clock::now() < give_up);
        REQUIRE_FALSE(Drain(child.fd, &buf, &acks,
                            std::chrono::steady_clock::now() + std::chrono::milliseconds(10)));
      }
    }
    if (delay.count() > 0) {
      Drain(child.fd, &buf, &acks, std::chrono::steady_clock::now() + delay);
    }
    REQUIRE(::kill(child.pid, SIGKILL) == 0);
    while (!Drain(child.fd, &buf, &acks, std::nullopt)) {
    }
    ::close(child.fd);
    int status = 0;
    REQUIRE(::waitpid(child.pid, &status, 0) == child.pid);
    for (const Ack& ack : acks) {
      REQUIRE(ack.magic == kAckMagic);
      REQUIRE(ack.iter == static_cast<uint32_t>(iter));
      if (static_cast<AckOp>(ack.op) == AckOp::kError) FAIL("the writer failed (see stderr)");
    }
    INFO("child status " << status);
    REQUIRE(WIFSIGNALED(status));
    REQUIRE(WTERMSIG(status) == SIGKILL);
    REQUIRE(buf.empty());  // writes of one record are atomic
    acks.erase(
        std::remove_if(acks.begin(), acks.end(),
                       [](const Ack& a) { return static_cast<AckOp>(a.op) == AckOp::kReady; }),
        acks.end());
    total_acks += acks.size();
    killed_before_first_ack += acks.empty() ? 1 : 0;

    auto store = Store::Open(CrashOptions(dir));
    if (!store) FAIL("reopen: " << store.error().ToString());
    CheckAfterKill(**store, static_cast<uint32_t>(iter), acks, &model);
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::printf(
      "store_crash_test: %d kills in %.1f s, %llu acknowledged writes checked, %d kills "
      "within 10 ms of the spawn, %d before the first ack; final rv %llu, %zu objects\n",
      iterations, secs, static_cast<unsigned long long>(total_acks), early_kills,
      killed_before_first_ack, static_cast<unsigned long long>(model.max_rv),
      model.u.size() + model.d.size() + model.a.size() + model.counters.size());
}

}  // namespace
}  // namespace edgevirt::store::crash
