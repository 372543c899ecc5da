// Unit tests of the configuration file and the command line.
#include <stdlib.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "daemon/cli.h"
#include "daemon/config.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::daemon {
namespace {

using namespace std::chrono_literals;

Config MustParse(const std::string& yaml) {
  auto c = ParseConfig(yaml, "test.yaml");
  INFO(yaml);
  if (!c) FAIL(c.error().message);
  return *c;
}

std::string ParseError(const std::string& yaml) {
  auto c = ParseConfig(yaml, "test.yaml");
  INFO(yaml);
  REQUIRE_FALSE(c.has_value());
  CHECK(c.error().code == Code::kInvalid);
  return c.error().message;
}

using edgevirt::testing::TempDir;

// Leaf key paths of a YAML mapping ("api.listen", ...).
void CollectLeaves(const YAML::Node& node, const std::string& prefix, std::set<std::string>& out) {
  for (auto it = node.begin(); it != node.end(); ++it) {
    std::string path = prefix.empty() ? it->first.Scalar() : prefix + "." + it->first.Scalar();
    if (it->second.IsMap()) {
      CollectLeaves(it->second, path, out);
    } else {
      out.insert(path);
    }
  }
}

TEST_CASE("defaults are the documented values") {
  Config c;
  CHECK(c.state_dir == "/var/lib/edgevirt");
  CHECK(c.run_dir == "/run/edgevirt");
  CHECK(c.api.listen ==
        std::vector<std::string>{"unix:/run/edgevirt/edgevirtd.sock", "https://0.0.0.0:8443"});
  CHECK(c.api.tls.cert_file.empty());
  CHECK(c.api.tls.extra_sans.empty());
  CHECK(c.EffectiveTokenFile() == "/var/lib/edgevirt/tokens.csv");
  CHECK(c.PkiDir() == "/var/lib/edgevirt/pki");
  CHECK_FALSE(c.api.auth.plain_http_no_auth);
  CHECK(c.api.io_threads == 2);
  CHECK(c.api.max_body_bytes == 3u << 20);
  CHECK(c.api.max_connections == 1024u);
  CHECK(c.libvirt.uri.empty());
  CHECK(c.EffectiveLibvirtUri() == "qemu:///embed?root=/var/lib/edgevirt/libvirt");
  CHECK(c.log.level == log::Level::kInfo);
  CHECK(c.log.target == log::Target::kAuto);
  CHECK(c.store.initial_map_size == 64ull << 20);
  CHECK(c.store.event_retention.count == 100000u);
  CHECK(c.store.event_retention.age == 1h);
  CHECK(c.shutdown.timeout == 30s);
  // One files class, "local", the default, qcow2 images under <stateDir>/volumes.
  REQUIRE(c.storage.classes.size() == 1);
  CHECK(c.storage.classes[0].name == "local");
  CHECK(c.storage.classes[0].is_default);
  CHECK(c.storage.classes[0].type == StorageClass::Type::kFiles);
  CHECK(c.storage.classes[0].format == StorageClass::Format::kQcow2);
  CHECK(c.storage.classes[0].dir.empty());
  CHECK(c.EffectiveStorageClasses()[0].dir == "/var/lib/edgevirt/volumes");
  CHECK(c.DefaultStorageClass() == "local");
  CHECK(c.network.bridge == "edgevirt0");
  CHECK(c.network.cidr == "10.208.0.0/24");
  CHECK(c.network.mtu == 0u);
  CHECK(c.network.node_port_first == 30000u);
  CHECK(c.network.node_port_last == 32767u);
  CHECK(c.network.service_cidr == "10.96.0.0/16");
  CHECK(c.network.host_networks.empty());
}

TEST_CASE("empty documents and empty sections give the defaults") {
  CHECK(MustParse("") == Config{});
  CHECK(MustParse("# nothing but a comment\n") == Config{});
  CHECK(MustParse("---\n") == Config{});
  CHECK(MustParse("api:\nstore:\n  eventRetention:\nlog: {}\n") == Config{});
}

TEST_CASE("every key is read") {
  Config c = MustParse(R"(stateDir: /srv/ev
runDir: /run/ev2
api:
  listen: ["unix:/tmp/x.sock", "http://[::1]:9000", "http://localhost:0"]
  ioThreads: 4
  maxBodyBytes: 1Mi
  maxConnections: 10
  kubevirtVersion: v1.4.2
  watchBookmarkInterval: 5s
  watchTimeout: 1m
  eventTTL: 10m
  tls:
    certFile: /etc/ev/tls.crt
    keyFile: /etc/ev/tls.key
    caFile: /etc/ev/ca.crt
    extraSANs: [edge.example]
  auth:
    tokenFile: /etc/ev/tokens.csv
    plainHttp: none
libvirt:
  uri: qemu:///system
vms:
  enabled: false
  hostDiskDirs: [/srv/disks, /data/images]
  resyncPeriod: 1m
cgroups:
  root: edgevirt-test
  bpfRoot: /sys/fs/bpf/ev-test
storage:
  classes:
    - name: fast
      type: block
      volumeGroup: vg0
images:
  dir: /srv/images
  authFile: /etc/edgevirt/auth.json
  platform: linux/arm64/v8
  registries:
    - host: reg.local:5000
      insecure: true
    - host: registry.example
      caFile: /etc/edgevirt/ca.pem
      skipVerify: true
  maxVirtualSize: 100Gi
  cacheBudget: 0
  pullWorkers: 4
  stallTimeout: 2m
network:
  bridge: evbr1
  cidr: 192.168.77.0/24
  mtu: 1400
  nodePortRange: 31000-31999
  serviceCIDR: 10.100.0.0/16
  hostNetworks:
    - name: lan
      bridge: br0
log:
  level: debug
  target: stderr
store:
  initialMapSize: 1Gi
  eventRetention:
    count: 5
    age: 1h30m
shutdown:
  timeout: 1500ms
)");
  CHECK(c.state_dir == "/srv/ev");
  CHECK(c.run_dir == "/run/ev2");
  CHECK(c.api.listen ==
        std::vector<std::string>{"unix:/tmp/x.sock", "http://[::1]:9000", "http://localhost:0"});
  CHECK(c.api.io_threads == 4);
  CHECK(c.api.max_body_bytes == 1u << 20);
  CHECK(c.api.max_connections == 10u);
  CHECK(c.api.kubevirt_version == "v1.4.2");
  CHECK(c.api.watch_bookmark_interval == 5s);
  CHECK(c.api.watch_timeout == 1min);
  CHECK(c.api.event_ttl == 10min);
  CHECK(c.api.tls.cert_file == "/etc/ev/tls.crt");
  CHECK(c.api.tls.key_file == "/etc/ev/tls.key");
  CHECK(c.api.tls.ca_file == "/etc/ev/ca.crt");
  CHECK(c.api.tls.extra_sans == std::vector<std::string>{"edge.example"});
  CHECK(c.api.auth.token_file == "/etc/ev/tokens.csv");
  CHECK(c.api.auth.plain_http_no_auth);
  CHECK(c.libvirt.uri == "qemu:///system");
  CHECK(c.EffectiveLibvirtUri() == "qemu:///system");
  CHECK_FALSE(c.vms.enabled);
  CHECK(c.vms.host_disk_dirs == std::vector<std::string>{"/srv/disks", "/data/images"});
  CHECK(c.vms.resync_period == 1min);
  CHECK(c.cgroups.root == "edgevirt-test");
  CHECK(c.cgroups.bpf_root == "/sys/fs/bpf/ev-test");
  REQUIRE(c.storage.classes.size() == 1);
  CHECK(c.storage.classes[0].volume_group == "vg0");
  CHECK(c.images.dir == "/srv/images");
  CHECK(c.EffectiveImagesDir() == "/srv/images");
  CHECK(c.images.auth_file == "/etc/edgevirt/auth.json");
  CHECK(c.images.platform == "linux/arm64/v8");
  REQUIRE(c.images.registries.size() == 2);
  CHECK(c.images.registries[0] == RegistryHostConfig{"reg.local:5000", true, false, ""});
  CHECK(c.images.registries[1] ==
        RegistryHostConfig{"registry.example", false, true, "/etc/edgevirt/ca.pem"});
  CHECK(c.images.max_virtual_size == 100ull << 30);
  CHECK(c.images.cache_budget == 0u);
  CHECK(c.images.pull_workers == 4);
  CHECK(c.images.stall_timeout == 2min);
  CHECK(c.network.bridge == "evbr1");
  CHECK(c.network.cidr == "192.168.77.0/24");
  CHECK(c.network.mtu == 1400u);
  CHECK(c.network.node_port_first == 31000u);
  CHECK(c.network.node_port_last == 31999u);
  CHECK(c.network.service_cidr == "10.100.0.0/16");
  REQUIRE(c.network.host_networks.size() == 1);
  CHECK(c.network.host_networks[0] == HostNetworkConfig{"lan", "br0", "", "bridge"});
  CHECK(c.log.level == log::Level::kDebug);
  CHECK(c.log.target == log::Target::kStderr);
  CHECK(c.store.initial_map_size == 1ull << 30);
  CHECK(c.store.event_retention.count == 5u);
  CHECK(c.store.event_retention.age == 90min);
  CHECK(c.shutdown.timeout == 1500ms);
  // Every field differs from its default, so every key path shows up as changed.
  CHECK(ChangedKeys(Config{}, c) == ConfigKeyPaths());
  CHECK(ChangedKeys(c, c).empty());

  // Sizes also take plain integers; the uri default follows stateDir.
  Config d = MustParse("stateDir: /data\napi:\n  maxBodyBytes: 4096\n");
  CHECK(d.api.max_body_bytes == 4096u);
  CHECK(d.EffectiveLibvirtUri() == "qemu:///embed?root=/data/libvirt");
  CHECK(ChangedKeys(Config{}, d) == std::vector<std::string>{"stateDir", "api.maxBodyBytes"});
}

TEST_CASE("unknown keys name the key path and the position") {
  std::string e = ParseError("stateDir: /x\n\napi:\n  ioThreads: 2\n\n\n  listn: []\n");
  CHECK(e == "test.yaml:7:3: unknown key \"api.listn\"");
  CHECK_THAT(ParseError("statedir: /x\n"),
             Catch::Contains("test.yaml:1:1:") && Catch::Contains("\"statedir\""));
  CHECK_THAT(ParseError("store:\n  eventRetention:\n    ages: 1h\n"),
             Catch::Contains("test.yaml:3:5:") &&
                 Catch::Contains("unknown key \"store.eventRetention.ages\""));
  // A leaf is not a section, and a section is not a leaf.
  CHECK_THAT(ParseError("log:\n  level:\n    x: 1\n"),
             Catch::Contains("test.yaml:3:5:") && Catch::Contains("log.level"));
  CHECK_THAT(ParseError("api: 5\n"),
             Catch::Contains("test.yaml:1:6:") && Catch::Contains("api: expected a mapping"));
  CHECK_THAT(ParseError("log:\n  level: info\n  level: debug\n"),
             Catch::Contains("test.yaml:3:3:") && Catch::Contains("duplicate key \"log.level\""));
}

TEST_CASE("wrong types name the key path and the position") {
  CHECK(ParseError("api:\n  ioThreads: two\n") ==
        "test.yaml:2:14: api.ioThreads: expected an integer, got \"two\"");
  CHECK_THAT(ParseError("api:\n  ioThreads: 0\n"),
             Catch::Contains("test.yaml:2:14:") && Catch::Contains("between 1 and 64"));
  CHECK_THAT(ParseError("api:\n  ioThreads: -3\n"), Catch::Contains("api.ioThreads"));
  CHECK_THAT(ParseError("api:\n  ioThreads: [1]\n"),
             Catch::Contains("test.yaml:2:14:") && Catch::Contains("got a list"));
  CHECK_THAT(ParseError("api:\n  listen: unix:/x.sock\n"),
             Catch::Contains("test.yaml:2:11:") && Catch::Contains("api.listen: expected a list"));
  CHECK_THAT(ParseError("stateDir: [a]\n"),
             Catch::Contains("test.yaml:1:11:") && Catch::Contains("stateDir: expected a string"));
  CHECK_THAT(ParseError("stateDir:\n"), Catch::Contains("stateDir: expected a string, got null"));
  CHECK_THAT(ParseError("stateDir: relative/dir\n"),
             Catch::Contains("test.yaml:1:11:") && Catch::Contains("absolute path"));
  CHECK_THAT(ParseError("log:\n  level: loud\n"), Catch::Contains("test.yaml:2:10:") &&
                                                      Catch::Contains("log.level") &&
                                                      Catch::Contains("loud"));
  CHECK_THAT(ParseError("log:\n  target: syslog\n"),
             Catch::Contains("test.yaml:2:11:") && Catch::Contains("log.target"));
  CHECK_THAT(ParseError("store:\n  initialMapSize: 64MB\n"),
             Catch::Contains("test.yaml:2:19:") && Catch::Contains("store.initialMapSize"));
  CHECK_THAT(ParseError("store:\n  initialMapSize: 4Ki\n"),
             Catch::Contains("store.initialMapSize: must be between"));
  CHECK_THAT(ParseError("vms:\n  hostDiskDirs: [relative/dir]\n"),
             Catch::Contains("test.yaml:2:18:") && Catch::Contains("vms.hostDiskDirs[0]"));
  CHECK_THAT(ParseError("libvirt:\n  uri: not a uri\n"),
             Catch::Contains("test.yaml:2:8:") && Catch::Contains("libvirt.uri"));
  CHECK_THAT(ParseError("- a\n- b\n"), Catch::Contains("the top level: expected a mapping"));
  // Syntax errors carry the position too.
  CHECK_THAT(ParseError("api:\n  listen: [unix:/x\n"),
             Catch::Matches("test\\.yaml:\\d+:\\d+: invalid YAML: .*"));
}

TEST_CASE("bad durations name the key path and the position") {
  CHECK_THAT(ParseError("shutdown:\n  timeout: 5x\n"),
             Catch::Contains("test.yaml:2:12: shutdown.timeout: invalid duration \"5x\""));
  CHECK_THAT(ParseError("shutdown:\n  timeout: 30\n"),
             Catch::Contains("test.yaml:2:12:") && Catch::Contains("missing unit"));
  CHECK_THAT(ParseError("shutdown:\n  timeout: 0s\n"),
             Catch::Contains("shutdown.timeout: must be longer than 0s"));
  CHECK_THAT(ParseError("store:\n  eventRetention:\n    age: 1500ms\n"),
             Catch::Contains("test.yaml:3:10:") &&
                 Catch::Contains("store.eventRetention.age: must be a whole number of seconds"));
  CHECK_THAT(ParseError("store:\n  eventRetention:\n    age: -1h\n"),
             Catch::Contains("store.eventRetention.age"));
}

TEST_CASE("bad listen addresses name the list index and the position") {
  // Plain HTTP is refused off loopback (api::ListenAddress::Parse).
  std::string e =
      ParseError("api:\n  listen:\n    - unix:/run/x.sock\n    - http://0.0.0.0:8080\n");
  CHECK_THAT(e, Catch::StartsWith("test.yaml:4:7: api.listen[1]: "));
  CHECK_THAT(ParseError("api:\n  listen: [\"ftp://127.0.0.1:21\"]\n"),
             Catch::Contains("test.yaml:2:12: api.listen[0]: "));
  // HTTPS on any address.
  auto https = ParseConfig("api:\n  listen: [\"https://0.0.0.0:8443\", \"https://[::]:9443\"]\n",
                           "test.yaml");
  REQUIRE(https.has_value());
  CHECK(https->api.listen.size() == 2);
  CHECK_THAT(ParseError("api:\n  listen: [\"unix:/a\", \"unix:/a\"]\n"),
             Catch::Contains("api.listen[1]: duplicate address"));
  CHECK_THAT(ParseError("api:\n  listen: []\n"),
             Catch::Contains("test.yaml:2:11: api.listen: at least one address"));
}

TEST_CASE("api.tls and api.auth keys are validated with their positions") {
  auto c = ParseConfig(
      "api:\n"
      "  tls:\n"
      "    certFile: /etc/edgevirt/tls.crt\n"
      "    keyFile: /etc/edgevirt/tls.key\n"
      "    caFile: /etc/edgevirt/ca.crt\n"
      "    extraSANs: [edge.example.com, 192.0.2.1, \"2001:db8::1\", \"*.edge.example.com\"]\n"
      "  auth:\n"
      "    tokenFile: /etc/edgevirt/tokens.csv\n"
      "    plainHttp: none\n",
      "test.yaml");
  REQUIRE(c.has_value());
  CHECK(c->api.tls.cert_file == "/etc/edgevirt/tls.crt");
  CHECK(c->api.tls.key_file == "/etc/edgevirt/tls.key");
  CHECK(c->api.tls.ca_file == "/etc/edgevirt/ca.crt");
  CHECK(c->api.tls.extra_sans.size() == 4);
  CHECK(c->EffectiveTokenFile() == "/etc/edgevirt/tokens.csv");
  CHECK(c->api.auth.plain_http_no_auth);
  CHECK_THAT(ParseError("api:\n  tls:\n    certFile: tls.crt\n"),
             Catch::StartsWith("test.yaml:3:15: api.tls.certFile: must be an absolute path"));
  CHECK_THAT(ParseError("api:\n  tls:\n    certFile: /a.crt\n"),
             Catch::StartsWith("test.yaml:3:15: api.tls.certFile: api.tls.certFile and "
                               "api.tls.keyFile must be set together"));
  CHECK_THAT(ParseError("api:\n  tls:\n    caFile: /ca.crt\n"),
             Catch::StartsWith("test.yaml:3:13: api.tls.caFile: only with"));
  CHECK_THAT(ParseError("api:\n  tls:\n    extraSANs: [ok.example, \"bad name\"]\n"),
             Catch::StartsWith("test.yaml:3:29: api.tls.extraSANs[1]: not an IP address or DNS"));
  CHECK_THAT(ParseError("api:\n  auth:\n    plainHttp: off\n"),
             Catch::StartsWith("test.yaml:3:16: api.auth.plainHttp: expected \"token\" or"));
  CHECK_THAT(ParseError("api:\n  auth:\n    tokenFil: /x\n"),
             Catch::Contains("unknown key \"api.auth.tokenFil\""));
}

TEST_CASE("kubeconfig command line") {
  auto cli = ParseCommandLine({"--state-dir", "/srv/ev", "kubeconfig", "--user", "vera",
                               "--server=https://edge:8443", "--role", "viewer"});
  REQUIRE(cli.has_value());
  CHECK(cli->command == CliOptions::Command::kKubeconfig);
  CHECK(cli->kubeconfig.user == "vera");
  CHECK(cli->kubeconfig.server == "https://edge:8443");
  CHECK(cli->kubeconfig.role == api::Role::kViewer);
  CHECK(cli->kubeconfig.role_given);
  CHECK_FALSE(cli->kubeconfig.client_certificate);
  cli = ParseCommandLine({"kubeconfig", "--client-cert"});
  REQUIRE(cli.has_value());
  CHECK(cli->kubeconfig.user == "admin");
  CHECK(cli->kubeconfig.client_certificate);
  CHECK_FALSE(ParseCommandLine({"kubeconfig", "--role", "root"}).has_value());
  CHECK_FALSE(ParseCommandLine({"kubeconfig", "--server", "edge:8443"}).has_value());
  CHECK_FALSE(ParseCommandLine({"kubeconfig", "--bogus"}).has_value());
}

TEST_CASE("the default kubeconfig server follows api.listen") {
  Config c;
  c.api.listen = {"unix:/x.sock", "https://192.0.2.5:9443"};
  CHECK(DefaultServerUrl(c) == "https://192.0.2.5:9443");
  c.api.listen = {"unix:/x.sock", "https://[2001:db8::5]:9443"};
  CHECK(DefaultServerUrl(c) == "https://[2001:db8::5]:9443");
  c.api.listen = {"unix:/x.sock", "http://127.0.0.1:8080"};
  CHECK(DefaultServerUrl(c) == "http://127.0.0.1:8080");
  c.api.listen = {"unix:/x.sock", "https://0.0.0.0:8443"};
  const std::string wildcard = DefaultServerUrl(c);
  CHECK_THAT(wildcard, Catch::StartsWith("https://") && Catch::EndsWith(":8443"));
  CHECK_THAT(wildcard, !Catch::Contains("0.0.0.0"));
}

TEST_CASE("images keys are validated") {
  auto bad = [](const char* yaml) {
    auto c = ParseConfig(yaml, "t.yaml");
    REQUIRE_FALSE(c.has_value());
    return c.error().message;
  };
  CHECK_THAT(bad("images:\n  platform: amd64\n"),
             Catch::Contains("images.platform: must be os/arch"));
  CHECK_THAT(bad("images:\n  registries:\n    - insecure: true\n"),
             Catch::Contains("a registry needs a host"));
  CHECK_THAT(bad("images:\n  registries:\n    - host: http://x\n"),
             Catch::Contains("must be a registry host[:port]"));
  CHECK_THAT(bad("images:\n  registries:\n    - {host: a}\n    - {host: a}\n"),
             Catch::Contains("duplicate registry \"a\""));
  CHECK_THAT(bad("images:\n  registries:\n    - {host: a, tls: x}\n"),
             Catch::Contains("unknown key \"images.registries[0].tls\""));
  CHECK_THAT(bad("images:\n  pullWorkers: 0\n"), Catch::Contains("images.pullWorkers"));
  CHECK_THAT(bad("images:\n  authFile: auth.json\n"), Catch::Contains("absolute path"));
  CHECK(Config{}.EffectiveImagesDir() == "/var/lib/edgevirt/images");
}

TEST_CASE("the example file documents every key and equals the defaults") {
  const std::filesystem::path example =
      std::filesystem::path(EDGEVIRT_SOURCE_DIR) / "examples" / "edgevirtd.yaml";
  auto c = LoadConfigFile(example);
  if (!c) FAIL(c.error().message);
  CHECK(*c == Config{});
  CHECK(ChangedKeys(Config{}, *c).empty());

  std::set<std::string> leaves;
  CollectLeaves(YAML::LoadFile(example.string()), "", leaves);
  std::set<std::string> known(ConfigKeyPaths().begin(), ConfigKeyPaths().end());
  CHECK(leaves == known);
}

TEST_CASE("duration and size syntax") {
  CHECK(*ParseDuration("45s") == 45s);
  CHECK(*ParseDuration("30m") == 30min);
  CHECK(*ParseDuration("1h") == 1h);
  CHECK(*ParseDuration("1h30m15s") == 1h + 30min + 15s);
  CHECK(*ParseDuration("250ms") == 250ms);
  CHECK_FALSE(ParseDuration("").has_value());
  CHECK_FALSE(ParseDuration("h").has_value());
  CHECK_FALSE(ParseDuration("1d").has_value());
  CHECK_FALSE(ParseDuration("1.5h").has_value());
  CHECK_FALSE(ParseDuration("1 h").has_value());
  CHECK_FALSE(ParseDuration("99999999999999h").has_value());
  CHECK(FormatDuration(1h) == "1h");
  CHECK(FormatDuration(90s) == "1m30s");
  CHECK(FormatDuration(1500ms) == "1s500ms");
  CHECK(FormatDuration(0ms) == "0s");
  CHECK(*ParseByteSize("4096") == 4096u);
  CHECK(*ParseByteSize("64Ki") == 64u << 10);
  CHECK(*ParseByteSize("3Mi") == 3u << 20);
  CHECK(*ParseByteSize("2Ti") == 2ull << 40);
  CHECK_FALSE(ParseByteSize("").has_value());
  CHECK_FALSE(ParseByteSize("1MB").has_value());
  CHECK_FALSE(ParseByteSize("-1").has_value());
  CHECK_FALSE(ParseByteSize("99999999999Ti").has_value());
}

TEST_CASE("LoadConfigFile names the path on errors") {
  TempDir tmp;
  auto missing = LoadConfigFile(tmp.path() / "nope.yaml");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == Code::kNotFound);
  CHECK_THAT(missing.error().message, Catch::Contains("nope.yaml"));

  auto bad = tmp.Write("bad.yaml", "api:\n  listn: []\n");
  auto r = LoadConfigFile(bad);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().message == bad.string() + ":2:3: unknown key \"api.listn\"");
}

Result<CliOptions> Parse(std::vector<std::string> args) { return ParseCommandLine(args); }

TEST_CASE("command line: flags") {
  auto cli = Parse({});
  REQUIRE(cli);
  CHECK(cli->command == CliOptions::Command::kRun);
  CHECK_FALSE(cli->config_path.has_value());
  CHECK(cli->listen.empty());

  cli = Parse({"--config", "/etc/x.yaml", "--state-dir=/srv/ev", "--listen", "unix:/tmp/a.sock",
               "--listen=http://127.0.0.1:0", "--log-level", "debug"});
  REQUIRE(cli);
  CHECK(cli->command == CliOptions::Command::kRun);
  CHECK(*cli->config_path == "/etc/x.yaml");
  CHECK(*cli->state_dir == "/srv/ev");
  CHECK(cli->listen == std::vector<std::string>{"unix:/tmp/a.sock", "http://127.0.0.1:0"});
  CHECK(*cli->log_level == log::Level::kDebug);

  CHECK(Parse({"--version"})->command == CliOptions::Command::kVersion);
  CHECK(Parse({"--help"})->command == CliOptions::Command::kHelp);
  CHECK(Parse({"-h"})->command == CliOptions::Command::kHelp);
  CHECK(Parse({"--bogus", "--help"})->command == CliOptions::Command::kHelp);

  cli = Parse({"check-config", "/tmp/f.yaml"});
  REQUIRE(cli);
  CHECK(cli->command == CliOptions::Command::kCheckConfig);
  CHECK(cli->check_config_path == "/tmp/f.yaml");

  cli = Parse({"--state-dir", "/srv/ev", "image", "import", "/tmp/disk.tar"});
  REQUIRE(cli);
  CHECK(cli->command == CliOptions::Command::kImage);
  CHECK(*cli->state_dir == "/srv/ev");
  CHECK(cli->image_args == std::vector<std::string>{"import", "/tmp/disk.tar"});
  CHECK(Parse({"image", "prune", "--budget=10Gi"})->image_args ==
        std::vector<std::string>{"prune", "--budget", "10Gi"});
  CHECK(Parse({"image", "list"})->image_args == std::vector<std::string>{"list"});
}

TEST_CASE("command line: usage errors") {
  auto err = [](std::vector<std::string> args) {
    auto cli = ParseCommandLine(args);
    REQUIRE_FALSE(cli.has_value());
    return cli.error().message;
  };
  CHECK_THAT(err({"--bogus"}), Catch::Contains("unknown flag \"--bogus\""));
  CHECK_THAT(err({"--bogus=1"}), Catch::Contains("unknown flag \"--bogus\""));
  CHECK_THAT(err({"-x"}), Catch::Contains("unknown flag \"-x\""));
  CHECK_THAT(err({"serve"}), Catch::Contains("unknown command \"serve\""));
  CHECK_THAT(err({"--config"}), Catch::Contains("--config needs a value"));
  CHECK_THAT(err({"--config="}), Catch::Contains("--config needs a non-empty value"));
  CHECK_THAT(err({"--log-level", "loud"}), Catch::Contains("--log-level"));
  CHECK_THAT(err({"--listen", "http://0.0.0.0:80"}), Catch::Contains("--listen http://0.0.0.0:80"));
  CHECK_THAT(err({"--config", "a", "--config", "b"}), Catch::Contains("more than once"));
  CHECK_THAT(err({"check-config"}), Catch::Contains("needs a FILE"));
  CHECK_THAT(err({"check-config", "a", "b"}), Catch::Contains("exactly one FILE"));
  CHECK_THAT(err({"--state-dir", "/x", "check-config", "a"}), Catch::Contains("must come first"));
  CHECK_THAT(err({"image"}), Catch::Contains("image needs a command"));
  CHECK_THAT(err({"image", "rm", "x"}), Catch::Contains("unknown image command \"rm\""));
  CHECK_THAT(err({"image", "import"}), Catch::Contains("exactly one PATH"));
  CHECK_THAT(err({"image", "pull", "a", "b"}), Catch::Contains("exactly one REF"));
  CHECK_THAT(err({"image", "prune", "--budget", "lots"}), Catch::Contains("not a byte size"));
}

TEST_CASE("usage lists every flag and subcommand") {
  std::string usage = UsageText();
  for (const char* word : {"--config", "--state-dir", "--listen", "--log-level", "--version",
                           "--help", "check-config", "image import", "image prune"}) {
    CHECK_THAT(usage, Catch::Contains(word));
  }
}

TEST_CASE("ResolveConfig: file choice and flag overrides") {
  TempDir tmp;
  const auto default_path = tmp.path() / "edgevirtd.yaml";  // does not exist yet

  // No --config and no default file: the embedded defaults.
  auto r = ResolveConfig(*Parse({}), default_path);
  REQUIRE(r);
  CHECK(r->source.empty());
  CHECK(r->config == Config{});

  // The default file is read when it exists.
  tmp.Write("edgevirtd.yaml", "log:\n  level: debug\napi:\n  listen: [\"unix:/tmp/f.sock\"]\n");
  r = ResolveConfig(*Parse({}), default_path);
  REQUIRE(r);
  CHECK(r->source == default_path.string());
  CHECK(r->config.log.level == log::Level::kDebug);

  // Repeated --listen replaces api.list as a whole; --log-level and --state-dir win over it.
  r = ResolveConfig(*Parse({"--listen", "unix:/tmp/a.sock", "--listen", "http://127.0.0.1:0",
                            "--log-level", "error", "--state-dir", "/srv/x/"}),
                    default_path);
  REQUIRE(r);
  CHECK(r->config.api.listen == std::vector<std::string>{"unix:/tmp/a.sock", "http://127.0.0.1:0"});
  CHECK(r->config.log.level == log::Level::kError);
  CHECK(r->config.state_dir == "/srv/x");

  // A relative --state-dir is made absolute.
  r = ResolveConfig(*Parse({"--state-dir", "rel/dir"}), default_path);
  REQUIRE(r);
  CHECK(r->config.state_dir == (std::filesystem::current_path() / "rel/dir").string());

  // --config names another file; a bad one is an error naming it.
  auto other = tmp.Write("other.yaml", "shutdown:\n  timeout: 5s\n");
  r = ResolveConfig(*Parse({"--config", other.string()}), default_path);
  REQUIRE(r);
  CHECK(r->source == other.string());
  CHECK(r->config.shutdown.timeout == 5s);
  CHECK(r->config.log.level == log::Level::kInfo);  // the default file was not read

  auto bad = tmp.Write("bad.yaml", "shutdown:\n  timeout: soon\n");
  r = ResolveConfig(*Parse({"--config", bad.string()}), default_path);
  REQUIRE_FALSE(r.has_value());
  CHECK_THAT(r.error().message, Catch::StartsWith(bad.string() + ":2:12: shutdown.timeout"));

  r = ResolveConfig(*Parse({"--config", (tmp.path() / "missing.yaml").string()}), default_path);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == Code::kNotFound);

  // Duplicate --listen addresses are refused like duplicates in the file.
  r = ResolveConfig(*Parse({"--listen", "unix:/tmp/a.sock", "--listen", "unix:/tmp/a.sock"}),
                    default_path);
  CHECK_FALSE(r.has_value());
}

TEST_CASE("API machinery keys") {
  auto c = ParseConfig(
      "api:\n  kubevirtVersion: v1.9.0-rc.1\n  watchBookmarkInterval: 30s\n"
      "  watchTimeout: 10m\n  eventTTL: 2h\n",
      "test.yaml");
  if (!c) FAIL(c.error().message);
  CHECK(c->api.kubevirt_version == "v1.9.0-rc.1");
  CHECK(c->api.watch_bookmark_interval == 30s);
  CHECK(c->api.watch_timeout == 10min);
  CHECK(c->api.event_ttl == 2h);
  CHECK_THAT(ParseError("api:\n  kubevirtVersion: 1.0.0\n"),
             Catch::Contains("test.yaml:2:20: api.kubevirtVersion: must be a semantic version"));
  CHECK_THAT(ParseError("api:\n  kubevirtVersion: v1.0\n"), Catch::Contains("api.kubevirtVersion"));
  CHECK_THAT(ParseError("api:\n  watchTimeout: 0s\n"), Catch::Contains("api.watchTimeout"));
}

TEST_CASE("storage classes") {
  Config c = MustParse(R"(stateDir: /srv/ev
storage:
  classes:
    - name: local
      default: true
      type: files
      format: raw
    - name: archive
      type: files
      dir: /data/volumes/
    - name: fast
      type: block
      volumeGroup: vg0
    - name: disks
      type: block
      devices: [/dev/sdb, /dev/sdc]
)");
  REQUIRE(c.storage.classes.size() == 4);
  const auto classes = c.EffectiveStorageClasses();
  CHECK(classes[0].dir == "/srv/ev/volumes");
  CHECK(classes[0].format == StorageClass::Format::kRaw);
  CHECK(classes[1].dir == "/data/volumes");
  CHECK(classes[1].format == StorageClass::Format::kQcow2);
  CHECK_FALSE(classes[1].is_default);
  CHECK(classes[2].type == StorageClass::Type::kBlock);
  CHECK(classes[2].volume_group == "vg0");
  CHECK(classes[3].devices == std::vector<std::string>{"/dev/sdb", "/dev/sdc"});
  CHECK(c.DefaultStorageClass() == "local");
  CHECK(ChangedKeys(Config{}, c) == std::vector<std::string>{"stateDir", "storage.classes"});

  // An empty list: no class at all (claims stay Pending); "classes:" alone: the default.
  CHECK(MustParse("storage:\n  classes: []\n").storage.classes.empty());
  CHECK(MustParse("storage:\n  classes: []\n").DefaultStorageClass().empty());
  CHECK(MustParse("storage:\n  classes:\n") == Config{});

  const std::string head = "storage:\n  classes:\n";
  CHECK_THAT(ParseError(head + "    - name: a\n      type: tape\n"),
             Catch::Contains("test.yaml:4:13: storage.classes[0].type: must be \"files\" or "
                             "\"block\", got \"tape\""));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: files\n      dir: volumes\n"),
             Catch::Contains("test.yaml:5:12: storage.classes[0].dir: must be an absolute path"));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: files\n      dir: /a/../b\n"),
             Catch::Contains("storage.classes[0].dir: must not contain"));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: block\n"),
             Catch::Contains("storage.classes[0]: block storage class \"a\" needs exactly one "
                             "of volumeGroup (LVM) or devices"));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: block\n      devices: []\n"),
             Catch::Contains("storage.classes[0].devices: at least one device is required"));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: block\n      volumeGroup: vg0\n"
                               "      devices: [/dev/sdb]\n"),
             Catch::Contains("needs exactly one of volumeGroup (LVM) or devices"));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: block\n      volumeGroup: -vg\n"),
             Catch::Contains("storage.classes[0].volumeGroup: not an LVM volume group name"));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: block\n      devices: [sdb]\n"),
             Catch::Contains("storage.classes[0].devices[0]: must be an absolute path"));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: files\n      volumeGroup: vg0\n"),
             Catch::Contains("storage.classes[0].volumeGroup: only a class of type block"));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: block\n      volumeGroup: vg0\n"
                               "      format: raw\n"),
             Catch::Contains("storage.classes[0].format: only a class of type files"));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: files\n      format: vmdk\n"),
             Catch::Contains("storage.classes[0].format: must be \"qcow2\" or \"raw\""));
  CHECK_THAT(ParseError(head + "    - type: files\n"),
             Catch::Contains("storage.classes[0]: a storage class needs a name"));
  CHECK_THAT(ParseError(head + "    - name: a\n"),
             Catch::Contains("storage.classes[0]: storage class \"a\" needs a type"));
  CHECK_THAT(ParseError(head + "    - name: Fast_SSD\n      type: files\n"),
             Catch::Contains("storage.classes[0].name: must be a lowercase DNS subdomain"));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: files\n      size: 1Gi\n"),
             Catch::Contains("test.yaml:5:7: unknown key \"storage.classes[0].size\""));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: files\n    - name: a\n"
                               "      type: files\n"),
             Catch::Contains("storage.classes[1].name: duplicate class \"a\""));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: files\n      default: true\n"
                               "    - name: b\n      type: files\n      default: true\n"),
             Catch::Contains("test.yaml:8:16: storage.classes[1].default: two default classes: "
                             "\"a\" and \"b\""));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: block\n      devices: [/dev/sdb]\n"
                               "    - name: b\n      type: block\n      devices: [/dev/sdb]\n"),
             Catch::Contains("storage.classes[1].devices[0]: device \"/dev/sdb\" is already in "
                             "class \"a\""));
  CHECK_THAT(ParseError(head + "    - name: a\n      type: block\n"
                               "      devices: [/dev/sdb, /dev/sdb]\n"),
             Catch::Contains("storage.classes[0].devices[1]: duplicate device"));
  CHECK_THAT(ParseError("storage:\n  classes: local\n"),
             Catch::Contains("storage.classes: expected a list"));
  CHECK_THAT(ParseError(head + "    - local\n"),
             Catch::Contains("storage.classes[0]: expected a mapping"));
}

}  // namespace
}  // namespace edgevirt::daemon

namespace edgevirt::daemon {
namespace {

TEST_CASE("network keys") {
  Config c = MustParse(R"(network:
  hostNetworks:
    - name: lan
      bridge: br-lan.100
    - name: uplink
      macvtap: enp3s0f1
      macvtapMode: vepa
    - name: dmz
      macvtap: eth2
)");
  REQUIRE(c.network.host_networks.size() == 3);
  CHECK(c.network.host_networks[0] == HostNetworkConfig{"lan", "br-lan.100", "", "bridge"});
  CHECK(c.network.host_networks[1] == HostNetworkConfig{"uplink", "", "enp3s0f1", "vepa"});
  CHECK(c.network.host_networks[2] == HostNetworkConfig{"dmz", "", "eth2", "bridge"});
  CHECK(ChangedKeys(Config{}, c) == std::vector<std::string>{"network.hostNetworks"});
  CHECK(MustParse("network:\n  hostNetworks:\n") == Config{});
  CHECK(MustParse("network:\n  nodePortRange: 80-80\n").network.node_port_last == 80u);
  CHECK(MustParse("network:\n  cidr: 10.0.0.0/30\n").network.cidr == "10.0.0.0/30");
  // Prefixes that do not overlap, either way round.
  CHECK(MustParse("network:\n  cidr: 10.96.0.0/24\n  serviceCIDR: 10.97.0.0/16\n")
            .network.service_cidr == "10.97.0.0/16");

  const std::string n = "network:\n";
  CHECK_THAT(ParseError(n + "  bridge: a-bridge-too-long\n"),
             Catch::Contains("test.yaml:2:11: network.bridge: not a network interface name"));
  CHECK_THAT(ParseError(n + "  bridge: br/0\n"), Catch::Contains("network.bridge: not a"));
  CHECK_THAT(ParseError(n + "  bridge: \"br 0\"\n"), Catch::Contains("network.bridge: not a"));
  CHECK_THAT(ParseError(n + "  bridge: ..\n"), Catch::Contains("network.bridge: not a"));
  CHECK_THAT(ParseError(n + "  bridge: [a]\n"),
             Catch::Contains("network.bridge: expected a string, got a list"));
  CHECK_THAT(ParseError(n + "  cidr: 10.208.0.0\n"),
             Catch::Contains("test.yaml:2:9: network.cidr: invalid IPv4 prefix \"10.208.0.0\" "
                             "(no /length"));
  CHECK_THAT(ParseError(n + "  cidr: 10.208.0.1/24\n"), Catch::Contains("host bits are set"));
  CHECK_THAT(ParseError(n + "  cidr: 10.208.256.0/24\n"),
             Catch::Contains("expected four decimal parts 0-255"));
  CHECK_THAT(ParseError(n + "  cidr: 10.208.0.0/33\n"), Catch::Contains("length must be 0-32"));
  CHECK_THAT(ParseError(n + "  cidr: 010.208.0.0/24\n"), Catch::Contains("invalid IPv4 prefix"));
  CHECK_THAT(ParseError(n + "  cidr: fd00::/64\n"), Catch::Contains("invalid IPv4 prefix"));
  CHECK_THAT(ParseError(n + "  cidr: 10.208.0.0/31\n"),
             Catch::Contains("network.cidr: prefix /31 leaves no room for hosts (at most /30)"));
  CHECK_THAT(ParseError(n + "  serviceCIDR: 10.0.0.0/32\n"),
             Catch::Contains("network.serviceCIDR: prefix /32 leaves no room"));
  CHECK_THAT(ParseError(n + "  serviceCIDR: 10.208.0.0/16\n"),
             Catch::Contains("test.yaml:2:16: network.serviceCIDR: \"10.208.0.0/16\" overlaps "
                             "network.cidr \"10.208.0.0/24\""));
  CHECK_THAT(ParseError(n + "  cidr: 10.96.5.0/24\n"),
             Catch::Contains("test.yaml:2:9: network.serviceCIDR: \"10.96.0.0/16\" overlaps"));
  CHECK_THAT(ParseError(n + "  mtu: 67\n"),
             Catch::Contains("network.mtu: must be 0 (the kernel's default) or 68-65535"));
  CHECK_THAT(ParseError(n + "  mtu: 65536\n"), Catch::Contains("network.mtu: must be between"));
  CHECK_THAT(ParseError(n + "  mtu: big\n"),
             Catch::Contains("network.mtu: expected an integer, got \"big\""));
  for (const char* range :
       {"30000", "0-100", "200-100", "1-65536", "a-b", "-5-10", "1--2", "+1-2", " 1-2"}) {
    INFO(range);
    CHECK_THAT(ParseError(n + "  nodePortRange: \"" + range + "\"\n"),
               Catch::Contains("network.nodePortRange: must be \"A-B\" with 1 <= A <= B <= 65535"));
  }
  CHECK_THAT(ParseError(n + "  nodeports: 1-2\n"),
             Catch::Contains("test.yaml:2:3: unknown key \"network.nodeports\""));

  const std::string h = n + "  hostNetworks:\n";
  CHECK_THAT(ParseError(h + "    - name: lan\n"),
             Catch::Contains("network.hostNetworks[0]: host network \"lan\" needs exactly one of "
                             "bridge (a host bridge) or macvtap (a host NIC)"));
  CHECK_THAT(ParseError(h + "    - name: lan\n      bridge: br0\n      macvtap: eth1\n"),
             Catch::Contains("needs exactly one of bridge"));
  CHECK_THAT(ParseError(h + "    - bridge: br0\n"),
             Catch::Contains("network.hostNetworks[0]: a host network needs a name"));
  CHECK_THAT(ParseError(h + "    - name: Lan_1\n      bridge: br0\n"),
             Catch::Contains("network.hostNetworks[0].name: must be a lowercase DNS label"));
  CHECK_THAT(ParseError(h + "    - name: lan\n      bridge: br0\n    - name: lan\n"
                            "      macvtap: eth1\n"),
             Catch::Contains("test.yaml:5:13: network.hostNetworks[1].name: duplicate host "
                             "network \"lan\""));
  CHECK_THAT(ParseError(h + "    - name: lan\n      macvtap: eth1:0\n"),
             Catch::Contains("network.hostNetworks[0].macvtap: not a network interface name"));
  CHECK_THAT(ParseError(h + "    - name: lan\n      macvtap: eth1\n      macvtapMode: loop\n"),
             Catch::Contains("network.hostNetworks[0].macvtapMode: must be bridge, vepa, private "
                             "or passthrough, got \"loop\""));
  CHECK_THAT(ParseError(h + "    - name: lan\n      bridge: br0\n      macvtapMode: vepa\n"),
             Catch::Contains("network.hostNetworks[0].macvtapMode: only a macvtap host network"));
  CHECK_THAT(ParseError(h + "    - name: lan\n      bridge: br0\n      vlan: 5\n"),
             Catch::Contains("test.yaml:5:7: unknown key \"network.hostNetworks[0].vlan\""));
  CHECK_THAT(ParseError(h + "    - lan\n"),
             Catch::Contains("network.hostNetworks[0]: expected a mapping, got \"lan\""));
  CHECK_THAT(ParseError(n + "  hostNetworks: lan\n"),
             Catch::Contains("network.hostNetworks: expected a list"));
}

TEST_CASE("IPv4 prefixes") {
  auto p = ParseIpv4Prefix("10.208.0.0/24");
  REQUIRE(p);
  CHECK(*p == Ipv4Prefix{0x0ad00000, 24});
  auto all = ParseIpv4Prefix("0.0.0.0/0");
  REQUIRE(all);
  CHECK(all->Overlaps(*p));
  CHECK(p->Overlaps(*all));
  CHECK_FALSE(p->Overlaps(*ParseIpv4Prefix("10.208.1.0/24")));
  CHECK(p->Overlaps(*ParseIpv4Prefix("10.208.0.128/25")));
  CHECK(ParseIpv4Prefix("192.168.1.7/32"));
  CHECK_FALSE(ParseIpv4Prefix("192.168.1.7/31"));
  CHECK_FALSE(ParseIpv4Prefix("1.2.3/8"));
  CHECK_FALSE(ParseIpv4Prefix("1.2.3.4.5/8"));
  CHECK_FALSE(ParseIpv4Prefix("1.2.3.0/"));
  CHECK_FALSE(ParseIpv4Prefix("1.2.3.0/08"));
}

}  // namespace
}  // namespace edgevirt::daemon
