// Integration test of edgevirtd's journal records against a real systemd-journald.
//
// systemd is not PID 1 on the test machines, but systemd-journald runs standalone. The test
// runs it in a private mount namespace (daemon.cmake wraps it in `unshare -m --propagation
// private`) over throw-away tmpfs mounts, so nothing reaches the host's journal or disk:
//   /run                  journald creates /run/systemd/journal/socket (where sd_journal_sendv
//                         sends) and writes its volatile journal to /run/log/journal/<machine-id>
//   /var/log/journal      hidden too, so even a journald told to persist writes nothing lasting
//                         (or /var/log when there is no /var/log/journal to mount on)
//   /etc/systemd/journald.conf  replaced with a known configuration (Storage=volatile, no rate
//                         limit, no forwarding, no kernel log import), whatever the host's says
//   /etc/machine-id       replaced with a generated id: journald names its directory after it and
//                         refuses to start without one (hosts built from images may lack it)
// Then edgevirtd starts with `log.target: auto` (no config file: the default), finds the journal
// socket, and the test reads its records back with `journalctl -D /run/log/journal -o json`.
#include <nlohmann/json.hpp>

#include <random>

#include "tests/integration/daemon_test_util.h"

namespace edgevirt::testing {
namespace {

constexpr const char* kJournald = "/lib/systemd/systemd-journald";

// A fresh 128-bit id in machine-id(5) form: 32 lower-case hex digits and a newline.
std::string NewMachineId() {
  std::random_device rd;
  std::string id;
  const char* hex = "0123456789abcdef";
  for (int i = 0; i < 32; ++i) id += hex[rd() % 16];
  return id + "\n";
}

void BindMount(const std::filesystem::path& from, const std::filesystem::path& to) {
  int r = ::mount(from.c_str(), to.c_str(), nullptr, MS_BIND, nullptr);
  INFO("bind " << from << " on " << to << ": " << std::strerror(errno));
  REQUIRE(r == 0);
}

// Prepares the private mounts described in the file comment. `scratch` is a tmpfs directory of
// the test's own (files to bind-mount from, overlay layers).
void PrepareJournalHost(const std::filesystem::path& scratch) {
  EnterPrivateMountNamespace();
  MountTmpfs("/run");
  if (std::filesystem::is_directory("/var/log/journal")) {
    MountTmpfs("/var/log/journal");
  } else {
    MountTmpfs("/var/log");
  }
  if (std::filesystem::exists("/etc/edgevirt")) MountTmpfs("/etc/edgevirt");

  const auto machine_id = scratch / "machine-id";
  WriteFile(machine_id, NewMachineId());
  if (std::filesystem::exists("/etc/machine-id")) {
    BindMount(machine_id, "/etc/machine-id");
  } else {
    // Nothing to bind-mount on: lay a tmpfs-backed overlay over /etc, visible only here, and
    // add the file in its upper layer.
    std::filesystem::create_directories(scratch / "etc-upper");
    std::filesystem::create_directories(scratch / "etc-work");
    const std::string opts = "lowerdir=/etc,upperdir=" + (scratch / "etc-upper").string() +
                             ",workdir=" + (scratch / "etc-work").string();
    int r = ::mount("overlay", "/etc", "overlay", 0, opts.c_str());
    INFO("overlay on /etc: " << std::strerror(errno));
    REQUIRE(r == 0);
    WriteFile("/etc/machine-id", ReadFile(machine_id));
  }

  const auto conf = scratch / "journald.conf";
  WriteFile(conf,
            "[Journal]\nStorage=volatile\nRateLimitIntervalSec=0\nRateLimitBurst=0\n"
            "ForwardToSyslog=no\nForwardToKMsg=no\nForwardToConsole=no\nForwardToWall=no\n"
            "ReadKMsg=no\nAudit=no\n");
  if (std::filesystem::exists("/etc/systemd/journald.conf")) {
    BindMount(conf, "/etc/systemd/journald.conf");
  }
  // Drop-ins would override the file above.
  if (std::filesystem::is_directory("/etc/systemd/journald.conf.d")) {
    MountTmpfs("/etc/systemd/journald.conf.d");
  }
  REQUIRE_FALSE(std::filesystem::exists("/run/systemd/journal/socket"));
  REQUIRE_FALSE(std::filesystem::exists("/etc/edgevirt/edgevirtd.yaml"));
}

// Every edgevirtd record journald holds, as JSON objects.
std::vector<nlohmann::json> ReadEdgevirtdRecords(const std::filesystem::path& out_dir) {
  // --sync: journald writes what it has received before answering (over its varlink socket
  // /run/systemd/journal/io.systemd.journal), so every record sent so far is readable.
  auto [sync_code, sync_out] = RunCommand({"/usr/bin/journalctl", "--sync"}, out_dir);
  CHECK(sync_code == 0);
  // -D: read the files of this journald directly, whatever the host's journal configuration.
  auto [code, out] = RunCommand({"/usr/bin/journalctl", "-D", "/run/log/journal", "-o", "json",
                                 "--no-pager", "SYSLOG_IDENTIFIER=edgevirtd"},
                                out_dir);
  REQUIRE(code == 0);
  std::vector<nlohmann::json> records;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    REQUIRE_FALSE(j.is_discarded());
    records.push_back(std::move(j));
  }
  return records;
}

// The one value of a field. journalctl -o json prints a field a record carries more than once
// as an array; a location field given twice means libsystemd added its own CODE_FILE/LINE/FUNC
// (of the logger, not the call site) because common/log.cc was compiled without
// SD_JOURNAL_SUPPRESS_LOCATION (sd-journal.h turns sd_journal_sendv into a macro that adds them).
std::string Single(const nlohmann::json& record, const std::string& field) {
  INFO(field << " = " << (record.contains(field) ? record[field].dump() : "(absent)"));
  REQUIRE(record.contains(field));
  REQUIRE(record[field].is_string());
  return record[field].get<std::string>();
}

const nlohmann::json* FindByMessage(const std::vector<nlohmann::json>& records,
                                    const std::string& part) {
  for (const auto& r : records) {
    if (r.contains("MESSAGE") && r["MESSAGE"].is_string() &&
        r["MESSAGE"].get<std::string>().find(part) != std::string::npos) {
      return &r;
    }
  }
  return nullptr;
}

TEST_CASE("edgevirtd writes structured records to the journal") {
  // The scratch dir must exist before /run is covered, and must not live under it.
  TempDir scratch("ev-journal");
  PrepareJournalHost(scratch.path());

  Child journald({kJournald}, {{"NOTIFY_SOCKET", std::nullopt}}, scratch.path(), "journald");
  REQUIRE(WaitUntil(
      [] {
        struct stat st;
        return ::stat("/run/systemd/journal/socket", &st) == 0 && S_ISSOCK(st.st_mode);
      },
      10s));
  INFO("journald stderr:\n" << journald.Stderr());
  REQUIRE(journald.Running());

  NotifySocket notify(scratch / "notify.sock");
  const std::string state_dir = (scratch / "state").string();
  const std::string api_sock = (scratch / "api.sock").string();
  Child daemon({EdgevirtdPath(), "--state-dir", state_dir, "--listen", "unix:" + api_sock},
               {{"NOTIFY_SOCKET", notify.path().string()}, {"WATCHDOG_USEC", std::nullopt}},
               scratch.path(), "edgevirtd");
  INFO("edgevirtd stderr:\n" << daemon.Stderr());
  REQUIRE(notify.WaitFor("READY=1", 20s));
  // A 404 is not logged at info; this only proves the daemon serves while logging.
  auto reply = HttpGet("unix:" + api_sock, "/readyz");
  REQUIRE(reply.has_value());
  CHECK(reply->status == 200);
  daemon.Signal(SIGTERM);
  REQUIRE(daemon.Wait(10s) == std::optional<int>(0));

  // journald receives datagrams asynchronously; retry until both records are there.
  std::vector<nlohmann::json> records;
  const bool found = WaitUntil(
      [&] {
        records = ReadEdgevirtdRecords(scratch.path());
        return FindByMessage(records, "serving on") && FindByMessage(records, "edgevirtd stopped");
      },
      10s);
  INFO("records: " << nlohmann::json(records).dump(1));
  REQUIRE(found);

  const nlohmann::json& start = *FindByMessage(records, "serving on");
  CHECK(start["SYSLOG_IDENTIFIER"] == "edgevirtd");
  CHECK(start["PRIORITY"] == "6");  // info
  // The call site's location, each field exactly once.
  CHECK(Single(start, "CODE_FILE") == "daemon/main.cc");
  CHECK(std::stoi(Single(start, "CODE_LINE")) > 0);
  CHECK(Single(start, "CODE_FUNC") == "Run");
  CHECK(start["STATE_DIR"] == state_dir);
  CHECK(start["LISTEN"] == "unix:" + api_sock);
  CHECK(start["CONFIG_FILE"] == "(embedded defaults)");
  CHECK(start["VERSION"] == EDGEVIRT_VERSION);
  CHECK(start["LOG_SINK"] == "journal");
  // journald's own trusted fields prove the record came from the daemon's process over the
  // native protocol (sd_journal_sendv), not from its stderr.
  CHECK(start["_PID"] == std::to_string(daemon.pid()));
  CHECK(start["_TRANSPORT"] == "journal");

  const nlohmann::json& stop = *FindByMessage(records, "edgevirtd stopped");
  CHECK(stop["PRIORITY"] == "6");
  CHECK(stop["SIGNAL"] == "SIGTERM");
  CHECK(Single(stop, "CODE_FILE") == "daemon/main.cc");
  CHECK(stop.contains("STOP_MS"));

  // Every record carries the common fields.
  for (const auto& r : records) {
    CHECK(r.contains("MESSAGE"));
    CHECK(r.contains("PRIORITY"));
    CHECK(r.contains("CODE_FILE"));
    CHECK(r.contains("CODE_LINE"));
    CHECK(r.contains("CODE_FUNC"));
  }

  // With the journal found and stderr not a terminal, `auto` sends records to the journal only.
  CHECK_THAT(daemon.Stderr(), !Catch::Contains("serving on"));

  journald.Signal(SIGTERM);
  CHECK(journald.Wait(10s).has_value());
}

}  // namespace
}  // namespace edgevirt::testing
