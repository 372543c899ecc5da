// bench_devices: latency of one device rule change (a disk hotplug or unplug) on a real cgroup
// that already has N rules, edgevirt's way against the way runc (opencontainers/cgroups
// devicefilter) and KubeVirt through it do it. Prints one JSON object on stdout; progress and
// errors go to stderr.
//
//   bench_devices [--iterations N] [--rules 20,100] [--warmup N] [--quick]
//
// edgevirt: cgroup::DeviceFilter on the cgroup, the hotplug is Allow() = one
// bpf_map_update_elem, the unplug Remove() = one bpf_map_delete_elem.
// runc-style: the allow-list is compiled into a linear if-chain program (per rule: compare
// type, access, major, minor, allow; final deny), attached with BPF_F_ALLOW_MULTI; each change
// generates the whole program for the new list, loads it (BPF_PROG_LOAD: verifier + JIT) and
// atomically replaces the attached one (BPF_PROG_ATTACH with BPF_F_REPLACE), then closes the
// old program. That is the least any whole-program rebuild costs: runc also queries the
// attached programs (BPF_PROG_QUERY + BPF_PROG_GET_FD_BY_ID) on each update, which is not timed
// here, so the ratio is a lower bound.
//
// Each iteration is one add and one remove of the same block device rule; both are samples.
// Both filters are checked to enforce (a child in each cgroup opens /dev/null, and /dev/kmsg,
// which no rule allows, fails with EPERM) and the runc-style cgroup to hold exactly one program
// at the end (replace, not append).
//
// Needs root, the cgroup2 mount and bpffs (a private one in a mount namespace of this process
// when /sys/fs/bpf is not one). Everything made is removed at exit.
#include <bpf/bpf.h>
#include <fcntl.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "cgroup/bpf_insn.h"
#include "cgroup/cgroup.h"
#include "common/fd.h"
#include "tests/support/bpffs.h"

namespace edgevirt::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using cgroup::DeviceRule;
using cgroup::DeviceType;
using nlohmann::ordered_json;

struct Flags {
  int iterations = 1000;
  int warmup = 50;
  std::vector<int> rules = {20, 100};
};

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "bench_devices: %s\n", message.c_str());
  std::exit(1);
}

void Usage() {
  std::fprintf(stderr,
               "usage: bench_devices [--iterations N] [--rules 20,100] [--warmup N] [--quick]\n");
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  bool iterations_set = false, warmup_set = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        Usage();
        Die("missing value for " + a);
      }
      return argv[++i];
    };
    if (a == "--iterations") {
      f.iterations = std::stoi(value());
      iterations_set = true;
    } else if (a == "--warmup") {
      f.warmup = std::stoi(value());
      warmup_set = true;
    } else if (a == "--rules") {
      f.rules.clear();
      std::string list = value();
      for (size_t pos = 0; pos < list.size();) {
        size_t comma = list.find(',', pos);
        if (comma == std::string::npos) comma = list.size();
        f.rules.push_back(std::stoi(list.substr(pos, comma - pos)));
        pos = comma + 1;
      }
    } else if (a == "--quick") {
      if (!iterations_set) f.iterations = 100;
      if (!warmup_set) f.warmup = 10;
    } else {
      Usage();
      Die("unknown flag " + a);
    }
  }
  if (f.iterations < 1 || f.warmup < 0 || f.rules.empty()) Die("bad flags");
  for (int n : f.rules) {
    if (n < 0 || n > 900) Die("--rules: 0..900 extra rules");
  }
  return f;
}

template <typename T>
T Check(Result<T> r, const std::string& what) {
  if (!r) Die(what + ": " + r.error().ToString());
  return std::move(r).value();
}
void Check(Status s, const std::string& what) {
  if (!s) Die(what + ": " + s.error().ToString());
}

double Us(Clock::duration d) { return std::chrono::duration<double, std::micro>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  size_t idx = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(idx, v.size() - 1)];
}

ordered_json Summary(const std::vector<double>& us) {
  double mean = std::accumulate(us.begin(), us.end(), 0.0) / static_cast<double>(us.size());
  auto round2 = [](double x) { return std::round(x * 100) / 100; };
  return ordered_json{{"samples", us.size()},
                      {"p50_us", round2(Percentile(us, 0.50))},
                      {"p99_us", round2(Percentile(us, 0.99))},
                      {"mean_us", round2(mean)},
                      {"min_us", round2(*std::min_element(us.begin(), us.end()))},
                      {"max_us", round2(*std::max_element(us.begin(), us.end()))}};
}

// The allow-list as runc's devicefilter compiles it: a linear chain, one block per rule.
std::vector<bpf_insn> IfChainProgram(const std::vector<DeviceRule>& rules) {
  using namespace cgroup::bpf;  // NOLINT(build/namespaces)
  std::vector<bpf_insn> p;
  p.push_back(LoadU32(BPF_REG_2, BPF_REG_1, kCtxAccessType));
  p.push_back(Alu32Imm(BPF_AND, BPF_REG_2, 0xffff));  // r2 = type
  p.push_back(LoadU32(BPF_REG_3, BPF_REG_1, kCtxAccessType));
  p.push_back(Alu32Imm(BPF_RSH, BPF_REG_3, 16));  // r3 = requested access
  p.push_back(LoadU32(BPF_REG_4, BPF_REG_1, kCtxMajor));
  p.push_back(LoadU32(BPF_REG_5, BPF_REG_1, kCtxMinor));
  for (const auto& r : rules) {
    bool check_access = r.access != cgroup::kAccessAll;
    bool check_minor = r.minor != cgroup::kAnyMinor;
    int16_t block = static_cast<int16_t>(1 + (check_access ? 3 : 0) + 1 + (check_minor ? 1 : 0));
    int16_t left = block;  // instructions of this block's tests still ahead, incl. this one
    p.push_back(JmpImm(BPF_JNE, BPF_REG_2, static_cast<int32_t>(r.type), --left + 2));
    if (check_access) {  // requested bits must be a subset of the rule's
      p.push_back(Alu32Reg(BPF_MOV, BPF_REG_1, BPF_REG_3));
      --left;
      p.push_back(Alu32Imm(BPF_AND, BPF_REG_1, static_cast<int32_t>(r.access)));
      --left;
      p.push_back(JmpReg(BPF_JNE, BPF_REG_1, BPF_REG_3, --left + 2));
    }
    p.push_back(JmpImm(BPF_JNE, BPF_REG_4, static_cast<int32_t>(r.major), --left + 2));
    if (check_minor) {
      p.push_back(JmpImm(BPF_JNE, BPF_REG_5, static_cast<int32_t>(r.minor), --left + 2));
    }
    p.push_back(Mov64Imm(BPF_REG_0, 1));
    p.push_back(Exit());
  }
  p.push_back(Mov64Imm(BPF_REG_0, 0));
  p.push_back(Exit());
  return p;
}

Result<UniqueFd> LoadIfChain(const std::vector<bpf_insn>& insns) {
  LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_CGROUP_DEVICE);
  int fd = bpf_prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, "runc_style", "GPL", insns.data(),
                         insns.size(), &opts);
  if (fd >= 0) return UniqueFd(fd);
  int err = errno;
  std::string log(1 << 20, '\0');
  opts.log_buf = log.data();
  opts.log_size = static_cast<uint32_t>(log.size());
  opts.log_level = 1;
  (void)bpf_prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, "runc_style", "GPL", insns.data(), insns.size(),
                      &opts);
  log.resize(std::strlen(log.c_str()));
  if (log.size() > 2000) log = log.substr(log.size() - 2000);
  return ErrnoError("load if-chain program: " + log, err);
}

// A child joins `cgroup_dir` and opens `path`: 0 or its errno.
int OpenInCgroup(const fs::path& cgroup_dir, const char* path) {
  pid_t pid = ::fork();
  if (pid < 0) Die("fork");
  if (pid == 0) {
    if (!cgroup::MovePid(cgroup_dir, ::getpid())) ::_exit(255);
    int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    ::_exit(fd >= 0 ? 0 : errno);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 254;
}

// /dev/null must open and /dev/kmsg (c 1:11, in no rule) must not.
bool Enforces(const fs::path& cgroup_dir) {
  bool denied = !fs::exists("/dev/kmsg") || OpenInCgroup(cgroup_dir, "/dev/kmsg") == EPERM;
  return OpenInCgroup(cgroup_dir, "/dev/null") == 0 && denied;
}

// Removes what the bench made, whatever happens.
struct Cleanup {
  fs::path cgroup_root, pin_root;
  ~Cleanup() {
    if (!cgroup_root.empty()) {
      (void)cgroup::KillAll(cgroup_root);
      (void)cgroup::RemoveCgroup(cgroup_root);
    }
    if (!pin_root.empty()) {
      if (auto dirs = cgroup::ListPinDirs(pin_root)) {
        for (const auto& d : *dirs) (void)cgroup::RemovePins(pin_root / d);
      }
      ::rmdir(pin_root.c_str());
    }
  }
};

ordered_json RunCase(const Flags& flags, int extra, const fs::path& cgroup_root,
                     const fs::path& pin_root) {
  std::vector<DeviceRule> rules = cgroup::BaseRules();
  // Disks already granted: block devices of the extended major (259, NVMe and partitions).
  for (int i = 0; i < extra; ++i) {
    rules.push_back(
        {DeviceType::kBlock, 259, static_cast<uint32_t>(i), cgroup::kRead | cgroup::kWrite});
  }
  const DeviceRule hot{DeviceType::kBlock, 8, 16, cgroup::kRead | cgroup::kWrite};  // sdb
  std::vector<DeviceRule> with_hot = rules;
  with_hot.push_back(hot);
  const int total = flags.warmup + flags.iterations;
  ordered_json out{{"extra_rules", extra}, {"rules", rules.size()}};

  // edgevirt: map update / delete.
  fs::path ev_cg = cgroup_root / ("edgevirt-" + std::to_string(extra));
  Check(cgroup::CreateCgroup(ev_cg), "create cgroup");
  {
    auto filter =
        Check(cgroup::DeviceFilter::Create(ev_cg, pin_root / std::to_string(extra), rules),
              "create device filter");
    std::vector<double> samples;
    samples.reserve(2 * flags.iterations);
    for (int i = 0; i < total; ++i) {
      auto t0 = Clock::now();
      Check(filter->Allow(hot), "allow");
      auto t1 = Clock::now();
      Check(filter->Remove(hot), "remove");
      auto t2 = Clock::now();
      if (i >= flags.warmup) {
        samples.push_back(Us(t1 - t0));
        samples.push_back(Us(t2 - t1));
      }
    }
    ordered_json ev = Summary(samples);
    ev["op"] = "bpf_map_update_elem / bpf_map_delete_elem";
    ev["enforces"] = Enforces(ev_cg);
    out["edgevirt"] = ev;
  }

  // runc-style: generate, load, replace, per change.
  fs::path runc_cg = cgroup_root / ("runc-" + std::to_string(extra));
  Check(cgroup::CreateCgroup(runc_cg), "create cgroup");
  UniqueFd cg_fd(::open(runc_cg.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cg_fd) Die("open " + runc_cg.string());
  UniqueFd attached = Check(LoadIfChain(IfChainProgram(rules)), "load");
  {
    LIBBPF_OPTS(bpf_prog_attach_opts, opts, .flags = BPF_F_ALLOW_MULTI);
    if (bpf_prog_attach_opts(attached.get(), cg_fd.get(), BPF_CGROUP_DEVICE, &opts) != 0) {
      Die("attach: " + ErrnoError("", errno).message);
    }
  }
  std::vector<double> samples, gen_us, load_us, replace_us;
  size_t insns_with_hot = 0;
  auto change = [&](const std::vector<DeviceRule>& list, bool record) {
    auto t0 = Clock::now();
    std::vector<bpf_insn> prog = IfChainProgram(list);
    auto t1 = Clock::now();
    UniqueFd next = Check(LoadIfChain(prog), "load");
    auto t2 = Clock::now();
    LIBBPF_OPTS(bpf_prog_attach_opts, opts, .flags = BPF_F_ALLOW_MULTI | BPF_F_REPLACE,
                .replace_prog_fd = attached.get());
    if (bpf_prog_attach_opts(next.get(), cg_fd.get(), BPF_CGROUP_DEVICE, &opts) != 0) {
      Die("replace: " + ErrnoError("", errno).message);
    }
    attached = std::move(next);  // closes the old program
    auto t3 = Clock::now();
    if (record) {
      samples.push_back(Us(t3 - t0));
      gen_us.push_back(Us(t1 - t0));
      load_us.push_back(Us(t2 - t1));
      replace_us.push_back(Us(t3 - t2));
      insns_with_hot = std::max(insns_with_hot, prog.size());
    }
  };
  for (int i = 0; i < total; ++i) {
    change(with_hot, i >= flags.warmup);
    change(rules, i >= flags.warmup);
  }
  uint32_t ids[64];
  uint32_t count = 64, attach_flags = 0;
  if (bpf_prog_query(cg_fd.get(), BPF_CGROUP_DEVICE, 0, &attach_flags, ids, &count) != 0) {
    Die("query: " + ErrnoError("", errno).message);
  }
  ordered_json rs = Summary(samples);
  rs["op"] = "generate + BPF_PROG_LOAD + BPF_PROG_ATTACH(BPF_F_REPLACE)";
  rs["program_insns"] = insns_with_hot;
  auto mean = [](const std::vector<double>& v) {
    return std::round(std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size()) *
                      100) /
           100;
  };
  rs["phase_mean_us"] = {
      {"generate", mean(gen_us)}, {"load", mean(load_us)}, {"replace", mean(replace_us)}};
  rs["attached_programs"] = count;
  rs["enforces"] = Enforces(runc_cg);
  out["runc_style"] = rs;
  (void)bpf_prog_detach2(attached.get(), cg_fd.get(), BPF_CGROUP_DEVICE);

  double ratio_p50 =
      rs["p50_us"].get<double>() / std::max(out["edgevirt"]["p50_us"].get<double>(), 0.01);
  double ratio_mean =
      rs["mean_us"].get<double>() / std::max(out["edgevirt"]["mean_us"].get<double>(), 0.01);
  out["ratio_p50"] = std::round(ratio_p50 * 10) / 10;
  out["ratio_mean"] = std::round(ratio_mean * 10) / 10;
  return out;
}

int Main(int argc, char** argv) {
  Flags flags = ParseFlags(argc, argv);
  if (::geteuid() != 0) Die("needs root (cgroups, BPF)");
  std::string bpffs = Check(testing::EnsureBpffs(), "bpffs");
  fs::path mount = Check(cgroup::FindCgroup2Mount(), "cgroup2 mount");
  std::string name = "edgevirt-bench-" + std::to_string(::getpid());
  Cleanup cleanup;
  cleanup.cgroup_root = mount / name;
  Check(cgroup::CreateCgroup(cleanup.cgroup_root), "create cgroup");
  cleanup.pin_root = fs::path(testing::kBpffsPath) / name;

  utsname uts{};
  ::uname(&uts);
  ordered_json out{{"bench", "devices"},
                   {"host",
                    {{"kernel", uts.release},
                     {"cpus", std::thread::hardware_concurrency()},
                     {"cgroup2", mount.string()},
                     {"bpffs", bpffs}}},
                   {"iterations", flags.iterations},
                   {"warmup", flags.warmup}};
  ordered_json cases = ordered_json::array();
  double min_ratio = 1e18;
  for (int extra : flags.rules) {
    std::fprintf(stderr, "bench_devices: %d extra rules...\n", extra);
    auto c = RunCase(flags, extra, cleanup.cgroup_root, cleanup.pin_root);
    min_ratio = std::min(min_ratio, c["ratio_p50"].get<double>());
    cases.push_back(std::move(c));
  }
  out["cases"] = cases;
  out["min_ratio_p50"] = min_ratio;
  out["targets"] = {{"map_update_10x_faster", min_ratio >= 10}};
  std::cout << out.dump() << std::endl;
  return 0;
}

}  // namespace
}  // namespace edgevirt::bench

int main(int argc, char** argv) {
  try {
    return edgevirt::bench::Main(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_devices: %s\n", e.what());
    return 1;
  }
}
