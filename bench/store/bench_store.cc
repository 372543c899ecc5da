// bench_store: durable write throughput of store/ against SQLite, plus read, list and replay
// figures. Prints one JSON object on stdout; progress goes to stderr.
//
//   bench_store [--dir DIR] [--duration SECONDS] [--rounds N] [--threads 1,4,16] [--body-bytes N]
//               [--reads N] [--list-count N] [--replay-count N] [--quick] [--keep] [--no-sqlite]
//               [--sqlite-serialized]
//
// Every write is a Create of a unique VirtualMachine with a ~1 KiB JSON body, and the caller
// waits until it is durable. SQLite runs the same writes: WAL, synchronous=FULL, one
// connection per thread, one transaction (an autocommit INSERT) per write, busy_timeout.
// The work directory must be on a real disk (fsync cost is the point): by default a fresh
// directory under /var/tmp, removed afterwards unless --keep.
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/log.h"
#include "store/store.h"

namespace edgevirt::bench {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::ordered_json;

struct Flags {
  std::string dir;
  double duration_s = 3.0;
  int rounds = 3;
  std::vector<int> threads = {1, 4, 16};
  size_t body_bytes = 1024;
  size_t reads = 200000;
  size_t list_count = 10000;
  size_t replay_count = 10000;
  bool keep = false;
  bool sqlite = true;
  bool quick = false;
  bool sqlite_serialized = false;
};

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "bench_store: %s\n", message.c_str());
  std::exit(1);
}

void Usage() {
  std::fprintf(stderr,
               "usage: bench_store [--dir DIR] [--duration SECONDS] [--rounds N]\n"
               "                   [--threads 1,4,16]\n"
               "                   [--body-bytes N] [--reads N] [--list-count N]\n"
               "                   [--replay-count N] [--quick] [--keep] [--no-sqlite]\n"
               "                   [--sqlite-serialized]\n");
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  bool duration_set = false, rounds_set = false, reads_set = false, list_set = false,
       replay_set = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        Usage();
        Die("missing value for " + a);
      }
      return argv[++i];
    };
    try {
      if (a == "--dir") {
        f.dir = value();
      } else if (a == "--duration") {
        f.duration_s = std::stod(value());
        duration_set = true;
      } else if (a == "--rounds") {
        f.rounds = std::stoi(value());
        rounds_set = true;
      } else if (a == "--threads") {
        f.threads.clear();
        std::string list = value();
        for (size_t pos = 0; pos < list.size();) {
          size_t comma = list.find(',', pos);
          if (comma == std::string::npos) comma = list.size();
          f.threads.push_back(std::stoi(list.substr(pos, comma - pos)));
          pos = comma + 1;
        }
      } else if (a == "--body-bytes") {
        f.body_bytes = std::stoul(value());
      } else if (a == "--reads") {
        f.reads = std::stoul(value());
        reads_set = true;
      } else if (a == "--list-count") {
        f.list_count = std::stoul(value());
        list_set = true;
      } else if (a == "--replay-count") {
        f.replay_count = std::stoul(value());
        replay_set = true;
      } else if (a == "--quick") {
        f.quick = true;
      } else if (a == "--sqlite-serialized") {
        f.sqlite_serialized = true;
      } else if (a == "--no-sqlite") {
        f.sqlite = false;
      } else if (a == "--keep") {
        f.keep = true;
      } else if (a == "--help" || a == "-h") {
        Usage();
        std::exit(0);
      } else {
        Usage();
        Die("unknown flag " + a);
      }
    } catch (const std::exception&) {
      Die("bad value for " + a);
    }
  }
  if (f.quick) {
    if (!duration_set) f.duration_s = 0.3;
    if (!rounds_set) f.rounds = 1;
    if (!reads_set) f.reads = 20000;
    if (!list_set) f.list_count = 1000;
    if (!replay_set) f.replay_count = 1000;
  }
  if (f.duration_s <= 0 || f.threads.empty() || f.rounds < 1) {
    Die("bad --duration, --rounds or --threads");
  }
  return f;
}

// A KubeVirt VirtualMachine manifest padded to about `bytes`.
std::string VmBody(const std::string& name, size_t bytes) {
  std::string body =
      R"({"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine","metadata":{"name":")" + name +
      R"(","namespace":"bench","labels":{"app":"bench","tier":"edge"}},"spec":{"running":true,)"
      R"("template":{"metadata":{"labels":{"kubevirt.io/vm":")" +
      name +
      R"("}},"spec":{"domain":{"cpu":{"cores":2},"resources":{"requests":{"memory":"2Gi"}},)"
      R"("devices":{"disks":[{"name":"containerdisk","disk":{"bus":"virtio"}},)"
      R"({"name":"cloudinitdisk","disk":{"bus":"virtio"}}],"interfaces":[{"name":"default",)"
      R"("masquerade":{}}]}},"networks":[{"name":"default","pod":{}}],"volumes":[{"name":)"
      R"("containerdisk","containerDisk":{"image":"quay.io/containerdisks/fedora:39"}},)"
      R"({"name":"cloudinitdisk","cloudInitNoCloud":{"userData":"#cloud-config\npassword: )"
      R"(fedora\nchpasswd: { expire: False }\n"}}]}}},"pad":")";
  if (body.size() + 3 < bytes) body.append(bytes - body.size() - 3, 'x');
  body += "\"}";
  return body;
}

store::ObjectKey VmKey(const std::string& name) {
  return store::ObjectKey{"kubevirt.io", "VirtualMachine", "bench", name};
}

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  size_t idx = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(idx), v.end());
  return v[idx];
}

// Runs `threads` workers calling write(thread, i) until `duration` passes. Returns the JSON
// figures; write returns false on failure (counted, not retried).
template <typename WriteFn>
ordered_json RunWriters(int threads, double duration_s, WriteFn write) {
  std::atomic<bool> stop{false};
  std::vector<std::vector<double>> lat(static_cast<size_t>(threads));
  std::vector<uint64_t> done(static_cast<size_t>(threads), 0);
  std::atomic<uint64_t> failures{0};
  std::vector<std::thread> workers;
  const auto start = Clock::now();
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      auto& my_lat = lat[static_cast<size_t>(t)];
      my_lat.reserve(1 << 16);
      for (uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        auto t0 = Clock::now();
        if (!write(t, i)) {
          ++failures;
          continue;
        }
        my_lat.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        ++done[static_cast<size_t>(t)];
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(duration_s));
  stop = true;
  for (auto& w : workers) w.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> all;
  uint64_t total = 0;
  for (int t = 0; t < threads; ++t) {
    total += done[static_cast<size_t>(t)];
    all.insert(all.end(), lat[static_cast<size_t>(t)].begin(), lat[static_cast<size_t>(t)].end());
  }
  ordered_json j;
  j["writes"] = total;
  j["seconds"] = elapsed;
  j["writes_per_s"] = static_cast<double>(total) / elapsed;
  j["p50_ms"] = Percentile(all, 0.50);
  j["p99_ms"] = Percentile(all, 0.99);
  j["failures"] = failures.load();
  return j;
}

// Sums the rounds of one configuration: rate = all writes / all seconds; latency percentiles
// are the worst round's; the per-round rates are kept for inspection.
ordered_json Combine(const std::vector<ordered_json>& runs) {
  uint64_t writes = 0, failures = 0, busy_retries = 0, commits = 0, gather_ns = 0, build_ns = 0,
           commit_ns = 0, release_ns = 0;
  double seconds = 0, p50 = 0, p99 = 0;
  ordered_json per_round = ordered_json::array();
  for (const ordered_json& r : runs) {
    writes += r["writes"].get<uint64_t>();
    failures += r["failures"].get<uint64_t>();
    if (r.contains("busy_retries")) busy_retries += r["busy_retries"].get<uint64_t>();
    seconds += r["seconds"].get<double>();
    p50 = std::max(p50, r["p50_ms"].get<double>());
    p99 = std::max(p99, r["p99_ms"].get<double>());
    if (r.contains("commits")) {
      commits += r["commits"].get<uint64_t>();
      gather_ns += r["gather_ns"].get<uint64_t>();
      build_ns += r["build_ns"].get<uint64_t>();
      commit_ns += r["commit_ns"].get<uint64_t>();
      release_ns += r["release_ns"].get<uint64_t>();
    }
    per_round.push_back(std::round(r["writes_per_s"].get<double>()));
  }
  ordered_json j;
  j["writes_per_s"] = seconds > 0 ? static_cast<double>(writes) / seconds : 0.0;
  j["writes"] = writes;
  j["seconds"] = seconds;
  j["per_round_writes_per_s"] = per_round;
  j["p50_ms_worst_round"] = p50;
  j["p99_ms_worst_round"] = p99;
  j["failures"] = failures;
  if (runs.front().contains("busy_retries")) j["busy_retries"] = busy_retries;
  if (runs.front().contains("commits")) {
    j["commits"] = commits;
    j["writes_per_commit"] =
        commits == 0 ? 0.0 : static_cast<double>(writes) / static_cast<double>(commits);
    // Where the committer's time goes, per commit and as a share of the wall time.
    auto per_commit_ms = [&](uint64_t ns) {
      return commits == 0 ? 0.0 : static_cast<double>(ns) / 1e6 / static_cast<double>(commits);
    };
    j["gather_ms_per_commit"] = per_commit_ms(gather_ns);
    j["build_ms_per_commit"] = per_commit_ms(build_ns);
    j["commit_ms_per_commit"] = per_commit_ms(commit_ns);
    j["release_ms_per_commit"] = per_commit_ms(release_ns);
    j["committer_busy_share"] =
        seconds > 0 ? static_cast<double>(build_ns + commit_ns + release_ns) / 1e9 / seconds : 0.0;
  }
  return j;
}

std::unique_ptr<store::Store> OpenStore(const std::filesystem::path& dir) {
  store::Options o;
  o.dir = dir;
  auto s = store::Store::Open(o);
  if (!s) Die("open store: " + s.error().ToString());
  return std::move(s).value();
}

ordered_json BenchEdgevirtWrites(const Flags& f, const std::filesystem::path& dir, int threads) {
  auto store = OpenStore(dir);
  ordered_json j = RunWriters(threads, f.duration_s, [&](int t, uint64_t i) {
    std::string name = "vm-" + std::to_string(t) + "-" + std::to_string(i);
    auto r = store->Create(VmKey(name), VmBody(name, f.body_bytes));
    if (!r) std::fprintf(stderr, "create: %s\n", r.error().ToString().c_str());
    return r.has_value();
  });
  store::Stats st = store->GetStats();
  j["commits"] = st.commits;
  j["writes_per_commit"] =
      st.commits == 0 ? 0.0 : static_cast<double>(st.writes) / static_cast<double>(st.commits);
  j["gather_ns"] = st.gather_nanos;
  j["build_ns"] = st.build_nanos;
  j["commit_ns"] = st.commit_nanos;
  j["release_ns"] = st.release_nanos;
  return j;
}

void SqliteExec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err != nullptr ? err : "?";
    sqlite3_free(err);
    Die(std::string("sqlite: ") + sql + ": " + msg);
  }
}

// The first column of the first row of `sql`.
std::string SqliteQueryText(sqlite3* db, const char* sql) {
  sqlite3_stmt* st = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &st, nullptr) != SQLITE_OK) {
    Die(std::string("sqlite prepare ") + sql + ": " + sqlite3_errmsg(db));
  }
  std::string out;
  if (sqlite3_step(st) == SQLITE_ROW) {
    const unsigned char* text = sqlite3_column_text(st, 0);
    if (text != nullptr) out = reinterpret_cast<const char*>(text);
  }
  sqlite3_finalize(st);
  return out;
}

sqlite3* SqliteOpen(const std::string& path) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                      nullptr) != SQLITE_OK) {
    Die("sqlite open " + path + ": " + sqlite3_errmsg(db));
  }
  sqlite3_busy_timeout(db, 10000);
  // The reference must really be WAL with a sync per commit: journal_mode answers the mode
  // in effect (it stays "delete" where WAL is impossible), synchronous FULL is 2.
  if (std::string mode = SqliteQueryText(db, "PRAGMA journal_mode=WAL"); mode != "wal") {
    Die("sqlite: journal_mode is " + mode + ", not wal");
  }
  SqliteExec(db, "PRAGMA synchronous=FULL");  // per connection
  if (std::string sync = SqliteQueryText(db, "PRAGMA synchronous"); sync != "2") {
    Die("sqlite: synchronous is " + sync + ", not 2 (FULL)");
  }
  return db;
}

// `serialize`: the writers take one mutex around each INSERT, so they queue on it instead of
// in SQLite's busy handler (which sleeps 1, 2, 5, ... ms between attempts): SQLite's best
// case with many writers, to check that the busy handler does not flatter the ratio.
ordered_json BenchSqliteWrites(const Flags& f, const std::filesystem::path& dir, int threads,
                               bool serialize) {
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "bench.sqlite").string();
  {
    sqlite3* db = SqliteOpen(path);
    SqliteExec(db,
               "CREATE TABLE IF NOT EXISTS objects (grp TEXT NOT NULL, kind TEXT NOT NULL, "
               "ns TEXT NOT NULL, name TEXT NOT NULL, uid TEXT NOT NULL, "
               "created TEXT NOT NULL, data BLOB NOT NULL, PRIMARY KEY (grp, kind, ns, name))");
    sqlite3_close(db);
  }
  std::vector<sqlite3*> conns(static_cast<size_t>(threads));
  std::vector<sqlite3_stmt*> stmts(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    conns[static_cast<size_t>(t)] = SqliteOpen(path);
    if (sqlite3_prepare_v2(conns[static_cast<size_t>(t)],
                           "INSERT INTO objects VALUES ('kubevirt.io', 'VirtualMachine', "
                           "'bench', ?1, ?2, ?3, ?4)",
                           -1, &stmts[static_cast<size_t>(t)], nullptr) != SQLITE_OK) {
      Die("sqlite prepare");
    }
  }
  std::mutex serial;
  std::atomic<uint64_t> busy_retries{0};
  ordered_json j = RunWriters(threads, f.duration_s, [&](int t, uint64_t i) {
    sqlite3_stmt* st = stmts[static_cast<size_t>(t)];
    std::string name = "vm-" + std::to_string(t) + "-" + std::to_string(i);
    std::string body = VmBody(name, f.body_bytes);
    std::string uid = NewUuid();
    std::string created = FormatRfc3339(WallClock::now());
    sqlite3_bind_text(st, 1, name.data(), static_cast<int>(name.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, uid.data(), static_cast<int>(uid.size()), SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, created.data(), static_cast<int>(created.size()), SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 4, body.data(), static_cast<int>(body.size()), SQLITE_TRANSIENT);
    int rc;
    {
      std::unique_lock<std::mutex> lock(serial, std::defer_lock);
      if (serialize) lock.lock();
      // busy_timeout handles most lock waits; retry what still comes back busy.
      while ((rc = sqlite3_step(st)) == SQLITE_BUSY || rc == SQLITE_LOCKED) {
        ++busy_retries;
        sqlite3_reset(st);
      }
      sqlite3_reset(st);
    }
    if (rc != SQLITE_DONE) {
      std::fprintf(stderr, "sqlite insert: %s\n", sqlite3_errstr(rc));
      return false;
    }
    return true;
  });
  for (int t = 0; t < threads; ++t) {
    sqlite3_finalize(stmts[static_cast<size_t>(t)]);
    sqlite3_close(conns[static_cast<size_t>(t)]);
  }
  j["busy_retries"] = busy_retries.load();
  return j;
}

// Fills a fresh store with `count` VMs (in Apply batches, for speed) after one sentinel write,
// so that the events of the fill are exactly (1, count + 1].
void Fill(store::Store& store, const Flags& f, size_t count) {
  if (!store.Create(VmKey("sentinel"), "{}")) Die("sentinel create");
  const size_t kBatch = 500;
  for (size_t done = 0; done < count;) {
    std::vector<store::Mutation> ms;
    for (size_t i = 0; i < kBatch && done < count; ++i, ++done) {
      store::Mutation m;
      m.op = store::Mutation::Op::kCreate;
      std::string name = "fill-" + std::to_string(done);
      m.key = VmKey(name);
      m.data = VmBody(name, f.body_bytes);
      ms.push_back(std::move(m));
    }
    auto r = store.Apply(std::move(ms));
    if (!r) Die("fill: " + r.error().ToString());
  }
}

double MedianOf(std::vector<double> v) { return Percentile(v, 0.5); }

ordered_json BenchReadsListReplay(const Flags& f, const std::filesystem::path& dir) {
  auto store = OpenStore(dir);
  const size_t n = std::max(f.list_count, f.replay_count);
  Fill(*store, f, n);
  ordered_json j;

  // Point reads of random existing keys.
  for (int threads : {1, 4}) {
    std::atomic<uint64_t> misses{0};
    const size_t per_thread = f.reads / static_cast<size_t>(threads);
    auto start = Clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        std::mt19937_64 rng(static_cast<uint64_t>(t) + 1);
        for (size_t i = 0; i < per_thread; ++i) {
          auto r = store->Get(VmKey("fill-" + std::to_string(rng() % n)));
          if (!r) ++misses;
        }
      });
    }
    for (auto& w : workers) w.join();
    double secs = std::chrono::duration<double>(Clock::now() - start).count();
    if (misses > 0) Die("point reads missed");
    j["point_reads_per_s_" + std::to_string(threads) + "_thread" + (threads > 1 ? "s" : "")] =
        static_cast<double>(per_thread * static_cast<size_t>(threads)) / secs;
  }

  // List: every VM (list_count + the sentinel if the fill is larger, so list a limit).
  std::vector<double> list_ms;
  for (int rep = 0; rep < 5; ++rep) {
    auto start = Clock::now();
    auto r = store->List(
        store::ListOptions{"kubevirt.io", "VirtualMachine", "", std::nullopt, f.list_count});
    list_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
    if (!r || r->items.size() != f.list_count) Die("list returned the wrong count");
  }
  j["list_objects"] = f.list_count;
  j["list_ms"] = MedianOf(list_ms);

  // Replay: a watch from RV 1 gets the fill's events from the log.
  std::vector<double> replay_ms;
  for (int rep = 0; rep < 3; ++rep) {
    auto start = Clock::now();
    auto w = store->StartWatch(store::WatchOptions{"kubevirt.io", "VirtualMachine", "", "", 1});
    if (!w) Die("watch: " + w.error().ToString());
    for (size_t i = 0; i < f.replay_count; ++i) {
      // Next, not TryNext: the committer hands a batch to the watch hub just after releasing
      // its writers, so the last Fill batch may reach a new watch live rather than replayed.
      auto e = (*w)->Next(std::chrono::seconds(10));
      if (!e || !e->has_value()) Die("replay ended early");
    }
    replay_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  j["replay_events"] = f.replay_count;
  j["replay_ms"] = MedianOf(replay_ms);
  return j;
}

// Median latency of a 4 KiB overwrite + fdatasync in `dir`: the disk's flush cost, which
// decides most of these figures (on shared virtual disks it drifts by 10x within minutes).
double ProbeFdatasyncMs(const std::filesystem::path& dir) {
  std::string path = (dir / "fsync-probe").string();
  int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return -1;
  char page[4096] = {};
  std::vector<double> ms;
  for (int i = 0; i < 21; ++i) {
    auto t0 = Clock::now();
    if (::pwrite(fd, page, sizeof(page), 0) != sizeof(page) || ::fdatasync(fd) != 0) break;
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  ::close(fd);
  ::unlink(path.c_str());
  return ms.empty() ? -1 : Percentile(ms, 0.5);
}

std::string FsName(const std::filesystem::path& dir) {
  struct statfs s;
  if (statfs(dir.c_str(), &s) != 0) return "unknown";
  switch (static_cast<unsigned long>(s.f_type)) {
    case 0xEF53:
      return "ext4";
    case 0x58465342:
      return "xfs";
    case 0x9123683E:
      return "btrfs";
    case 0x01021994:
      return "tmpfs";
    case 0x794c7630:
      return "overlayfs";
    default: {
      char buf[32];
      std::snprintf(buf, sizeof(buf), "0x%lx", static_cast<unsigned long>(s.f_type));
      return buf;
    }
  }
}

int Main(int argc, char** argv) {
  Flags f = ParseFlags(argc, argv);
  log::Configure(log::Level::kWarning, log::Target::kStderr);
  std::filesystem::path root;
  if (f.dir.empty()) {
    std::string tmpl = "/var/tmp/bench_store.XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp under /var/tmp failed");
    root = tmpl;
  } else {
    root = f.dir;
    std::error_code ec;
    std::filesystem::create_directories(root, ec);
    if (ec) Die("create " + root.string() + ": " + ec.message());
    if (!std::filesystem::is_empty(root)) Die(root.string() + " is not empty");
  }
  const std::string fs = FsName(root);
  if (fs == "tmpfs") std::fprintf(stderr, "bench_store: warning: %s is tmpfs\n", root.c_str());

  ordered_json out;
  out["bench"] = "store";
  struct utsname u;
  if (uname(&u) == 0) out["kernel"] = u.release;
  out["cpus"] = std::thread::hardware_concurrency();
  out["dir"] = root.string();
  out["fs"] = fs;
  out["quick"] = f.quick;
  out["duration_s_per_run"] = f.duration_s;
  out["rounds"] = f.rounds;
  out["body_bytes"] = VmBody("vm-0-0", f.body_bytes).size();
  out["sqlite_version"] = sqlite3_libversion();
  out["fdatasync_ms_at_start"] = ProbeFdatasyncMs(root);

  // Rounds alternate edgevirt and SQLite on fresh files so that both see the same disk
  // weather (a shared host's fsync latency drifts by 10x within minutes); the figures are
  // totals over the rounds.
  ordered_json ev_writes, sq_writes, sq_serial_writes, ratio, ratio_serial;
  for (int threads : f.threads) {
    std::string key = std::to_string(threads);
    std::vector<ordered_json> ev_runs, sq_runs, sq_serial_runs;
    for (int r = 0; r < f.rounds; ++r) {
      std::string suffix = key + "-r" + std::to_string(r);
      std::fprintf(stderr, "bench_store: round %d, edgevirt, %d writers...\n", r, threads);
      ev_runs.push_back(BenchEdgevirtWrites(f, root / ("edgevirt-w" + suffix), threads));
      if (!f.sqlite) continue;
      std::fprintf(stderr, "bench_store: round %d, sqlite, %d writers...\n", r, threads);
      sq_runs.push_back(BenchSqliteWrites(f, root / ("sqlite-w" + suffix), threads, false));
      if (!f.sqlite_serialized) continue;
      std::fprintf(stderr, "bench_store: round %d, sqlite serialized, %d writers...\n", r, threads);
      sq_serial_runs.push_back(BenchSqliteWrites(f, root / ("sqlite-s" + suffix), threads, true));
    }
    ev_writes[key] = Combine(ev_runs);
    if (!f.sqlite) continue;
    sq_writes[key] = Combine(sq_runs);
    if (!sq_serial_runs.empty()) sq_serial_writes[key] = Combine(sq_serial_runs);
    double sq = sq_writes[key]["writes_per_s"].get<double>();
    ratio[key] = sq > 0 ? ev_writes[key]["writes_per_s"].get<double>() / sq : 0.0;
    if (!sq_serial_runs.empty()) {
      double sqs = sq_serial_writes[key]["writes_per_s"].get<double>();
      ratio_serial[key] = sqs > 0 ? ev_writes[key]["writes_per_s"].get<double>() / sqs : 0.0;
    }
  }
  std::fprintf(stderr, "bench_store: reads, list, replay...\n");
  ordered_json edgevirt;
  edgevirt["writes"] = ev_writes;
  edgevirt.update(BenchReadsListReplay(f, root / "edgevirt-read"));
  out["edgevirt"] = edgevirt;
  out["fdatasync_ms_at_end"] = ProbeFdatasyncMs(root);
  if (f.sqlite) {
    out["sqlite"] = ordered_json{{"writes", sq_writes}};
    if (f.sqlite_serialized) out["sqlite"]["writes_serialized_by_app_mutex"] = sq_serial_writes;
    out["ratio_edgevirt_over_sqlite"] = ratio;
    if (f.sqlite_serialized) out["ratio_edgevirt_over_sqlite_serialized"] = ratio_serial;
  }
  if (ratio.contains("16")) {
    out["target_ratio_16_writers"] = 5;
    out["target_met"] = ratio["16"].get<double>() >= 5.0;
  }
  std::cout << out.dump(2) << std::endl;

  if (!f.keep) {
    // A --dir given by the user (checked empty at start) is emptied, not removed.
    std::error_code ec;
    if (f.dir.empty()) {
      std::filesystem::remove_all(root, ec);
    } else {
      for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
        std::filesystem::remove_all(entry.path(), ec);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace edgevirt::bench

int main(int argc, char** argv) {
  try {
    return edgevirt::bench::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_store: %s\n", e.what());
    return 1;
  }
}
