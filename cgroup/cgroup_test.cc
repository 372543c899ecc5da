// Unit tests of cgroup/: mountinfo and /proc/<pid>/cgroup parsing, limit file formatting, the
// rule text form. No kernel objects are made (tests/integration/cgroup_device_test.cc does).
#include "cgroup/cgroup.h"

#include <set>

#include "tests/support/catch.h"

namespace edgevirt::cgroup {
namespace {

// A hybrid host (this build machine): v1 controllers at /sys/fs/cgroup/<name>, cgroup2 at
// /sys/fs/cgroup/unified.
constexpr char kHybridMountinfo[] =
    "24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw\n"
    "31 24 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755\n"
    "32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 "
    "cgroup2 rw,nsdelegate\n"
    "33 31 0:28 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup "
    "cgroup rw,xattr,name=systemd\n"
    "36 31 0:31 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup "
    "rw,memory\n";

// A pure v2 host; the optional fields are absent on one line and several on another.
constexpr char kUnifiedMountinfo[] =
    "22 1 259:2 / / rw,relatime shared:1 master:3 - ext4 /dev/nvme0n1p2 rw\n"
    "26 22 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
    "rw,nsdelegate,memory_recursiveprot\n"
    "40 22 0:35 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime - bpf bpf rw,mode=700\n";

TEST_CASE("ParseCgroup2Mount finds the cgroup2 mount by file system type") {
  auto hybrid = ParseCgroup2Mount(kHybridMountinfo);
  REQUIRE(hybrid.has_value());
  CHECK(*hybrid == "/sys/fs/cgroup/unified");
  auto unified = ParseCgroup2Mount(kUnifiedMountinfo);
  REQUIRE(unified.has_value());
  CHECK(*unified == "/sys/fs/cgroup");
  // Only v1 (a "cgroup" type) and a mount point called cgroup2 that is not one.
  auto none = ParseCgroup2Mount(
      "36 31 0:31 / /sys/fs/cgroup/memory rw shared:14 - cgroup cgroup rw,memory\n"
      "37 31 0:32 / /mnt/cgroup2 rw - tmpfs cgroup2 rw\n");
  REQUIRE_FALSE(none.has_value());
  CHECK(none.error().code == Code::kNotFound);
  CHECK_FALSE(ParseCgroup2Mount("").has_value());
  CHECK_FALSE(ParseCgroup2Mount("garbage - cgroup2\n").has_value());
}

TEST_CASE("ParseCgroup2Mount decodes octal escapes in the mount point") {
  auto m = ParseCgroup2Mount("50 22 0:40 / /run/my\\040cgroups\\134x rw - cgroup2 none rw\n");
  REQUIRE(m.has_value());
  CHECK(m->string() == "/run/my cgroups\\x");
}

TEST_CASE("ParseOwnCgroup takes the 0:: line") {
  auto v2 = ParseOwnCgroup("0::/system.slice/edgevirtd.service\n");
  REQUIRE(v2.has_value());
  CHECK(*v2 == "/system.slice/edgevirtd.service");
  auto hybrid = ParseOwnCgroup(
      "12:pids:/user.slice\n4:memory:/process_api/abc\n1:name=systemd:/user.slice/x.scope\n0::/\n");
  REQUIRE(hybrid.has_value());
  CHECK(*hybrid == "/");
  auto v1_only = ParseOwnCgroup("4:memory:/a\n");
  REQUIRE_FALSE(v1_only.has_value());
  CHECK(v1_only.error().code == Code::kNotFound);
}

TEST_CASE("OwnCgroup and FindCgroup2Mount work on this host") {
  auto mount = FindCgroup2Mount();
  REQUIRE(mount.has_value());
  CHECK(mount->is_absolute());
  auto own = OwnCgroup();
  REQUIRE(own.has_value());
  CHECK(own->front() == '/');
  auto gone = OwnCgroup(0x7ffffff0);
  REQUIRE_FALSE(gone.has_value());
  CHECK(gone.error().code == Code::kNotFound);
}

TEST_CASE("ParseKeyedValue reads flat keyed files") {
  const char* stat = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\nnr_periods 0\n";
  CHECK(ParseKeyedValue(stat, "usage_usec") == 1234u);
  CHECK(ParseKeyedValue(stat, "system_usec") == 234u);
  CHECK_FALSE(ParseKeyedValue(stat, "usage").has_value());
  CHECK_FALSE(ParseKeyedValue("usage_usec x\n", "usage_usec").has_value());
  CHECK(ParseKeyedValue("populated 1\nfrozen 0", "frozen") == 0u);
}

TEST_CASE("LimitFiles formats each limit as the kernel reads it") {
  Limits l;
  l.cpu_max_quota_us = 150000;
  l.cpu_weight = 200;
  l.memory_max = 1073741824;
  l.memory_high = 966367641;
  l.pids_max = 16384;
  l.io_weight = 500;
  auto files = LimitFiles(l);
  REQUIRE(files.has_value());
  std::vector<std::tuple<std::string, std::string, std::string>> got;
  for (const auto& f : *files) got.emplace_back(f.controller, f.file, f.value);
  std::vector<std::tuple<std::string, std::string, std::string>> want = {
      {"cpu", "cpu.max", "150000 100000"},    {"cpu", "cpu.weight", "200"},
      {"memory", "memory.high", "966367641"}, {"memory", "memory.max", "1073741824"},
      {"pids", "pids.max", "16384"},          {"io", "io.weight", "default 500"},
  };
  CHECK(got == want);

  auto none = LimitFiles(Limits{});
  REQUIRE(none.has_value());
  CHECK(none->empty());
}

TEST_CASE("LimitFiles refuses values the kernel would refuse") {
  auto code = [](Limits l) {
    auto r = LimitFiles(l);
    return r.has_value() ? std::optional<Code>() : r.error().code;
  };
  Limits l;
  l.cpu_weight = 0;
  CHECK(code(l) == Code::kInvalid);
  l.cpu_weight = 10001;
  CHECK(code(l) == Code::kInvalid);
  l = {};
  l.io_weight = 0;
  CHECK(code(l) == Code::kInvalid);
  l = {};
  l.cpu_max_quota_us = 0;
  CHECK(code(l) == Code::kInvalid);
  l = {};
  l.pids_max = 0;
  CHECK(code(l) == Code::kInvalid);
  l = {};
  l.cpu_weight = 1;
  l.io_weight = 10000;
  CHECK_FALSE(code(l).has_value());
}

TEST_CASE("RuleKey and ParseRuleKey round-trip") {
  std::vector<DeviceRule> rules = BaseRules();
  rules.push_back({DeviceType::kBlock, 7, 3, kRead});
  rules.push_back({DeviceType::kBlock, 259, 0, kRead | kWrite});
  rules.push_back({DeviceType::kChar, 4294967, 4294967294u, kMknod});
  for (const auto& r : rules) {
    auto back = ParseRuleKey(RuleKey(r), r.access);
    REQUIRE(back.has_value());
    CHECK(*back == r);
  }
  CHECK(RuleKey({DeviceType::kBlock, 7, 3, kRead}) == "b:7:3");
  CHECK(RuleKey({DeviceType::kChar, 136, kAnyMinor, kAccessAll}) == "c:136:*");
}

TEST_CASE("ParseRuleKey refuses malformed keys and access bits") {
  for (const char* bad : {"", "b", "b:7", "b:7:", "x:7:3", "b:7:3:1", "b:-1:3", "b:7:3x", "b::3",
                          "b:7:4294967295", "b: 7:3", "a:*:*", "c:*:1", "b:99999999999:1"}) {
    INFO(bad);
    auto r = ParseRuleKey(bad, kRead);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Code::kInvalid);
  }
  CHECK_FALSE(ParseRuleKey("b:7:3", 0).has_value());
  CHECK_FALSE(ParseRuleKey("b:7:3", 8).has_value());
  CHECK(ParseRuleKey("b:7:3", kAccessAll).has_value());
}

TEST_CASE("RuleForPath reads type and numbers from the node") {
  auto null = RuleForPath("/dev/null", kRead | kWrite);
  REQUIRE(null.has_value());
  CHECK(*null == DeviceRule{DeviceType::kChar, 1, 3, kRead | kWrite});
  auto dir = RuleForPath("/dev", kRead);
  REQUIRE_FALSE(dir.has_value());
  CHECK(dir.error().code == Code::kInvalid);
  auto missing = RuleForPath("/dev/edgevirt-no-such-device", kRead);
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == Code::kNotFound);
  CHECK(AccessString(kAccessAll) == "rwm");
  CHECK(AccessString(kRead) == "r");
}

TEST_CASE("BaseRules covers QEMU's devices once each, with the Unix98 PTY range") {
  auto rules = BaseRules();
  std::set<std::string> keys;
  for (const auto& r : rules) {
    INFO(RuleKey(r));
    CHECK(keys.insert(RuleKey(r)).second);
    CHECK(r.type == DeviceType::kChar);
    CHECK((r.access & (kRead | kWrite)) == (kRead | kWrite));
  }
  for (const char* k : {"c:1:3", "c:1:5", "c:1:7", "c:1:8", "c:1:9", "c:5:0", "c:5:2", "c:10:232",
                        "c:10:200", "c:10:238", "c:10:241"}) {
    INFO(k);
    CHECK(keys.count(k) == 1);
  }
  for (int major = 136; major <= 143; ++major) {
    CHECK(keys.count("c:" + std::to_string(major) + ":*") == 1);
  }
  CHECK(keys.count("c:144:*") == 0);
  CHECK(rules.size() == 19);
}

}  // namespace
}  // namespace edgevirt::cgroup
