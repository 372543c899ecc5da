// Integration test of the real edgevirtd binary as systemd sees it: sd_notify over a datagram
// socket the test owns (NOTIFY_SOCKET), the watchdog, READY only once the API answers, signals,
// exit codes, and the command line.
//
// Runs in a private mount namespace (see daemon.cmake) with a fresh tmpfs on /run and, if the
// host has one, on /etc/edgevirt: so the daemon really starts without any configuration file,
// its default runDir (/run/edgevirt) is created in the throw-away tmpfs, and with no journal
// socket in sight `log.target: auto` writes to stderr, where the test reads the records.
#include <nlohmann/json.hpp>

#include "tests/integration/daemon_test_util.h"

namespace edgevirt::testing {
namespace {

// Once per process: hide the host's /run and /etc/edgevirt (see the file comment).
void PrepareHost() {
  static bool done = false;
  if (done) return;
  EnterPrivateMountNamespace();
  MountTmpfs("/run");
  if (std::filesystem::exists("/etc/edgevirt")) MountTmpfs("/etc/edgevirt");
  REQUIRE_FALSE(std::filesystem::exists("/etc/edgevirt/edgevirtd.yaml"));
  REQUIRE_FALSE(std::filesystem::exists("/run/systemd/journal/socket"));
  done = true;
}

// The env of a daemon under a fake service manager.
std::map<std::string, std::optional<std::string>> NotifyEnv(const NotifySocket& sock,
                                                            bool watchdog = true) {
  return {{"NOTIFY_SOCKET", sock.path().string()},
          {"WATCHDOG_USEC", watchdog ? std::optional<std::string>("400000") : std::nullopt},
          {"WATCHDOG_PID", std::nullopt},
          {"LISTEN_FDS", std::nullopt}};
}

// "STATUS=Serving on unix:/x/api.sock, http://127.0.0.1:41234" -> the addresses.
std::vector<std::string> ServingAddresses(const NotifySocket& sock) {
  for (const auto& s : sock.StartingWith("STATUS=Serving on ")) {
    std::vector<std::string> out;
    std::string rest = s.substr(std::string("STATUS=Serving on ").size());
    size_t pos = 0;
    while (pos <= rest.size()) {
      size_t comma = rest.find(", ", pos);
      out.push_back(rest.substr(pos, comma - pos));
      if (comma == std::string::npos) break;
      pos = comma + 2;
    }
    return out;
  }
  return {};
}

std::string FindTcp(const std::vector<std::string>& addrs) {
  for (const auto& a : addrs) {
    if (a.rfind("http://", 0) == 0) return a;
  }
  return "";
}

TEST_CASE("starts without a config file, READY after the API answers, watchdog, SIGTERM") {
  PrepareHost();
  TempDir tmp("ev-notify");
  NotifySocket notify(tmp / "notify.sock");
  const std::string api_sock = (tmp / "api.sock").string();
  const std::string state_dir = (tmp / "state").string();

  Child daemon({EdgevirtdPath(), "--state-dir", state_dir, "--listen", "unix:" + api_sock,
                "--listen", "http://127.0.0.1:0"},
               NotifyEnv(notify), tmp.path(), "edgevirtd");

  REQUIRE(notify.WaitFor("READY=1", 20s));
  // Right at READY the API already answers: the health endpoints on the unix socket, and
  // /readyz reports ready.
  {
    auto healthz = HttpGet("unix:" + api_sock, "/healthz");
    REQUIRE(healthz.has_value());
    CHECK(healthz->status == 200);
    CHECK(healthz->body == "ok");
    auto readyz = HttpGet("unix:" + api_sock, "/readyz");
    REQUIRE(readyz.has_value());
    CHECK(readyz->status == 200);
  }
  INFO("notify messages:\n" << notify.Dump() << "stderr:\n" << daemon.Stderr());
  CHECK(notify.Count("READY=1") == 1);
  CHECK(notify.Count("STATUS=Opening state") == 1);
  // STATUS=Opening state came before READY=1.
  CHECK(notify.messages().front().line == "STATUS=Opening state");

  const auto addrs = ServingAddresses(notify);
  REQUIRE(addrs.size() == 2);
  CHECK(addrs[0] == "unix:" + api_sock);
  const std::string tcp = FindTcp(addrs);
  REQUIRE_FALSE(tcp.empty());
  CHECK(tcp != "http://127.0.0.1:0");  // the real port of port 0
  {
    auto readyz = HttpGet(tcp, "/readyz?verbose");
    REQUIRE(readyz.has_value());
    CHECK(readyz->status == 200);
    CHECK_THAT(readyz->body,
               Catch::Contains("[+]store ok") && Catch::Contains("readyz check passed"));
    // The KubeVirt API is served (to root on the unix socket without a token; plain HTTP wants
    // a token by default)...
    auto anonymous = HttpGet(tcp, "/apis/kubevirt.io/v1");
    REQUIRE(anonymous.has_value());
    CHECK(anonymous->status == 401);
    CHECK(nlohmann::json::parse(anonymous->body).value("reason", "") == "Unauthorized");
    auto api = HttpGet("unix:" + api_sock, "/apis/kubevirt.io/v1");
    REQUIRE(api.has_value());
    CHECK(api->status == 200);
    CHECK(nlohmann::json::parse(api->body).value("kind", "") == "APIResourceList");
    // ...and everything else is Kubernetes' 404 Status.
    auto other = HttpGet("unix:" + api_sock, "/no/such/path");
    REQUIRE(other.has_value());
    CHECK(other->status == 404);
    CHECK(nlohmann::json::parse(other->body) == nlohmann::json::parse(R"({
      "kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
      "message":"the server could not find the requested resource","reason":"NotFound",
      "details":{},"code":404})"));
  }

  // WATCHDOG_USEC=400ms: a ping every 200 ms, so at least 3 within a second.
  const size_t pings_before = notify.Count("WATCHDOG=1");
  notify.Pump(1100ms);
  CHECK(notify.Count("WATCHDOG=1") - pings_before >= 3);

  // The state directory was created private but traversable (QEMU runs unprivileged and
  // reaches its per-VMI files below it), with the store inside, private.
  struct stat st;
  REQUIRE(::stat(state_dir.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0711);
  CHECK(std::filesystem::is_directory(state_dir + "/state"));
  REQUIRE(::stat((state_dir + "/state").c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0700);
  // The default runDir, in this test's tmpfs /run.
  CHECK(std::filesystem::is_directory("/run/edgevirt"));

  // The startup record, on stderr because there is no journal here.
  const std::string err_at_start = daemon.Stderr();
  CHECK_THAT(err_at_start, Catch::Contains("STATE_DIR=" + state_dir) &&
                               Catch::Contains("LISTEN=unix:" + api_sock + "," + tcp) &&
                               Catch::Contains("CONFIG_FILE=(embedded defaults)"));

  const auto sigterm_at = Clock::now();
  daemon.Signal(SIGTERM);
  CHECK(notify.WaitFor("STOPPING=1", 5s));
  auto code = daemon.Wait(10s);
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  // Well within shutdown.timeout (30s by default).
  CHECK(Clock::now() - sigterm_at < 5s);
  CHECK_FALSE(std::filesystem::exists(api_sock));
  CHECK_THAT(daemon.Stderr(), Catch::Contains("edgevirtd stopped SIGNAL=SIGTERM"));
  // No READY after STOPPING, and no API any more.
  CHECK(notify.Count("READY=1") == 1);
  CHECK_FALSE(HttpGet(tcp, "/readyz", 1s).has_value());
}

TEST_CASE("SIGINT stops gracefully too; no watchdog pings without WATCHDOG_USEC") {
  PrepareHost();
  TempDir tmp("ev-notify");
  NotifySocket notify(tmp / "notify.sock");
  const std::string api_sock = (tmp / "api.sock").string();
  Child daemon(
      {EdgevirtdPath(), "--state-dir", (tmp / "state").string(), "--listen", "unix:" + api_sock},
      NotifyEnv(notify, /*watchdog=*/false), tmp.path(), "edgevirtd");
  REQUIRE(notify.WaitFor("READY=1", 20s));
  notify.Pump(500ms);
  CHECK(notify.Count("WATCHDOG=1") == 0);
  daemon.Signal(SIGINT);
  auto code = daemon.Wait(10s);
  REQUIRE(code.has_value());
  CHECK(*code == 0);
  notify.Pump(200ms);
  CHECK(notify.Count("STOPPING=1") == 1);
  CHECK_FALSE(std::filesystem::exists(api_sock));
  CHECK_THAT(daemon.Stderr(), Catch::Contains("SIGNAL=SIGINT"));
}

TEST_CASE("the watchdog withholds pings once the API stops answering") {
  PrepareHost();
  TempDir tmp("ev-notify");
  NotifySocket notify(tmp / "notify.sock");
  const std::string api_sock = (tmp / "api.sock").string();
  Child daemon({EdgevirtdPath(), "--state-dir", (tmp / "state").string(), "--listen",
                "unix:" + api_sock, "--listen", "http://127.0.0.1:0"},
               NotifyEnv(notify), tmp.path(), "edgevirtd");
  REQUIRE(notify.WaitFor("READY=1", 20s));
  REQUIRE(notify.WaitForCount("WATCHDOG=1", 2, 2s));
  // The watchdog probes /livez through the unix socket; with its file gone, connecting fails
  // as it would with hung io threads, and systemd must get no more pings.
  REQUIRE(::unlink(api_sock.c_str()) == 0);
  notify.Pump(300ms);  // a probe may have been in flight
  const size_t pings = notify.Count("WATCHDOG=1");
  notify.Pump(800ms);
  INFO("stderr:\n" << daemon.Stderr());
  CHECK(notify.Count("WATCHDOG=1") == pings);
  CHECK_THAT(daemon.Stderr(), Catch::Contains("watchdog: health check failed"));
  CHECK(daemon.Running());
  daemon.Signal(SIGTERM);
  REQUIRE(daemon.Wait(10s) == std::optional<int>(0));
}

TEST_CASE("a config with an unknown key exits 2 with the key and line, never READY") {
  PrepareHost();
  TempDir tmp("ev-notify");
  NotifySocket notify(tmp / "notify.sock");
  const auto config = tmp / "edgevirtd.yaml";
  WriteFile(config, "# line 1\nstateDir: " + (tmp / "state").string() +
                        "\napi:\n  ioThreads: 2\n  listn:\n    - unix:/tmp/x.sock\n");
  Child daemon({EdgevirtdPath(), "--config", config.string()}, NotifyEnv(notify), tmp.path(),
               "edgevirtd");
  auto code = daemon.Wait(10s);
  REQUIRE(code.has_value());
  CHECK(*code == 2);
  CHECK_THAT(daemon.Stderr(), Catch::Contains(config.string() + ":5:3: unknown key \"api.listn\""));
  notify.Pump(200ms);
  CHECK(notify.Count("READY=1") == 0);
  CHECK_FALSE(std::filesystem::exists(tmp / "state"));  // stopped before touching anything
}

TEST_CASE("a runtime failure exits 1 and never sends READY") {
  PrepareHost();
  TempDir tmp("ev-notify");
  NotifySocket notify(tmp / "notify.sock");
  WriteFile(tmp / "not-a-dir", "x");
  Child daemon({EdgevirtdPath(), "--state-dir", (tmp / "not-a-dir").string(), "--listen",
                "unix:" + (tmp / "api.sock").string()},
               NotifyEnv(notify), tmp.path(), "edgevirtd");
  auto code = daemon.Wait(10s);
  REQUIRE(code.has_value());
  CHECK(*code == 1);
  CHECK_THAT(daemon.Stderr(), Catch::Contains("not a directory"));
  notify.Pump(200ms);
  CHECK(notify.Count("READY=1") == 0);
  auto status = notify.StartingWith("STATUS=Failed");
  CHECK(status.size() == 1);
}

TEST_CASE("check-config") {
  PrepareHost();
  TempDir tmp("ev-notify");
  const auto good = tmp / "good.yaml";
  WriteFile(good, "log:\n  level: debug\nshutdown:\n  timeout: 10s\n");
  {
    Child c({EdgevirtdPath(), "check-config", good.string()}, {}, tmp.path(), "check");
    REQUIRE(c.Wait(10s) == std::optional<int>(0));
    CHECK(c.Stdout() == good.string() + ": ok\n");
  }
  {
    // The example shipped with the sources is valid.
    const std::string example = std::string(EDGEVIRT_SOURCE_DIR) + "/examples/edgevirtd.yaml";
    Child c({EdgevirtdPath(), "check-config", example}, {}, tmp.path(), "check");
    REQUIRE(c.Wait(10s) == std::optional<int>(0));
    CHECK(c.Stdout() == example + ": ok\n");
  }
  const auto bad = tmp / "bad.yaml";
  WriteFile(bad, "shutdown:\n  timeout: soon\n");
  {
    Child c({EdgevirtdPath(), "check-config", bad.string()}, {}, tmp.path(), "check");
    REQUIRE(c.Wait(10s) == std::optional<int>(1));
    CHECK_THAT(c.Stderr(), Catch::Contains(bad.string() + ":2:12: shutdown.timeout: "
                                                          "invalid duration \"soon\""));
    CHECK(c.Stdout().empty());
  }
  {
    Child c({EdgevirtdPath(), "check-config", (tmp / "missing.yaml").string()}, {}, tmp.path(),
            "check");
    REQUIRE(c.Wait(10s) == std::optional<int>(1));
    CHECK_THAT(c.Stderr(), Catch::Contains("missing.yaml"));
  }
}

TEST_CASE("--version, --help and usage errors") {
  PrepareHost();
  TempDir tmp("ev-notify");
  {
    Child c({EdgevirtdPath(), "--version"}, {}, tmp.path(), "version");
    REQUIRE(c.Wait(10s) == std::optional<int>(0));
    CHECK(c.Stdout() == std::string("edgevirtd ") + EDGEVIRT_VERSION + "\n");
  }
  {
    Child c({EdgevirtdPath(), "--help"}, {}, tmp.path(), "help");
    REQUIRE(c.Wait(10s) == std::optional<int>(0));
    const std::string out = c.Stdout();
    for (const char* word : {"--config", "--state-dir", "--listen", "--log-level", "--version",
                             "--help", "check-config"}) {
      CHECK_THAT(out, Catch::Contains(word));
    }
  }
  {
    Child c({EdgevirtdPath(), "--bogus"}, {}, tmp.path(), "bogus");
    REQUIRE(c.Wait(10s) == std::optional<int>(2));
    CHECK_THAT(c.Stderr(),
               Catch::Contains("unknown flag \"--bogus\"") && Catch::Contains("Usage:"));
  }
  {
    Child c({EdgevirtdPath(), "--listen", "http://0.0.0.0:8080"}, {}, tmp.path(), "listen");
    REQUIRE(c.Wait(10s) == std::optional<int>(2));
    CHECK_THAT(c.Stderr(), Catch::Contains("--listen http://0.0.0.0:8080"));
  }
}

TEST_CASE("SIGHUP re-reads the file and applies log.level") {
  PrepareHost();
  TempDir tmp("ev-notify");
  NotifySocket notify(tmp / "notify.sock");
  const auto config = tmp / "edgevirtd.yaml";
  const std::string api_sock = (tmp / "api.sock").string();
  const std::string base = "stateDir: " + (tmp / "state").string() +
                           "\napi:\n  listen: [\"unix:" + api_sock +
                           "\"]\nlog:\n  target: stderr\n";
  WriteFile(config, base + "  level: info\n");
  Child daemon({EdgevirtdPath(), "--config", config.string()}, NotifyEnv(notify), tmp.path(),
               "edgevirtd");
  REQUIRE(notify.WaitFor("READY=1", 20s));
  INFO("stderr:\n" << daemon.Stderr());
  // The watchdog's /livez probes would be logged at debug level; at info there is nothing.
  notify.Pump(300ms);
  CHECK_THAT(daemon.Stderr(), !Catch::Contains("[debug]"));

  // An invalid file is refused and the daemon keeps running with what it has.
  WriteFile(config, base + "  level: loud\n");
  daemon.Signal(SIGHUP);
  CHECK(WaitUntil([&] { return daemon.Stderr().find("reload failed") != std::string::npos; }, 5s));
  CHECK_THAT(daemon.Stderr(), Catch::Contains(config.string() + ":6:10: log.level"));
  CHECK(daemon.Running());
  // The sd_notify reload protocol: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
  CHECK(notify.WaitForCount("READY=1", 2, 5s));
  CHECK(notify.Count("RELOADING=1") == 1);
  CHECK(notify.StartingWith("MONOTONIC_USEC=").size() == 1);

  // A valid one: log.level applies at once; another changed key is reported as ignored.
  WriteFile(config, base + "  level: debug\nshutdown:\n  timeout: 7s\n");
  daemon.Signal(SIGHUP);
  CHECK(WaitUntil([&] { return daemon.Stderr().find("[debug]") != std::string::npos; }, 5s));
  const std::string err = daemon.Stderr();
  CHECK_THAT(err, Catch::Contains("log level is now debug"));
  CHECK_THAT(err, Catch::Contains("IGNORED_KEYS=shutdown.timeout"));
  CHECK(err.find("log level is now debug") < err.find("[debug]"));
  CHECK(notify.WaitForCount("READY=1", 3, 5s));
  CHECK(notify.Count("RELOADING=1") == 2);
  auto readyz = HttpGet("unix:" + api_sock, "/readyz");
  REQUIRE(readyz.has_value());
  CHECK(readyz->status == 200);

  daemon.Signal(SIGTERM);
  REQUIRE(daemon.Wait(10s) == std::optional<int>(0));
}

}  // namespace
}  // namespace edgevirt::testing
