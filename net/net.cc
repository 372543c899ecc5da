#include "net/net.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <tuple>

#include <nlohmann/json.hpp>

#include "common/exec.h"
#include "common/fd.h"
#include "common/hash.h"
#include "store/store.h"

namespace edgevirt::net {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kIpamSpace = "ipam";
constexpr std::string_view kAllocPrefix = "alloc/";
constexpr ExecOptions kCmdOptions{std::chrono::seconds(30)};

Error Invalid(std::string m) { return MakeError(Code::kInvalid, std::move(m)); }

Result<uint32_t> ParseIpv4(std::string_view s) {
  in_addr a{};
  std::string z(s);
  if (z.empty() || ::inet_pton(AF_INET, z.c_str(), &a) != 1) {
    return Invalid("not an IPv4 address: \"" + z + "\"");
  }
  return ntohl(a.s_addr);
}

std::string FormatIpv4(uint32_t ip) {
  char buf[INET_ADDRSTRLEN];
  in_addr a{htonl(ip)};
  ::inet_ntop(AF_INET, &a, buf, sizeof buf);
  return buf;
}

// The canonical dotted quad of a validated address (what inet_ntop prints), so that rendered
// text never carries the caller's spelling.
std::string CanonIp(const std::string& s) {
  auto ip = ParseIpv4(s);
  return ip ? FormatIpv4(*ip) : s;
}

struct Subnet {
  uint32_t network = 0;
  int prefix = 0;
  uint32_t mask() const { return prefix == 0 ? 0 : ~uint32_t{0} << (32 - prefix); }
  uint32_t broadcast() const { return network | ~mask(); }
  uint32_t gateway() const { return network + 1; }
  bool Contains(uint32_t ip) const { return (ip & mask()) == network; }
  // A VM may hold it: inside, and neither network, gateway nor broadcast.
  bool Assignable(uint32_t ip) const {
    return Contains(ip) && ip != network && ip != gateway() && ip != broadcast();
  }
  std::string Cidr() const { return FormatIpv4(network) + "/" + std::to_string(prefix); }
};

Result<Subnet> ParseCidr(std::string_view cidr) {
  auto slash = cidr.find('/');
  if (slash == std::string_view::npos) {
    return Invalid("cidr \"" + std::string(cidr) + "\": expected a.b.c.d/len");
  }
  ASSIGN_OR_RETURN(uint32_t ip, ParseIpv4(cidr.substr(0, slash)));
  std::string len(cidr.substr(slash + 1));
  if (len.empty() || len.size() > 2 || !std::all_of(len.begin(), len.end(), ::isdigit)) {
    return Invalid("cidr \"" + std::string(cidr) + "\": bad prefix length");
  }
  Subnet s;
  s.prefix = std::stoi(len);
  if (s.prefix < 8 || s.prefix > 30) {
    return Invalid("cidr \"" + std::string(cidr) + "\": prefix length must be 8..30");
  }
  s.network = ip & s.mask();
  if (s.network != ip) {
    return Invalid("cidr \"" + std::string(cidr) + "\": host bits set (network is " + s.Cidr() +
                   ")");
  }
  return s;
}

// A Linux interface name we are willing to pass to ip(8): 1-15 bytes of [A-Za-z0-9_.-], not
// "." or "..", not starting with '-' (never read as an option).
Status ValidateIfName(std::string_view name, std::string_view what) {
  bool ok = !name.empty() && name.size() <= 15 && name != "." && name != ".." && name[0] != '-';
  for (char c : name) {
    ok = ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '-');
  }
  if (!ok) {
    return Invalid(std::string(what) + " \"" + std::string(name) +
                   "\": not a valid interface name (1-15 of [A-Za-z0-9_.-])");
  }
  return Ok();
}

struct Link {
  std::string kind;      // "bridge", "tun", "veth", "" for a plain device
  std::string master;    // the bridge it is a port of, if any
  bool hairpin = false;  // as a bridge port
};

// The links of the calling thread's network namespace by name. Asked of ip(8) (netlink), not
// /sys/class/net: sysfs shows the namespace it was mounted in, which is not the caller's after
// setns(2).
Result<std::map<std::string, Link>> ListLinks(const std::string& ip_path) {
  ASSIGN_OR_RETURN(auto r, ExecChecked({ip_path, "-j", "-d", "link", "show"},
                                       ExecOptions{std::chrono::seconds(30), 16 << 20}));
  auto doc = nlohmann::json::parse(r.stdout_text, nullptr, false);
  if (!doc.is_array()) {
    return MakeError(Code::kInternal, "ip -j link show: output is not a JSON array");
  }
  auto str = [](const nlohmann::json& o, const char* key) {
    return o.is_object() && o.contains(key) && o[key].is_string() ? o[key].get<std::string>()
                                                                  : std::string();
  };
  std::map<std::string, Link> links;
  for (const auto& l : doc) {
    std::string name = str(l, "ifname");
    if (name.empty()) continue;
    Link link;
    link.master = str(l, "master");
    if (l.contains("linkinfo") && l["linkinfo"].is_object()) {
      const auto& info = l["linkinfo"];
      link.kind = str(info, "info_kind");
      if (info.contains("info_slave_data") && info["info_slave_data"].is_object()) {
        const auto& port = info["info_slave_data"];
        link.hairpin =
            port.contains("hairpin") && port["hairpin"].is_boolean() && port["hairpin"].get<bool>();
      }
    }
    links[name] = link;
  }
  return links;
}

Result<std::string> ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return MakeError(Code::kNotFound, "read " + p.string() + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Writes via a temporary file and rename, so readers (dnsmasq on SIGHUP) never see half.
Status WriteFileAtomic(const fs::path& p, const std::string& content) {
  fs::path tmp = p;
  tmp += ".tmp";
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) return ErrnoError("create " + tmp.string(), errno);
  RETURN_IF_ERROR(WriteAllAt(fd.get(), content.data(), content.size(), 0, tmp.string()));
  if (::fsync(fd.get()) != 0) return ErrnoError("fsync " + tmp.string(), errno);
  fd.reset();
  if (::rename(tmp.c_str(), p.c_str()) != 0) return ErrnoError("rename " + p.string(), errno);
  return Ok();
}

Status Run(const std::string& program, std::vector<std::string> args) {
  args.insert(args.begin(), program);
  auto r = ExecChecked(args, kCmdOptions);
  if (!r) return std::move(r).error();
  return Ok();
}

std::string Lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

Result<std::string> NftProto(std::string_view protocol) {
  std::string p = Lower(protocol);
  if (p != "tcp" && p != "udp") {
    return Invalid("protocol \"" + std::string(protocol) + "\": must be TCP or UDP");
  }
  return p;
}

bool ValidHostname(std::string_view h) {
  if (h.empty() || h.size() > 63 || h.front() == '-' || h.back() == '-') return false;
  return std::all_of(h.begin(), h.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-';
  });
}

Status ValidateOwner(const std::string& owner, const std::string& interface) {
  if (owner.empty() || owner.size() > 256 || owner.find('\0') != std::string::npos ||
      owner.find('\n') != std::string::npos) {
    return Invalid("owner \"" + owner + "\": 1-256 bytes without NUL or newline");
  }
  if (interface.empty() || interface.size() > 63 ||
      interface.find_first_of(std::string("\0/\n", 3)) != std::string::npos) {
    return Invalid("interface \"" + interface + "\": 1-63 bytes without NUL, '/' or newline");
  }
  return Ok();
}

std::string AllocKey(const std::string& owner, const std::string& interface) {
  return std::string(kAllocPrefix) + owner + '\0' + interface;
}

// /proc/PID/cmdline as argv, empty if the process is gone or a zombie.
std::vector<std::string> ProcArgv(int pid) {
  auto stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return {};
  auto paren = stat->rfind(')');
  if (paren == std::string::npos || paren + 2 >= stat->size() || (*stat)[paren + 2] == 'Z') {
    return {};
  }
  auto cmd = ReadFile("/proc/" + std::to_string(pid) + "/cmdline");
  if (!cmd) return {};
  std::vector<std::string> argv;
  std::string cur;
  for (char c : *cmd) {
    if (c == '\0') {
      argv.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) argv.push_back(cur);
  return argv;
}

bool IsOurDnsmasq(int pid, const std::string& conf_arg) {
  auto argv = ProcArgv(pid);
  if (argv.empty()) return false;
  if (fs::path(argv[0]).filename().string().rfind("dnsmasq", 0) != 0) return false;
  return std::find(argv.begin() + 1, argv.end(), conf_arg) != argv.end();
}

// Every live dnsmasq started with our --conf-file argument.
std::vector<int> FindOurDnsmasqs(const std::string& conf_arg) {
  std::vector<int> pids;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    const std::string n = e.path().filename().string();
    if (n.empty() || !std::all_of(n.begin(), n.end(), ::isdigit)) continue;
    int pid = std::stoi(n);
    if (IsOurDnsmasq(pid, conf_arg)) pids.push_back(pid);
  }
  return pids;
}

// Whether the process still runs: /proc/PID/stat exists and is not a zombie. Not its cmdline,
// which reads empty once an exiting process has dropped its memory but not yet closed its files
// (its sockets still bound).
bool Running(int pid) {
  auto stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return false;
  auto paren = stat->rfind(')');
  return paren != std::string::npos && paren + 2 < stat->size() && (*stat)[paren + 2] != 'Z';
}

// SIGTERM, SIGKILL after `grace`, then waits (bounded) until the process is gone or a zombie.
void KillAndWait(int pid, std::chrono::milliseconds grace) {
  ::kill(pid, SIGTERM);
  for (int sig : {SIGKILL, 0}) {
    auto deadline = std::chrono::steady_clock::now() + grace;
    while (Running(pid)) {
      if (std::chrono::steady_clock::now() > deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!Running(pid) || sig == 0) return;
    ::kill(pid, sig);
    grace = std::chrono::seconds(5);
  }
}

struct Allocation {
  uint32_t ip = 0;
  std::string mac;
};

}  // namespace

struct Network::Impl {
  Options options;
  Subnet subnet;
  fs::path run_dir;
  fs::path conf_path() const { return run_dir / "dnsmasq.conf"; }
  fs::path hosts_path() const { return run_dir / "dhcp-hosts"; }
  fs::path lease_path() const { return run_dir / "dnsmasq.leases"; }
  fs::path pid_path() const { return run_dir / "dnsmasq.pid"; }
  fs::path nft_path() const { return run_dir / "nftables.nft"; }
  std::string conf_arg() const { return "--conf-file=" + conf_path().string(); }

  mutable std::mutex mu;
  // (owner, interface) -> allocation, guarded by mu. Mirrors the store's "ipam" records.
  std::map<std::pair<std::string, std::string>, Allocation> allocs;
  int dnsmasq_pid = 0;  // guarded by mu

  std::string DnsmasqConf() const {
    std::string c;
    c += "# edgevirtd's dnsmasq for bridge " + options.bridge + "; rewritten at every start\n";
    c += "pid-file=" + pid_path().string() + "\n";
    c += "interface=" + options.bridge + "\n";
    c += "except-interface=lo\n";
    c += "bind-interfaces\n";
    // run_dir is 0700 root: a dnsmasq that dropped to nobody could not re-read the hosts
    // file on SIGHUP nor rewrite the lease file.
    c += "user=root\n";
    c += "group=root\n";
    c += "dhcp-range=" + FormatIpv4(subnet.network) + ",static," + FormatIpv4(subnet.mask()) +
         ",1h\n";
    c += "dhcp-option=option:router," + FormatIpv4(subnet.gateway()) + "\n";
    c += "dhcp-hostsfile=" + hosts_path().string() + "\n";
    c += "dhcp-leasefile=" + lease_path().string() + "\n";
    c += "dhcp-authoritative\n";
    c += "no-hosts\n";
    return c;
  }

  Result<int> PidFromFile() const {
    auto text = ReadFile(pid_path());
    if (!text) return 0;
    try {
      return std::stoi(*text);
    } catch (...) {
      return 0;
    }
  }

  // Starts dnsmasq (it daemonizes after binding, so errors show in Exec's result).
  Status StartDnsmasqLocked() {
    std::error_code ec;
    fs::remove(pid_path(), ec);
    // A dnsmasq just killed can hold its sockets a moment longer than its /proc entry shows it
    // alive (seen here as "Address already in use" right after SIGKILL): retry for a while.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    for (;;) {
      auto started = Run(options.dnsmasq_path, {conf_arg()});
      if (started) break;
      if (started.error().message.find("Address already in use") == std::string::npos ||
          std::chrono::steady_clock::now() > deadline) {
        return std::move(started).error();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    for (;;) {
      ASSIGN_OR_RETURN(int pid, PidFromFile());
      if (pid > 0 && IsOurDnsmasq(pid, conf_arg())) {
        dnsmasq_pid = pid;
        return Ok();
      }
      if (std::chrono::steady_clock::now() > deadline) {
        return MakeError(Code::kInternal, "dnsmasq started but " + pid_path().string() +
                                              " names no running dnsmasq");
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  // Adopts the dnsmasq of the pid file when `adoptable`, kills every other one using our
  // conf, and starts one if none is left.
  Status EnsureDnsmasqLocked(bool adoptable) {
    ASSIGN_OR_RETURN(int file_pid, PidFromFile());
    int keep = 0;
    for (int pid : FindOurDnsmasqs(conf_arg())) {
      if (adoptable && pid == file_pid && keep == 0) {
        keep = pid;
      } else {
        KillAndWait(pid, std::chrono::seconds(2));
      }
    }
    if (keep != 0) {
      dnsmasq_pid = keep;
      ::kill(keep, SIGHUP);  // re-read the hosts file, which may be newer than it
      return Ok();
    }
    return StartDnsmasqLocked();
  }

  Status EnsureBridge() {
    const std::string& br = options.bridge;
    const std::string& ip = options.ip_path;
    ASSIGN_OR_RETURN(auto links, ListLinks(ip));
    if (auto it = links.find(br); it != links.end()) {
      if (it->second.kind != "bridge") {
        return MakeError(Code::kConflict, "link " + br + " exists and is not a bridge");
      }
    } else {
      RETURN_IF_ERROR(Run(ip, {"link", "add", "name", br, "type", "bridge"}));
    }
    if (options.mtu != 0) {
      RETURN_IF_ERROR(Run(ip, {"link", "set", "dev", br, "mtu", std::to_string(options.mtu)}));
    }
    RETURN_IF_ERROR(
        Run(ip, {"addr", "replace",
                 FormatIpv4(subnet.gateway()) + "/" + std::to_string(subnet.prefix), "dev", br}));
    RETURN_IF_ERROR(Run(ip, {"link", "set", "dev", br, "up"}));
    return Ok();
  }

  Status LoadIpam() {
    ASSIGN_OR_RETURN(auto rows,
                     options.store->ListRaw(std::string(kIpamSpace), std::string(kAllocPrefix)));
    for (auto& [key, value] : rows) {
      std::string rest = key.substr(kAllocPrefix.size());
      auto nul = rest.find('\0');
      auto sp = value.find(' ');
      if (nul == std::string::npos || sp == std::string::npos) {
        return MakeError(Code::kInternal, "ipam record \"" + rest + "\" is malformed");
      }
      ASSIGN_OR_RETURN(uint32_t ipv, ParseIpv4(value.substr(0, sp)));
      allocs[{rest.substr(0, nul), rest.substr(nul + 1)}] = Allocation{ipv, value.substr(sp + 1)};
    }
    return Ok();
  }

  Address ToAddress(const Allocation& a) const {
    return Address{FormatIpv4(a.ip), a.mac, subnet.prefix, FormatIpv4(subnet.gateway())};
  }
};

Network::Network(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Network::~Network() = default;

Result<std::unique_ptr<Network>> Network::Open(const Options& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (options.store == nullptr) return Invalid("net: Options.store is required");
  // The path goes into dnsmasq.conf lines: no control characters (a newline would add
  // directives), and not "/" or a path with "." / ".." components.
  const bool printable = std::all_of(options.run_dir.begin(), options.run_dir.end(), [](char c) {
    return static_cast<unsigned char>(c) >= 0x20 && c != 0x7f;
  });
  if (options.run_dir.size() < 2 || options.run_dir[0] != '/' || !printable ||
      fs::path(options.run_dir).lexically_normal() != fs::path(options.run_dir) ||
      options.run_dir.back() == '/') {
    return Invalid("net: run_dir \"" + options.run_dir +
                   "\" must be a normalised absolute path (not /) without control characters");
  }
  RETURN_IF_ERROR(ValidateIfName(options.bridge, "bridge"));
  ASSIGN_OR_RETURN(impl->subnet, ParseCidr(options.cidr));
  if (options.mtu != 0 && (options.mtu < 68 || options.mtu > 65535)) {
    return Invalid("mtu " + std::to_string(options.mtu) + ": must be 68..65535 (or 0)");
  }
  for (const auto& prog : {options.nft_path, options.dnsmasq_path, options.ip_path}) {
    RETURN_IF_ERROR(ResolveProgram(prog));
  }
  std::set<std::string> names;
  std::map<std::string, Link> links;
  if (!options.host_networks.empty()) {
    ASSIGN_OR_RETURN(links, ListLinks(options.ip_path));
  }
  for (const auto& h : options.host_networks) {
    if (h.name.empty() || !names.insert(h.name).second) {
      return Invalid("host network \"" + h.name + "\": empty or duplicate name");
    }
    const std::string what = "host network " + h.name;
    if (h.bridge.empty() == h.macvtap_device.empty()) {
      return Invalid(what + ": exactly one of bridge and macvtap device must be set");
    }
    if (!h.bridge.empty()) {
      RETURN_IF_ERROR(ValidateIfName(h.bridge, what + " bridge"));
      if (h.bridge == options.bridge) {
        return Invalid(what + ": bridge " + h.bridge + " is the default network's own bridge");
      }
      if (!links.count(h.bridge)) {
        return MakeError(Code::kNotFound, what + ": bridge " + h.bridge + " does not exist");
      }
      if (links[h.bridge].kind != "bridge")
        return Invalid(what + ": " + h.bridge + " is not a bridge");
    } else {
      RETURN_IF_ERROR(ValidateIfName(h.macvtap_device, what + " macvtap device"));
      if (!links.count(h.macvtap_device)) {
        return MakeError(Code::kNotFound,
                         what + ": host NIC " + h.macvtap_device + " does not exist");
      }
      static const std::set<std::string> kModes = {"vepa", "bridge", "private", "passthrough"};
      if (!kModes.count(h.macvtap_mode)) {
        return Invalid(what + ": macvtap mode \"" + h.macvtap_mode +
                       "\" (vepa, bridge, private or passthrough)");
      }
    }
  }

  impl->run_dir = options.run_dir;
  std::error_code ec;
  struct stat st {};
  if (::lstat(impl->run_dir.c_str(), &st) == 0) {
    // An existing directory is used as it is (never chmod-ed: a misconfigured path must not
    // change a system directory), but only when nobody else can write into it.
    if (!S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() || (st.st_mode & 022) != 0) {
      return Invalid("net: run_dir " + options.run_dir +
                     " must be a directory owned by this user and writable by it alone");
    }
  } else {
    fs::create_directories(impl->run_dir, ec);
    if (ec) return ErrnoError("create " + options.run_dir, ec.value());
    if (::chmod(impl->run_dir.c_str(), 0700) != 0) {
      return ErrnoError("chmod " + options.run_dir, errno);
    }
  }

  RETURN_IF_ERROR(impl->EnsureBridge());
  {
    UniqueFd fd(::open("/proc/sys/net/ipv4/ip_forward", O_WRONLY | O_CLOEXEC));
    if (!fd) return ErrnoError("open /proc/sys/net/ipv4/ip_forward", errno);
    RETURN_IF_ERROR(WriteAllAt(fd.get(), "1\n", 2, 0, "/proc/sys/net/ipv4/ip_forward"));
  }
  RETURN_IF_ERROR(impl->LoadIpam());

  // The hosts file of the last Apply stays: DHCP keeps serving known VMs until the next one.
  if (!fs::exists(impl->hosts_path(), ec)) {
    RETURN_IF_ERROR(WriteFileAtomic(impl->hosts_path(), ""));
  }
  const std::string conf = impl->DnsmasqConf();
  auto old_conf = ReadFile(impl->conf_path());
  const bool same_conf = old_conf && *old_conf == conf;
  if (!same_conf) RETURN_IF_ERROR(WriteFileAtomic(impl->conf_path(), conf));
  {
    std::lock_guard lock(impl->mu);
    RETURN_IF_ERROR(impl->EnsureDnsmasqLocked(same_conf));
  }
  return std::unique_ptr<Network>(new Network(std::move(impl)));
}

Result<std::string> Network::NormalizeMac(std::string_view mac) {
  const std::string bad = "mac \"" + std::string(mac) + "\": ";
  if (mac.size() != 17) return Invalid(bad + "expected six hex pairs (aa:bb:cc:dd:ee:ff)");
  std::string out;
  uint8_t bytes[6];
  for (int i = 0; i < 6; ++i) {
    auto pair = mac.substr(static_cast<size_t>(i) * 3, 2);
    if (!std::isxdigit(static_cast<unsigned char>(pair[0])) ||
        !std::isxdigit(static_cast<unsigned char>(pair[1]))) {
      return Invalid(bad + "expected six hex pairs (aa:bb:cc:dd:ee:ff)");
    }
    if (i < 5) {
      char sep = mac[static_cast<size_t>(i) * 3 + 2];
      if (sep != ':' && sep != '-') return Invalid(bad + "separators must be ':' or '-'");
    }
    bytes[i] = static_cast<uint8_t>(std::stoi(std::string(pair), nullptr, 16));
    if (i > 0) out += ':';
    out += Lower(pair);
  }
  if (bytes[0] & 1) return Invalid(bad + "a multicast address");
  if (std::all_of(bytes, bytes + 6, [](uint8_t b) { return b == 0; })) {
    return Invalid(bad + "all zero");
  }
  return out;
}

Result<Address> Network::Allocate(const std::string& owner, const std::string& interface,
                                  const std::string& mac) {
  RETURN_IF_ERROR(ValidateOwner(owner, interface));
  std::string want_mac;
  if (!mac.empty()) {
    ASSIGN_OR_RETURN(want_mac, NormalizeMac(mac));
  }
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  const auto id = std::make_pair(owner, interface);
  for (const auto& [other, a] : d.allocs) {
    if (other != id && !want_mac.empty() && a.mac == want_mac) {
      return MakeError(Code::kAlreadyExists, "mac " + want_mac + " is already allocated to " +
                                                 other.first + "/" + other.second);
    }
  }
  Allocation next;
  auto it = d.allocs.find(id);
  if (it != d.allocs.end() && d.subnet.Assignable(it->second.ip)) {
    next = it->second;
    if (want_mac.empty() || want_mac == next.mac) return d.ToAddress(next);
    next.mac = want_mac;
  } else {
    std::set<uint32_t> used;
    std::set<std::string> macs;
    for (const auto& [other, a] : d.allocs) {
      if (other != id) {
        used.insert(a.ip);
        macs.insert(a.mac);
      }
    }
    for (uint32_t ip = d.subnet.gateway() + 1; ip < d.subnet.broadcast(); ++ip) {
      if (!used.count(ip)) {
        next.ip = ip;
        break;
      }
    }
    if (next.ip == 0) {
      return MakeError(Code::kUnavailable, "subnet " + d.subnet.Cidr() + " exhausted (" +
                                               std::to_string(used.size()) + " addresses)");
    }
    if (!want_mac.empty()) {
      next.mac = want_mac;
    } else if (it != d.allocs.end()) {
      next.mac = it->second.mac;  // moved to a new subnet: keep the MAC
    } else {
      std::random_device rd;
      do {
        char buf[18];
        std::snprintf(buf, sizeof buf, "02:%02x:%02x:%02x:%02x:%02x", rd() & 0xff, rd() & 0xff,
                      rd() & 0xff, rd() & 0xff, rd() & 0xff);
        next.mac = buf;
      } while (macs.count(next.mac));
    }
  }
  RETURN_IF_ERROR(d.options.store->PutRaw(std::string(kIpamSpace), AllocKey(owner, interface),
                                          FormatIpv4(next.ip) + " " + next.mac));
  d.allocs[id] = next;
  return d.ToAddress(next);
}

Status Network::Release(const std::string& owner) {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  for (auto it = d.allocs.lower_bound({owner, ""});
       it != d.allocs.end() && it->first.first == owner;) {
    RETURN_IF_ERROR(
        d.options.store->DeleteRaw(std::string(kIpamSpace), AllocKey(owner, it->first.second)));
    it = d.allocs.erase(it);
  }
  return Ok();
}

Result<size_t> Network::RetainOwners(const std::set<std::string>& owners) {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  size_t freed = 0;
  for (auto it = d.allocs.begin(); it != d.allocs.end();) {
    if (owners.count(it->first.first)) {
      ++it;
      continue;
    }
    RETURN_IF_ERROR(d.options.store->DeleteRaw(std::string(kIpamSpace),
                                               AllocKey(it->first.first, it->first.second)));
    it = d.allocs.erase(it);
    ++freed;
  }
  return freed;
}

Result<std::vector<std::pair<std::string, Address>>> Network::Allocations() const {
  const Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  std::vector<std::pair<std::string, Address>> out;
  for (const auto& [id, a] : d.allocs) out.emplace_back(id.first + "/" + id.second, d.ToAddress(a));
  return out;
}

Status Network::Validate(const Options& options, const DataPlane& plane) {
  ASSIGN_OR_RETURN(Subnet subnet, ParseCidr(options.cidr));
  std::set<uint32_t> ips;
  std::set<std::string> macs, taps;
  for (const auto& e : plane.endpoints) {
    const std::string what = "endpoint " + e.owner + " (" + e.ip + ")";
    ASSIGN_OR_RETURN(uint32_t ip, ParseIpv4(e.ip));
    if (!subnet.Assignable(ip)) {
      return Invalid(what + ": not an assignable address of " + subnet.Cidr());
    }
    if (!ips.insert(ip).second) return Invalid(what + ": address used by two endpoints");
    if (!e.mac.empty()) {
      ASSIGN_OR_RETURN(std::string mac, NormalizeMac(e.mac));
      if (!macs.insert(mac).second) return Invalid(what + ": mac used by two endpoints");
    }
    if (!e.tap.empty()) {
      RETURN_IF_ERROR(ValidateIfName(e.tap, what + " tap"));
      if (!taps.insert(e.tap).second) return Invalid(what + ": tap used by two endpoints");
    }
    if (!e.hostname.empty() && !ValidHostname(e.hostname)) {
      return Invalid(what + ": hostname \"" + e.hostname + "\" is not a DNS label");
    }
    for (const auto& p : e.ports) {
      RETURN_IF_ERROR(NftProto(p.protocol));
      if (p.port == 0) return Invalid(what + ": port 0");
    }
  }
  std::map<std::pair<std::string, uint16_t>, std::pair<uint32_t, uint16_t>> node_ports;
  std::map<std::tuple<uint32_t, std::string, uint16_t>, std::pair<uint32_t, uint16_t>> cluster;
  for (const auto& f : plane.forwards) {
    const std::string what =
        "forward " + f.protocol + " to " + f.target_ip + ":" + std::to_string(f.target_port);
    ASSIGN_OR_RETURN(std::string proto, NftProto(f.protocol));
    ASSIGN_OR_RETURN(uint32_t target, ParseIpv4(f.target_ip));
    if (f.target_port == 0) return Invalid(what + ": target port 0");
    if (f.node_port == 0 && f.cluster_ip.empty()) {
      return Invalid(what + ": neither a node port nor a cluster IP");
    }
    const auto to = std::make_pair(target, f.target_port);
    if (f.node_port != 0) {
      if (f.node_port < 30000 || f.node_port > 32767) {
        return Invalid(what + ": node port " + std::to_string(f.node_port) +
                       " outside 30000-32767");
      }
      auto [it, added] = node_ports.emplace(std::make_pair(proto, f.node_port), to);
      if (!added && it->second != to) {
        return Invalid(what + ": node port " + std::to_string(f.node_port) +
                       " already forwards elsewhere");
      }
    }
    if (!f.cluster_ip.empty()) {
      ASSIGN_OR_RETURN(uint32_t cip, ParseIpv4(f.cluster_ip));
      if (f.port == 0) return Invalid(what + ": cluster IP port 0");
      auto [it, added] = cluster.emplace(std::make_tuple(cip, proto, f.port), to);
      if (!added && it->second != to) {
        return Invalid(what + ": " + f.cluster_ip + ":" + std::to_string(f.port) +
                       " already forwards elsewhere");
      }
    }
  }
  return Ok();
}

std::string Network::RenderHostsFile(const DataPlane& plane) {
  std::vector<std::string> lines;
  for (const auto& e : plane.endpoints) {
    auto mac = NormalizeMac(e.mac);
    if (!mac) continue;
    std::string l = *mac + "," + CanonIp(e.ip);
    if (!e.hostname.empty()) l += "," + e.hostname;
    lines.push_back(l + "\n");
  }
  std::sort(lines.begin(), lines.end());
  std::string out;
  for (const auto& l : lines) out += l;
  return out;
}

std::string Network::RenderRuleset(const Options& options, const DataPlane& plane) {
  auto subnet = ParseCidr(options.cidr);
  const std::string cidr = subnet ? subnet->Cidr() : options.cidr;
  const std::string br = "\"" + options.bridge + "\"";
  const std::string t = "inet " + std::string(kNftTable);

  std::set<std::string> nodeports, clusterips, limited, allowed;
  for (const auto& f : plane.forwards) {
    std::string proto = Lower(f.protocol);
    std::string to = CanonIp(f.target_ip) + " . " + std::to_string(f.target_port);
    if (f.node_port != 0)
      nodeports.insert(proto + " . " + std::to_string(f.node_port) + " : " + to);
    if (!f.cluster_ip.empty()) {
      clusterips.insert(CanonIp(f.cluster_ip) + " . " + proto + " . " + std::to_string(f.port) +
                        " : " + to);
    }
  }
  for (const auto& e : plane.endpoints) {
    if (e.binding != Binding::kMasquerade || e.ports.empty()) continue;
    const std::string ip = CanonIp(e.ip);
    limited.insert(ip);
    for (const auto& p : e.ports) {
      allowed.insert(ip + " . " + Lower(p.protocol) + " . " + std::to_string(p.port));
    }
  }
  auto elements = [](const std::set<std::string>& s) {
    if (s.empty()) return std::string();
    std::string out = "\t\telements = {";
    bool first = true;
    for (const auto& e : s) {
      out += first ? "\n\t\t\t" : ",\n\t\t\t";
      out += e;
      first = false;
    }
    return out + "\n\t\t}\n";
  };

  std::string r;
  r += "# edgevirtd: the whole " + t + " table, replaced in one transaction (nft -f).\n";
  r += "# Regenerated from the daemon's state; edits are lost.\n";
  // Add-then-delete makes the delete succeed whether or not the table exists (nft 1.0.6 has no
  // `destroy`); all three statements commit together or not at all.
  r += "table " + t + "\n";
  r += "delete table " + t + "\n";
  r += "table " + t + " {\n";
  r += "\t# Service NodePorts: proto . node port -> VM address . target port\n";
  r += "\tmap nodeports {\n\t\ttype inet_proto . inet_service : ipv4_addr . inet_service\n";
  r += elements(nodeports) + "\t}\n\n";
  r += "\t# Service ClusterIPs: cluster ip . proto . port -> VM address . target port\n";
  r += "\tmap clusterips {\n";
  r += "\t\ttype ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service\n";
  r += elements(clusterips) + "\t}\n\n";
  r += "\t# masquerade-binding VMs that declared ports: inbound limited to those\n";
  r += "\tset limited {\n\t\ttype ipv4_addr\n" + elements(limited) + "\t}\n\n";
  r += "\tset allowed {\n\t\ttype ipv4_addr . inet_proto . inet_service\n" + elements(allowed) +
       "\t}\n\n";
  r += "\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n";
  r += "\t\tiifname " + br + " udp dport 67 accept\n";
  r += "\t\tiifname " + br + " meta l4proto { tcp, udp } th dport 53 accept\n";
  r += "\t}\n\n";
  r += "\tchain forward {\n\t\ttype filter hook forward priority filter; policy accept;\n";
  r += "\t\toifname " + br + " ct state established,related accept\n";
  r += "\t\toifname " + br + " ip daddr @limited ip daddr . meta l4proto . th dport @allowed " +
       "accept\n";
  r += "\t\toifname " + br + " ip daddr @limited reject\n";
  r += "\t}\n\n";
  // The host itself (its sockets, and Service traffic it DNATs in `output`) is held to the same
  // limits: a masquerade VM behind KubeVirt's pod IP is reachable on its declared ports only,
  // from the node as from anywhere. dnsmasq's DHCP replies to a VM are not "established" (the
  // request went to the broadcast address), so they pass explicitly.
  r += "\tchain outbound {\n\t\ttype filter hook output priority filter; policy accept;\n";
  r += "\t\toifname " + br + " ct state established,related accept\n";
  r += "\t\toifname " + br + " udp sport 67 accept\n";
  r += "\t\toifname " + br + " meta mark " + std::to_string(kPortForwardMark) + " accept\n";
  r += "\t\toifname " + br + " ip daddr @limited ip daddr . meta l4proto . th dport @allowed " +
       "accept\n";
  r += "\t\toifname " + br + " ip daddr @limited reject\n";
  r += "\t}\n\n";
  r += "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n";
  r += "\t\tmeta l4proto { tcp, udp } fib daddr type local dnat ip to meta l4proto . th dport "
       "map @nodeports\n";
  r += "\t\tmeta l4proto { tcp, udp } dnat ip to ip daddr . meta l4proto . th dport map "
       "@clusterips\n";
  r += "\t}\n\n";
  // From the host itself. Loopback is left out: DNAT of 127.0.0.0/8 to a bridge address needs
  // route_localnet, which this module does not turn on.
  r += "\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n";
  r += "\t\tmeta l4proto { tcp, udp } ip daddr != 127.0.0.0/8 fib daddr type local dnat ip to "
       "meta l4proto . th dport map @nodeports\n";
  r += "\t\tmeta l4proto { tcp, udp } dnat ip to ip daddr . meta l4proto . th dport map "
       "@clusterips\n";
  r += "\t}\n\n";
  r += "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n";
  r += "\t\tip saddr " + cidr + " ip daddr != " + cidr + " masquerade\n";
  // Hairpin: a VM reaching another VM of the bridge through a Service must see the reply come
  // from the gateway, or the peer answers directly and the client drops it.
  r += "\t\tct status dnat ip saddr " + cidr + " ip daddr " + cidr + " masquerade\n";
  r += "\t}\n";
  r += "}\n";
  return r;
}

Status Network::Apply(const DataPlane& plane) {
  Impl& d = *impl_;
  RETURN_IF_ERROR(Validate(d.options, plane));
  std::lock_guard lock(d.mu);
  const std::string script = RenderRuleset(d.options, plane);
  RETURN_IF_ERROR(WriteFileAtomic(d.nft_path(), script));
  {
    std::vector<std::string> argv = {d.options.nft_path, "-f", d.nft_path().string()};
    auto r = ExecChecked(argv, kCmdOptions, "nft -f " + d.nft_path().string());
    if (!r) return std::move(r).error().Wrap("apply nft table");
  }
  const std::string hosts = RenderHostsFile(plane);
  auto old = ReadFile(d.hosts_path());
  if (!old || *old != hosts) {
    RETURN_IF_ERROR(WriteFileAtomic(d.hosts_path(), hosts));
    if (d.dnsmasq_pid > 0 && IsOurDnsmasq(d.dnsmasq_pid, d.conf_arg())) {
      ::kill(d.dnsmasq_pid, SIGHUP);
    }
  }
  // Hairpin on the endpoints' bridge ports: with br_netfilter loaded (Docker loads it;
  // bridge-nf-call-iptables=1), a VM's packet to a Service that DNATs back to the same VM is
  // bridged out of the port it came in on, which a bridge refuses unless the port is in hairpin
  // mode (kubelet's hairpin-veth for the same reason). Only ports of our bridge are touched.
  std::set<std::string> taps;
  for (const auto& e : plane.endpoints) {
    if (!e.tap.empty()) taps.insert(e.tap);
  }
  if (!taps.empty()) {
    ASSIGN_OR_RETURN(auto links, ListLinks(d.options.ip_path));
    auto pending = [&](const std::map<std::string, Link>& now) {
      std::vector<std::string> out;
      for (const auto& tap : taps) {
        auto it = now.find(tap);
        // Not there yet (libvirt makes it), not a port of ours, or done: skip.
        if (it != now.end() && it->second.master == d.options.bridge && !it->second.hairpin) {
          out.push_back(tap);
        }
      }
      return out;
    };
    std::string batch;
    for (const auto& tap : pending(links)) {
      batch += "link set dev " + tap + " type bridge_slave hairpin on\n";
    }
    if (!batch.empty()) {
      RETURN_IF_ERROR(WriteFileAtomic(d.run_dir / "hairpin.batch", batch));
      auto r = ExecChecked(
          {d.options.ip_path, "-force", "-batch", (d.run_dir / "hairpin.batch").string()},
          kCmdOptions, "ip -batch hairpin.batch");
      if (!r) {
        // A tap that went away meanwhile (its VM stopped) fails its line; only a port of ours
        // still without hairpin is an error.
        ASSIGN_OR_RETURN(auto after, ListLinks(d.options.ip_path));
        if (!pending(after).empty()) return std::move(r).error().Wrap("set hairpin on VM ports");
      }
    }
  }
  return Ok();
}

Result<std::vector<Lease>> Network::Leases() const {
  std::vector<Lease> out;
  auto text = ReadFile(impl_->lease_path());
  if (!text) return out;
  std::istringstream in(*text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    Lease l;
    std::string host;
    if (!(ls >> l.expiry >> l.mac >> l.ip >> host)) continue;  // e.g. "duid ..." lines
    if (host != "*") l.hostname = host;
    out.push_back(std::move(l));
  }
  return out;
}

Result<size_t> Network::RemoveStaleLeases() {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  auto text = ReadFile(d.lease_path());
  if (!text) return size_t{0};
  ASSIGN_OR_RETURN(std::string hosts, ReadFile(d.hosts_path()));
  std::set<std::pair<std::string, std::string>> wanted;  // (mac, ip) of the last Apply
  {
    std::istringstream in(hosts);
    std::string line;
    while (std::getline(in, line)) {
      auto c1 = line.find(',');
      auto c2 = line.find(',', c1 == std::string::npos ? c1 : c1 + 1);
      if (c1 == std::string::npos) continue;
      wanted.emplace(
          line.substr(0, c1),
          line.substr(c1 + 1, c2 == std::string::npos ? std::string::npos : c2 - c1 - 1));
    }
  }
  std::string kept;
  size_t stale = 0;
  {
    std::istringstream in(*text);
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      int64_t expiry = 0;
      std::string mac, ip;
      if ((ls >> expiry >> mac >> ip) && !wanted.count({Lower(mac), ip})) {
        ++stale;
        continue;
      }
      kept += line + "\n";
    }
  }
  if (stale == 0) return stale;
  // dnsmasq keeps its leases in memory and rewrites the file from them: it has to be stopped
  // while the file is edited. Clients do not notice a restart of a few milliseconds.
  for (int pid : FindOurDnsmasqs(d.conf_arg())) KillAndWait(pid, std::chrono::seconds(2));
  d.dnsmasq_pid = 0;
  RETURN_IF_ERROR(WriteFileAtomic(d.lease_path(), kept));
  RETURN_IF_ERROR(d.StartDnsmasqLocked());
  return stale;
}

Status Network::RemoveStaleTaps(const std::set<std::string>& live) {
  const std::string& ip = impl_->options.ip_path;
  ASSIGN_OR_RETURN(auto links, ListLinks(ip));
  Status first;
  for (const auto& [name, link] : links) {
    if (name.rfind(kTapPrefix, 0) != 0 || live.count(name) || link.kind != "tun") continue;
    auto s = Run(ip, {"link", "del", "dev", name});
    if (!s && first) first = std::move(s).error().Wrap("remove stale tap " + name);
  }
  return first;
}

Result<bool> Network::Supervise() {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  if (d.dnsmasq_pid > 0 && IsOurDnsmasq(d.dnsmasq_pid, d.conf_arg())) return false;
  RETURN_IF_ERROR(d.EnsureDnsmasqLocked(false));
  return true;
}

Status Network::StopDhcp() {
  Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  for (int pid : FindOurDnsmasqs(d.conf_arg())) KillAndWait(pid, std::chrono::seconds(2));
  d.dnsmasq_pid = 0;
  std::error_code ec;
  fs::remove(d.pid_path(), ec);
  return Ok();
}

int Network::DhcpPid() const {
  const Impl& d = *impl_;
  std::lock_guard lock(d.mu);
  return d.dnsmasq_pid > 0 && IsOurDnsmasq(d.dnsmasq_pid, d.conf_arg()) ? d.dnsmasq_pid : 0;
}

Result<bool> Network::HasAddresses(const store::Store& store) {
  ASSIGN_OR_RETURN(auto kvs, store.ListRaw(std::string(kIpamSpace), ""));
  return !kvs.empty();
}

Status EnsureMacvtap(const std::string& ip_path, const std::string& name, const std::string& device,
                     const std::string& mode, const std::string& mac) {
  RETURN_IF_ERROR(ValidateIfName(name, "macvtap"));
  RETURN_IF_ERROR(ValidateIfName(device, "macvtap device"));
  if (name.rfind(kMacvtapPrefix, 0) != 0) {
    return Invalid("macvtap \"" + name + "\": the name must start with " +
                   std::string(kMacvtapPrefix));
  }
  static const std::set<std::string> kModes = {"vepa", "bridge", "private", "passthrough"};
  if (!kModes.count(mode)) return Invalid("macvtap mode \"" + mode + "\" is not known");
  ASSIGN_OR_RETURN(std::string normal, Network::NormalizeMac(mac));
  ASSIGN_OR_RETURN(auto links, ListLinks(ip_path));
  auto it = links.find(name);
  if (it != links.end() && it->second.kind != "macvtap") {
    return MakeError(Code::kConflict, "link " + name + " exists and is not a macvtap");
  }
  if (it == links.end()) {
    if (!links.count(device)) {
      return MakeError(Code::kNotFound, "host NIC " + device + " does not exist");
    }
    RETURN_IF_ERROR(Run(
        ip_path, {"link", "add", "link", device, "name", name, "type", "macvtap", "mode", mode}));
  }
  return Run(ip_path, {"link", "set", "dev", name, "address", normal, "up"});
}

Status RemoveMacvtaps(const std::string& ip_path, std::string_view prefix,
                      const std::set<std::string>& keep) {
  if (prefix.rfind(kMacvtapPrefix, 0) != 0) {
    return Invalid("macvtap prefix \"" + std::string(prefix) + "\" is not ours");
  }
  ASSIGN_OR_RETURN(auto links, ListLinks(ip_path));
  Status first;
  for (const auto& [name, link] : links) {
    if (name.rfind(prefix, 0) != 0 || keep.count(name) || link.kind != "macvtap") continue;
    auto s = Run(ip_path, {"link", "del", "dev", name});
    if (!s && first) first = std::move(s).error().Wrap("remove macvtap " + name);
  }
  return first;
}

std::string Network::TapName(std::string_view vmi_uid, size_t index) {
  const uint64_t h = Fnv1a64(vmi_uid);
  char hex[11];
  std::snprintf(hex, sizeof hex, "%010llx", static_cast<unsigned long long>(h >> 24));
  static constexpr char kDigits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
  index %= 36 * 36;
  std::string name(kTapPrefix);
  name += hex;
  name += kDigits[index / 36];
  name += kDigits[index % 36];
  return name;
}

}  // namespace edgevirt::net
