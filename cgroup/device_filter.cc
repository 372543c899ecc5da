#include "cgroup/device_filter.h"

#include <bpf/bpf.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <tuple>

#include "cgroup/bpf_insn.h"
#include "cgroup/cgroup.h"

namespace edgevirt::cgroup {
namespace {

namespace fs = std::filesystem;

// The map key; the type is part of it so that a block and a character device with the same
// numbers never share an entry (libvirt's u64 major:minor key does not have that property).
struct Key {
  uint32_t type;
  uint32_t major;
  uint32_t minor;
};
static_assert(sizeof(Key) == 12);

using KeyTuple = std::tuple<uint32_t, uint32_t, uint32_t>;
KeyTuple Tuple(const Key& k) { return {k.type, k.major, k.minor}; }

Key KeyOf(const DeviceRule& r) { return Key{static_cast<uint32_t>(r.type), r.major, r.minor}; }

constexpr char kProgName[] = "ev_devices";
constexpr char kMapName[] = "ev_devices";
constexpr char kLicense[] = "GPL";

Status CheckRule(const DeviceRule& r) {
  if (r.type != DeviceType::kBlock && r.type != DeviceType::kChar) {
    return MakeError(Code::kInvalid,
                     "device rule: bad type " + std::to_string(static_cast<uint32_t>(r.type)));
  }
  if (r.access == 0 || (r.access & ~kAccessAll) != 0) {
    return MakeError(Code::kInvalid,
                     "device rule " + RuleKey(r) + ": bad access " + std::to_string(r.access));
  }
  return Ok();
}

// The program (33 instructions). In C:
//
//   u32 type = ctx->access_type & 0xffff, acc = ctx->access_type >> 16;
//   struct key k = {type, ctx->major, ctx->minor};
//   u32 *v = bpf_map_lookup_elem(&map, &k);
//   if (v && (*v & acc) == acc) return 1;
//   k.minor = 0xffffffff;
//   v = bpf_map_lookup_elem(&map, &k);
//   if (v && (*v & acc) == acc) return 1;
//   return 0;
//
// The key lives on the stack at r10-16; acc is kept in r7 because a helper call clobbers r1-r5.
std::vector<bpf_insn> DeviceProgram(int map_fd) {
  using namespace bpf;  // NOLINT(build/namespaces)
  std::vector<bpf_insn> p;
  p.push_back(LoadU32(BPF_REG_2, BPF_REG_1, kCtxAccessType));
  p.push_back(Alu32Reg(BPF_MOV, BPF_REG_3, BPF_REG_2));
  p.push_back(Alu32Imm(BPF_AND, BPF_REG_3, 0xffff));  // r3 = type
  p.push_back(Alu32Imm(BPF_RSH, BPF_REG_2, 16));
  p.push_back(Mov64Reg(BPF_REG_7, BPF_REG_2));  // r7 = acc
  p.push_back(LoadU32(BPF_REG_4, BPF_REG_1, kCtxMajor));
  p.push_back(LoadU32(BPF_REG_5, BPF_REG_1, kCtxMinor));
  p.push_back(StoreU32(BPF_REG_10, -16, BPF_REG_3));
  p.push_back(StoreU32(BPF_REG_10, -12, BPF_REG_4));
  p.push_back(StoreU32(BPF_REG_10, -8, BPF_REG_5));
  std::vector<size_t> to_allow, to_next;
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) {
      for (size_t at : to_next) p[at].off = static_cast<int16_t>(p.size() - at - 1);
      to_next.clear();
      p.push_back(StoreU32Imm(BPF_REG_10, -8, -1));  // k.minor = kAnyMinor
    }
    p.push_back(LoadMapFd0(BPF_REG_1, map_fd));
    p.push_back(LoadMapFd1());
    p.push_back(Mov64Reg(BPF_REG_2, BPF_REG_10));
    p.push_back(Alu64Imm(BPF_ADD, BPF_REG_2, -16));
    p.push_back(Call(BPF_FUNC_map_lookup_elem));
    to_next.push_back(p.size());
    p.push_back(JmpImm(BPF_JEQ, BPF_REG_0, 0, 0));  // no entry: next
    p.push_back(LoadU32(BPF_REG_1, BPF_REG_0, 0));
    p.push_back(Alu32Reg(BPF_AND, BPF_REG_1, BPF_REG_7));
    to_allow.push_back(p.size());
    p.push_back(JmpReg(BPF_JEQ, BPF_REG_1, BPF_REG_7, 0));  // all asked bits granted: allow
  }
  for (size_t at : to_next) p[at].off = static_cast<int16_t>(p.size() - at - 1);
  p.push_back(Mov64Imm(BPF_REG_0, 0));
  p.push_back(Exit());
  for (size_t at : to_allow) p[at].off = static_cast<int16_t>(p.size() - at - 1);
  p.push_back(Mov64Imm(BPF_REG_0, 1));
  p.push_back(Exit());
  return p;
}

// Kernels before 5.11 charge BPF maps and programs to RLIMIT_MEMLOCK (later ones to the
// memory cgroup); the default 8 MiB would cap how many VMs get a filter. Best effort: without
// CAP_SYS_RESOURCE the limit stays, and a load fails with EPERM, reported there.
void RaiseMemlock() {
  rlimit unlimited{RLIM_INFINITY, RLIM_INFINITY};
  ::setrlimit(RLIMIT_MEMLOCK, &unlimited);
}

Result<UniqueFd> LoadProgram(int map_fd) {
  std::vector<bpf_insn> insns = DeviceProgram(map_fd);
  LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = BPF_CGROUP_DEVICE);
  int fd = bpf_prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, kProgName, kLicense, insns.data(),
                         insns.size(), &opts);
  if (fd >= 0) return UniqueFd(fd);
  int err = errno;
  // Verifier rejections are opaque without the log; retry with one (crun does the same).
  std::string log(256 * 1024, '\0');
  opts.log_buf = log.data();
  opts.log_size = static_cast<uint32_t>(log.size());
  opts.log_level = 1;
  fd = bpf_prog_load(BPF_PROG_TYPE_CGROUP_DEVICE, kProgName, kLicense, insns.data(), insns.size(),
                     &opts);
  if (fd >= 0) return UniqueFd(fd);
  log.resize(std::strlen(log.c_str()));
  if (log.size() > 4096) log = "..." + log.substr(log.size() - 4096);
  Error e = ErrnoError("load device program", err);
  if (!log.empty()) e.message += "; verifier log:\n" + log;
  return e;
}

Result<bpf_link_info> LinkInfo(int fd) {
  bpf_link_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) return ErrnoError("link info", errno);
  return info;
}

Result<bpf_map_info> MapInfo(int fd) {
  bpf_map_info info{};
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) return ErrnoError("map info", errno);
  return info;
}

// The program's type and the ids of the maps it uses.
Result<std::pair<bpf_prog_info, std::vector<uint32_t>>> ProgInfo(int fd) {
  std::vector<uint32_t> map_ids(16);
  bpf_prog_info info{};
  info.nr_map_ids = static_cast<uint32_t>(map_ids.size());
  info.map_ids = reinterpret_cast<uint64_t>(map_ids.data());
  uint32_t len = sizeof(info);
  if (bpf_obj_get_info_by_fd(fd, &info, &len) != 0) return ErrnoError("program info", errno);
  map_ids.resize(std::min<size_t>(info.nr_map_ids, map_ids.size()));
  return std::make_pair(info, map_ids);
}

Status CheckMapLayout(const bpf_map_info& info, const fs::path& pin) {
  if (info.type != BPF_MAP_TYPE_HASH || info.key_size != sizeof(Key) ||
      info.value_size != sizeof(uint32_t)) {
    return MakeError(Code::kConflict, pin.string() + " is not a device rule map (type " +
                                          std::to_string(info.type) + ", key " +
                                          std::to_string(info.key_size) + " bytes)");
  }
  return Ok();
}

bool Exists(const fs::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0;
}

// Unpins what Create pinned when a later step fails.
class PinGuard {
 public:
  void Add(fs::path p) { paths_.push_back(std::move(p)); }
  void Dismiss() { paths_.clear(); }
  ~PinGuard() {
    for (const auto& p : paths_) ::unlink(p.c_str());
  }

 private:
  std::vector<fs::path> paths_;
};

}  // namespace

std::string RuleKey(const DeviceRule& r) {
  std::string out = r.type == DeviceType::kBlock ? "b:" : r.type == DeviceType::kChar ? "c:" : "?:";
  out += std::to_string(r.major) + ":";
  out += r.minor == kAnyMinor ? "*" : std::to_string(r.minor);
  return out;
}

Result<DeviceRule> ParseRuleKey(std::string_view key, uint32_t access) {
  auto bad = [&] {
    return MakeError(Code::kInvalid, "bad device rule key \"" + std::string(key) + "\"");
  };
  if (key.size() < 5 || key[1] != ':') return bad();
  DeviceRule r{};
  if (key[0] == 'b') {
    r.type = DeviceType::kBlock;
  } else if (key[0] == 'c') {
    r.type = DeviceType::kChar;
  } else {
    return bad();
  }
  std::string_view rest = key.substr(2);
  size_t colon = rest.find(':');
  if (colon == std::string_view::npos) return bad();
  auto num = [](std::string_view s, uint32_t& out) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    return !s.empty() && ec == std::errc() && p == s.data() + s.size();
  };
  if (!num(rest.substr(0, colon), r.major)) return bad();
  std::string_view minor = rest.substr(colon + 1);
  if (minor == "*") {
    r.minor = kAnyMinor;
  } else if (!num(minor, r.minor) || r.minor == kAnyMinor) {
    return bad();
  }
  r.access = access;
  RETURN_IF_ERROR(CheckRule(r));
  return r;
}

Result<DeviceRule> RuleForPath(const std::string& dev_path, uint32_t access) {
  struct stat st {};
  if (::stat(dev_path.c_str(), &st) != 0) return ErrnoError("device " + dev_path, errno);
  DeviceRule r{};
  if (S_ISBLK(st.st_mode)) {
    r.type = DeviceType::kBlock;
  } else if (S_ISCHR(st.st_mode)) {
    r.type = DeviceType::kChar;
  } else {
    return MakeError(Code::kInvalid, dev_path + " is not a block or character device");
  }
  r.major = major(st.st_rdev);
  r.minor = minor(st.st_rdev);
  r.access = access;
  RETURN_IF_ERROR(CheckRule(r));
  return r;
}

std::string AccessString(uint32_t access) {
  std::string s;
  if (access & kRead) s += 'r';
  if (access & kWrite) s += 'w';
  if (access & kMknod) s += 'm';
  return s;
}

std::vector<DeviceRule> BaseRules() {
  constexpr auto c = DeviceType::kChar;
  constexpr uint32_t rw = kRead | kWrite;
  std::vector<DeviceRule> rules = {
      {c, 1, 3, kAccessAll},  // /dev/null
      {c, 1, 5, kAccessAll},  // /dev/zero
      {c, 1, 7, kAccessAll},  // /dev/full
      {c, 1, 8, kAccessAll},  // /dev/random
      {c, 1, 9, kAccessAll},  // /dev/urandom
      {c, 5, 0, kAccessAll},  // /dev/tty
      {c, 5, 2, kAccessAll},  // /dev/ptmx
  };
  for (uint32_t major = 136; major <= 143; ++major) {  // /dev/pts/*: Unix98 PTY slaves
    rules.push_back({c, major, kAnyMinor, kAccessAll});
  }
  rules.push_back({c, 10, 232, rw});  // /dev/kvm
  rules.push_back({c, 10, 200, rw});  // /dev/net/tun
  rules.push_back({c, 10, 238, rw});  // /dev/vhost-net
  rules.push_back({c, 10, 241, rw});  // /dev/vhost-vsock
  return rules;
}

DeviceFilter::~DeviceFilter() = default;

Result<std::unique_ptr<DeviceFilter>> DeviceFilter::Create(const fs::path& cgroup_dir,
                                                           const fs::path& pin_dir,
                                                           const std::vector<DeviceRule>& rules) {
  const std::string context = "device filter for " + cgroup_dir.string();
  for (const auto& r : rules) RETURN_IF_ERROR(CheckRule(r));
  if (rules.size() > kMaxRules) {
    return MakeError(Code::kTooLarge, context + ": " + std::to_string(rules.size()) + " rules");
  }
  const fs::path map_pin = pin_dir / "map", link_pin = pin_dir / "link";
  if (Exists(map_pin) || Exists(link_pin)) {
    return MakeError(Code::kAlreadyExists, context + ": pins exist in " + pin_dir.string());
  }
  ASSIGN_OR_RETURN(uint64_t cgroup_id, CgroupId(cgroup_dir));
  UniqueFd cgroup_fd(::open(cgroup_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!cgroup_fd) return ErrnoError(context + ": open cgroup", errno);

  std::error_code ec;
  // The nearest existing ancestor decides where the new directories go. Checked before mkdir,
  // so that a pin dir on another file system is not created and left behind.
  for (fs::path p = pin_dir; !p.empty() && p != p.root_path(); p = p.parent_path()) {
    if (!Exists(p)) continue;
    ASSIGN_OR_RETURN(bool on_bpffs, IsBpffs(p));
    if (!on_bpffs) {
      return MakeError(Code::kInvalid, context + ": " + pin_dir.string() + " is not on bpffs (" +
                                           p.string() + " is not)");
    }
    break;
  }
  fs::create_directories(pin_dir, ec);
  if (ec) {
    return MakeError(Code::kInternal,
                     context + ": create " + pin_dir.string() + ": " + ec.message());
  }

  RaiseMemlock();
  auto filter = std::unique_ptr<DeviceFilter>(new DeviceFilter());
  filter->pin_dir_ = pin_dir;
  filter->cgroup_id_ = cgroup_id;
  int map_fd = bpf_map_create(BPF_MAP_TYPE_HASH, kMapName, sizeof(Key), sizeof(uint32_t), kMaxRules,
                              nullptr);
  if (map_fd < 0) return ErrnoError(context + ": create map", errno);
  filter->map_fd_.reset(map_fd);
  for (const auto& r : rules) RETURN_IF_ERROR(filter->Allow(r));

  auto prog = LoadProgram(filter->map_fd_.get());
  if (!prog) return std::move(prog).error().Wrap(context);

  PinGuard guard;
  if (bpf_obj_pin(filter->map_fd_.get(), map_pin.c_str()) != 0) {
    return ErrnoError(context + ": pin " + map_pin.string(), errno);
  }
  guard.Add(map_pin);
  int link_fd = bpf_link_create(prog->get(), cgroup_fd.get(), BPF_CGROUP_DEVICE, nullptr);
  if (link_fd < 0) return ErrnoError(context + ": attach (link create)", errno);
  filter->link_fd_.reset(link_fd);
  if (bpf_obj_pin(filter->link_fd_.get(), link_pin.c_str()) != 0) {
    return ErrnoError(context + ": pin " + link_pin.string(), errno);
  }
  guard.Add(link_pin);

  ASSIGN_OR_RETURN(auto map_info, MapInfo(filter->map_fd_.get()));
  ASSIGN_OR_RETURN(auto prog_info, ProgInfo(prog->get()));
  ASSIGN_OR_RETURN(auto link_info, LinkInfo(filter->link_fd_.get()));
  filter->map_id_ = map_info.id;
  filter->prog_id_ = prog_info.first.id;
  filter->link_id_ = link_info.id;

  // An attach that "succeeds" without the program in the cgroup's list has happened elsewhere
  // (cilium/ebpf #1994, a replace that appended): check the kernel's view once.
  std::vector<uint32_t> ids(64);
  uint32_t count = static_cast<uint32_t>(ids.size());
  uint32_t attach_flags = 0;
  if (bpf_prog_query(cgroup_fd.get(), BPF_CGROUP_DEVICE, 0, &attach_flags, ids.data(), &count) !=
      0) {
    return ErrnoError(context + ": query attached programs", errno);
  }
  ids.resize(std::min<size_t>(count, ids.size()));
  if (std::find(ids.begin(), ids.end(), filter->prog_id_) == ids.end()) {
    return MakeError(Code::kInternal, context + ": program " + std::to_string(filter->prog_id_) +
                                          " not attached after link create");
  }
  guard.Dismiss();
  return filter;
}

Result<std::unique_ptr<DeviceFilter>> DeviceFilter::Open(const fs::path& cgroup_dir,
                                                         const fs::path& pin_dir) {
  const std::string context = "device filter in " + pin_dir.string();
  const fs::path map_pin = pin_dir / "map", link_pin = pin_dir / "link";
  bool have_map = Exists(map_pin), have_link = Exists(link_pin);
  if (!have_map && !have_link) return MakeError(Code::kNotFound, context + ": no pins");
  if (!have_map || !have_link) {
    return MakeError(Code::kConflict,
                     context + ": stale: only the " + (have_map ? "map" : "link") + " is pinned");
  }
  auto filter = std::unique_ptr<DeviceFilter>(new DeviceFilter());
  filter->pin_dir_ = pin_dir;
  int map_fd = bpf_obj_get(map_pin.c_str());
  if (map_fd < 0) return ErrnoError(context + ": open map pin", errno);
  filter->map_fd_.reset(map_fd);
  int link_fd = bpf_obj_get(link_pin.c_str());
  if (link_fd < 0) return ErrnoError(context + ": open link pin", errno);
  filter->link_fd_.reset(link_fd);

  ASSIGN_OR_RETURN(auto map_info, MapInfo(filter->map_fd_.get()));
  RETURN_IF_ERROR(CheckMapLayout(map_info, map_pin));
  ASSIGN_OR_RETURN(auto link_info, LinkInfo(filter->link_fd_.get()));
  if (link_info.type != BPF_LINK_TYPE_CGROUP || link_info.cgroup.attach_type != BPF_CGROUP_DEVICE) {
    return MakeError(Code::kConflict, context + ": the link is not a cgroup device link (type " +
                                          std::to_string(link_info.type) + ")");
  }
  auto cgroup_id = CgroupId(cgroup_dir);
  if (!cgroup_id) {
    return MakeError(Code::kConflict,
                     context + ": stale: cgroup gone: " + cgroup_id.error().message);
  }
  // A removed cgroup's link is detached and reports id 0; a recreated cgroup has a new id.
  if (link_info.cgroup.cgroup_id != *cgroup_id) {
    return MakeError(Code::kConflict, context + ": stale: the link is attached to cgroup id " +
                                          std::to_string(link_info.cgroup.cgroup_id) + ", " +
                                          cgroup_dir.string() + " is cgroup id " +
                                          std::to_string(*cgroup_id));
  }
  int prog_fd = bpf_prog_get_fd_by_id(link_info.prog_id);
  if (prog_fd < 0) return ErrnoError(context + ": open the link's program", errno);
  UniqueFd prog(prog_fd);
  ASSIGN_OR_RETURN(auto prog_info, ProgInfo(prog.get()));
  if (prog_info.first.type != BPF_PROG_TYPE_CGROUP_DEVICE ||
      std::find(prog_info.second.begin(), prog_info.second.end(), map_info.id) ==
          prog_info.second.end()) {
    return MakeError(Code::kConflict, context + ": stale: the link's program does not use map " +
                                          std::to_string(map_info.id));
  }
  filter->cgroup_id_ = *cgroup_id;
  filter->map_id_ = map_info.id;
  filter->prog_id_ = link_info.prog_id;
  filter->link_id_ = link_info.id;
  return filter;
}

Status DeviceFilter::Allow(const DeviceRule& rule) {
  RETURN_IF_ERROR(CheckRule(rule));
  Key key = KeyOf(rule);
  uint32_t value = rule.access;
  if (bpf_map_update_elem(map_fd_.get(), &key, &value, BPF_ANY) != 0) {
    int err = errno;
    if (err == E2BIG) {
      return MakeError(Code::kTooLarge, "allow " + RuleKey(rule) + ": the device map is full (" +
                                            std::to_string(kMaxRules) + " rules)");
    }
    return ErrnoError("allow " + RuleKey(rule), err);
  }
  return Ok();
}

Status DeviceFilter::Remove(const DeviceRule& rule) {
  Key key = KeyOf(rule);
  if (bpf_map_delete_elem(map_fd_.get(), &key) != 0 && errno != ENOENT) {
    return ErrnoError("remove " + RuleKey(rule), errno);
  }
  return Ok();
}

Result<std::vector<DeviceRule>> DeviceFilter::List() const {
  std::vector<DeviceRule> out;
  Key key{}, next{};
  const Key* prev = nullptr;
  // Bounded: a map changed under the iteration can make get_next_key start over.
  for (size_t steps = 0; steps <= 4 * kMaxRules; ++steps) {
    if (bpf_map_get_next_key(map_fd_.get(), prev, &next) != 0) {
      if (errno == ENOENT) return out;
      return ErrnoError("list device rules", errno);
    }
    key = next;
    prev = &key;
    uint32_t value = 0;
    if (bpf_map_lookup_elem(map_fd_.get(), &key, &value) != 0) {
      if (errno == ENOENT) continue;  // deleted meanwhile
      return ErrnoError("list device rules: lookup", errno);
    }
    out.push_back(DeviceRule{static_cast<DeviceType>(key.type), key.major, key.minor, value});
  }
  return MakeError(Code::kInternal, "list device rules: the map kept changing");
}

Status DeviceFilter::Sync(const std::vector<DeviceRule>& desired) {
  std::map<KeyTuple, DeviceRule> want;
  for (const auto& r : desired) {
    RETURN_IF_ERROR(CheckRule(r));
    want[Tuple(KeyOf(r))] = r;
  }
  if (want.size() > kMaxRules) {
    return MakeError(Code::kTooLarge, "sync: " + std::to_string(want.size()) + " rules");
  }
  ASSIGN_OR_RETURN(auto current, List());
  std::map<KeyTuple, uint32_t> have;
  for (const auto& r : current) have[Tuple(KeyOf(r))] = r.access;
  // Deleting extras first keeps room in a nearly full map; the order cannot grant more than
  // either the old or the new set does.
  for (const auto& r : current) {
    if (!want.count(Tuple(KeyOf(r)))) RETURN_IF_ERROR(Remove(r));
  }
  for (const auto& [key, r] : want) {
    auto it = have.find(key);
    if (it == have.end() || it->second != r.access) RETURN_IF_ERROR(Allow(r));
  }
  return Ok();
}

Status RemovePins(const fs::path& pin_dir) {
  for (const char* name : {"link", "map"}) {
    fs::path p = pin_dir / name;
    if (::unlink(p.c_str()) != 0 && errno != ENOENT)
      return ErrnoError("unpin " + p.string(), errno);
  }
  if (::rmdir(pin_dir.c_str()) != 0 && errno != ENOENT) {
    return ErrnoError("remove pin dir " + pin_dir.string(), errno);
  }
  return Ok();
}

Result<bool> IsBpffs(const fs::path& path) {
  struct statfs sfs {};
  if (::statfs(path.c_str(), &sfs) != 0) return ErrnoError("statfs " + path.string(), errno);
  return static_cast<uint64_t>(sfs.f_type) == BPF_FS_MAGIC;
}

Result<std::vector<std::string>> ListPinDirs(const fs::path& pin_root) {
  std::vector<std::string> out;
  std::error_code ec;
  fs::directory_iterator it(pin_root, ec), end;
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory) return out;
    return MakeError(Code::kInternal, "list " + pin_root.string() + ": " + ec.message());
  }
  for (; it != end; it.increment(ec)) {
    std::error_code type_ec;
    if (it->is_directory(type_ec)) out.push_back(it->path().filename().string());
  }
  if (ec) return MakeError(Code::kInternal, "list " + pin_root.string() + ": " + ec.message());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace edgevirt::cgroup
