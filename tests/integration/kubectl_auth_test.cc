// HTTPS and authentication end to end: the real kubectl over real TLS against the real daemon,
// with the kubeconfigs `edgevirtd kubeconfig` prints (CA data + token, or a client
// certificate), 401 without credentials, 403 for a viewer writing, root on the unix socket
// without a token, the certificate reused across a restart. VMs are disabled (API only).
#include <sys/stat.h>

#include <string>

#include <nlohmann/json.hpp>

#include "tests/integration/kubectl_test_util.h"

namespace edgevirt::testing {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;

// edgevirtd with `unix:<dir>/api.sock` and `https://127.0.0.1:0`, VMs disabled.
class TlsDaemon {
 public:
  explicit TlsDaemon(std::filesystem::path dir) : dir_(std::move(dir)) {
    REQUIRE(EnterPrivateNetns() == 0);
    std::filesystem::create_directories(dir_);
    config_ = dir_ / "edgevirtd.yaml";
    WriteFile(config_, "stateDir: " + (dir_ / "state").string() + "\nrunDir: " +
                           (dir_ / "run").string() + "\napi:\n  listen:\n    - unix:" + socket() +
                           "\n    - https://127.0.0.1:0\n"
                           "vms:\n  enabled: false\n"
                           "log:\n  level: info\n  target: stderr\n");
  }

  void Start() {
    ++starts_;
    notify_ = std::make_unique<NotifySocket>(dir_ / ("notify-" + std::to_string(starts_)));
    child_ = std::make_unique<Child>(
        std::vector<std::string>{EdgevirtdPath(), "--config", config_.string()},
        Env{{"NOTIFY_SOCKET", notify_->path().string()},
            {"WATCHDOG_USEC", std::nullopt},
            {"WATCHDOG_PID", std::nullopt}},
        dir_, "edgevirtd-" + std::to_string(starts_));
    const bool ready = notify_->WaitFor("READY=1", 30s);
    INFO("stderr:\n" << child_->Stderr());
    REQUIRE(ready);
    url_.clear();
    for (const auto& s : notify_->StartingWith("STATUS=Serving on ")) {
      auto at = s.find("https://127.0.0.1:");
      if (at != std::string::npos) url_ = s.substr(at, s.find_first_of(", ", at) - at);
    }
    REQUIRE_FALSE(url_.empty());
  }

  int Stop() {
    child_->Signal(SIGTERM);
    auto code = child_->Wait(20s);
    REQUIRE(code.has_value());
    return *code;
  }

  // `edgevirtd --config F kubeconfig ARGS...`, written to `name`; its path.
  std::filesystem::path Kubeconfig(const std::string& name, std::vector<std::string> args) {
    std::vector<std::string> argv{EdgevirtdPath(), "--config", config_.string(),
                                  "kubeconfig",    "--server", url_};
    argv.insert(argv.end(), args.begin(), args.end());
    auto [code, out] = RunCommand(argv, dir_);
    REQUIRE(code == 0);
    const auto path = dir_ / name;
    WriteFile(path, out);
    return path;
  }

  std::string socket() const { return (dir_ / "api.sock").string(); }
  std::filesystem::path state() const { return dir_ / "state"; }
  const std::string& url() const { return url_; }
  std::string Stderr() const { return child_ ? child_->Stderr() : ""; }

 private:
  std::filesystem::path dir_;
  std::filesystem::path config_;
  std::unique_ptr<NotifySocket> notify_;
  std::unique_ptr<Child> child_;
  std::string url_;
  int starts_ = 0;
};

mode_t Mode(const std::filesystem::path& p) {
  struct stat st {};
  REQUIRE(::stat(p.c_str(), &st) == 0);
  return st.st_mode & 07777;
}

constexpr char kVm[] = R"(apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: tls-vm
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        devices: {}
        resources:
          requests:
            memory: 64Mi
)";

TEST_CASE("kubectl over TLS with the printed kubeconfig; 401, 403, client certificates, unix") {
  TempDir tmp("ev-kubectl-auth");
  TlsDaemon daemon(tmp / "daemon");
  daemon.Start();
  Kubectl k(tmp / "kubectl");
  const auto vm_file = tmp / "vm.yaml";
  WriteFile(vm_file, kVm);

  // First start: a CA, a server certificate and a token file with an admin token.
  CHECK(Mode(daemon.state() / "tokens.csv") == 0600);
  CHECK(Mode(daemon.state() / "pki" / "ca.key") == 0600);
  CHECK(Mode(daemon.state() / "pki" / "server.key") == 0600);
  const std::string server_cert = ReadFile(daemon.state() / "pki" / "server.crt");

  // The admin kubeconfig: kubectl verifies the server with the CA data (no insecure flag).
  const auto admin = daemon.Kubeconfig("admin.kubeconfig", {});
  const std::string admin_text = ReadFile(admin);
  CHECK_THAT(admin_text, Catch::Contains("certificate-authority-data: "));
  CHECK_THAT(admin_text, Catch::Contains("token: "));
  CHECK_THAT(admin_text, Catch::Contains("server: \"" + daemon.url() + "\""));
  const std::string kc = "--kubeconfig=" + admin.string();
  auto created = MustRun(k, {kc, "apply", "-f", vm_file.string()});
  CHECK(created.out == "virtualmachine.kubevirt.io/tls-vm created\n");
  auto got = MustRun(k, {kc, "get", "vm", "tls-vm", "-o", "jsonpath={.spec.runStrategy}"});
  CHECK(got.out == "Halted");
  // A watch streams over TLS and ends cleanly (last chunk, then close_notify) at its timeout.
  {
    const auto at = admin_text.find("token: \"") + 8;
    const std::string token = admin_text.substr(at, admin_text.find('"', at) - at);
    auto [code, events] = RunCommand(
        {"/usr/bin/curl", "-sS", "--cacert", (daemon.state() / "pki" / "ca.crt").string(), "-H",
         "Authorization: Bearer " + token,
         daemon.url() +
             "/apis/kubevirt.io/v1/namespaces/default/virtualmachines?watch=true&timeoutSeconds=1"},
        tmp.path());
    CHECK(code == 0);
    const Json first = Json::parse(events.substr(0, events.find('\n')));
    CHECK(first["type"] == "ADDED");
    CHECK(first["object"]["metadata"]["name"] == "tls-vm");
  }
  // The same user again: the same token (no second line).
  CHECK(ReadFile(daemon.Kubeconfig("admin2.kubeconfig", {})) == admin_text);

  // No credentials (curl: kubectl would prompt for a password): 401 as a Status; the health
  // endpoints stay public.
  {
    const std::string ca = (daemon.state() / "pki" / "ca.crt").string();
    auto [code, body] = RunCommand({"/usr/bin/curl", "-sS", "--cacert", ca,
                                    daemon.url() + "/apis/kubevirt.io/v1/namespaces/default/"
                                                   "virtualmachines"},
                                   tmp.path());
    REQUIRE(code == 0);
    CHECK(Json::parse(body) == Json::parse(R"({"kind":"Status","apiVersion":"v1","metadata":{},
        "status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401})"));
    auto [hcode, healthz] =
        RunCommand({"/usr/bin/curl", "-sS", "--cacert", ca, daemon.url() + "/healthz"}, tmp.path());
    CHECK(hcode == 0);
    CHECK(healthz == "ok");
    // A token nobody has: kubectl reports the 401.
    const auto bad = tmp / "bad.kubeconfig";
    std::string text = admin_text;
    const auto at = text.find("token: \"") + 8;
    text.replace(at, text.find('"', at) - at, "not-a-valid-token-0123456789");
    WriteFile(bad, text);
    auto r = k.Run({"--kubeconfig=" + bad.string(), "get", "vms"});
    CHECK(r.code != 0);
    CHECK_THAT(r.err, Catch::Contains("error: You must be logged in to the server (Unauthorized)"));
  }

  // A viewer (added while the daemon runs: it is honoured at once) reads but cannot write.
  const auto viewer =
      daemon.Kubeconfig("viewer.kubeconfig", {"--user", "vera", "--role", "viewer"});
  const std::string vk = "--kubeconfig=" + viewer.string();
  auto listed = MustRun(k, {vk, "get", "vms", "-o", "name"});
  CHECK(listed.out == "virtualmachine.kubevirt.io/tls-vm\n");
  auto del = k.Run({vk, "delete", "vm", "tls-vm"});
  CHECK(del.code != 0);
  CHECK_THAT(del.err,
             Catch::Contains("Error from server (Forbidden)") &&
                 Catch::Contains("virtualmachines.kubevirt.io \"tls-vm\" is forbidden: User "
                                 "\"vera\" cannot delete resource \"virtualmachines\" in API "
                                 "group \"kubevirt.io\" in the namespace \"default\""));
  WriteFile(tmp / "vm2.yaml", std::string(kVm).replace(std::string(kVm).find("tls-vm"), 6, "vm-2"));
  auto create = k.Run({vk, "create", "-f", (tmp / "vm2.yaml").string()});
  CHECK(create.code != 0);
  CHECK_THAT(create.err, Catch::Contains("Forbidden") &&
                             Catch::Contains("User \"vera\" cannot create resource"));
  auto secrets = k.Run({vk, "get", "secrets"});
  CHECK(secrets.code != 0);
  CHECK_THAT(secrets.err, Catch::Contains("Forbidden"));
  // WebSocket upgrades are checked like any request: a viewer's console upgrade is refused
  // before any device is looked at; the admin's gets past authorization (404: no such VMI).
  {
    auto token_of = [](const std::string& kubeconfig) {
      const auto at = kubeconfig.find("token: \"") + 8;
      return kubeconfig.substr(at, kubeconfig.find('"', at) - at);
    };
    const std::string ca = (daemon.state() / "pki" / "ca.crt").string();
    const std::string console =
        daemon.url() +
        "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/tls-vm/"
        "console";
    auto upgrade = [&](const std::string& token, bool status_only) {
      std::vector<std::string> argv{"/usr/bin/curl",
                                    "-sS",
                                    "--http1.1",
                                    "--cacert",
                                    ca,
                                    "-H",
                                    "Authorization: Bearer " + token,
                                    "-H",
                                    "Connection: Upgrade",
                                    "-H",
                                    "Upgrade: websocket",
                                    "-H",
                                    "Sec-WebSocket-Version: 13",
                                    "-H",
                                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                                    "-H",
                                    "Sec-WebSocket-Protocol: plain.kubevirt.io"};
      if (status_only) argv.insert(argv.end(), {"-o", "/dev/null", "-w", "%{http_code}"});
      argv.push_back(console);
      return RunCommand(argv, tmp.path());
    };
    auto [code, body] = upgrade(token_of(ReadFile(viewer)), false);
    CHECK(code == 0);
    INFO(body);
    const Json status = Json::parse(body);
    CHECK(status["code"] == 403);
    CHECK(status["message"] ==
          "virtualmachineinstances.subresources.kubevirt.io \"tls-vm\" is forbidden: User "
          "\"vera\" cannot get resource \"virtualmachineinstances/console\" in API group "
          "\"subresources.kubevirt.io\" in the namespace \"default\"");
    auto [acode, astatus] = upgrade(token_of(admin_text), true);
    CHECK(acode == 0);
    CHECK(astatus == "404");
    // A viewer may read /metrics (what a Prometheus scrape job gets); without credentials it
    // is 401 like any other path but the health endpoints.
    auto [mcode, metrics] = RunCommand(
        {"/usr/bin/curl", "-sS", "--cacert", ca, "-H",
         "Authorization: Bearer " + token_of(ReadFile(viewer)), daemon.url() + "/metrics"},
        tmp.path());
    CHECK(mcode == 0);
    CHECK_THAT(metrics, Catch::Contains("# TYPE edgevirt_api_request_duration_seconds histogram"));
    auto [ncode, nstatus] = RunCommand({"/usr/bin/curl", "-sS", "--cacert", ca, "-o", "/dev/null",
                                        "-w", "%{http_code}", daemon.url() + "/metrics"},
                                       tmp.path());
    CHECK(ncode == 0);
    CHECK(nstatus == "401");
  }

  // A viewer may not become admin by asking for another role.
  {
    auto [code, out] = RunCommand({EdgevirtdPath(), "--state-dir", daemon.state().string(),
                                   "kubeconfig", "--user", "vera", "--role", "admin"},
                                  tmp.path());
    CHECK(code == 1);
  }

  // Client certificates signed by the CA: CN = user, O = role.
  const auto carol = daemon.Kubeconfig("carol.kubeconfig", {"--user", "carol", "--client-cert"});
  CHECK_THAT(ReadFile(carol),
             Catch::Contains("client-certificate-data: ") && !Catch::Contains("token: "));
  const std::string ck = "--kubeconfig=" + carol.string();
  MustRun(k, {ck, "label", "vm", "tls-vm", "owner=carol"});
  const auto dave =
      daemon.Kubeconfig("dave.kubeconfig", {"--user", "dave", "--role", "viewer", "--client-cert"});
  auto dave_del = k.Run({"--kubeconfig=" + dave.string(), "delete", "vm", "tls-vm"});
  CHECK(dave_del.code != 0);
  CHECK_THAT(dave_del.err, Catch::Contains("User \"dave\" cannot delete"));

  // Root on the unix socket needs no token.
  auto unix_list =
      HttpGet("unix:" + daemon.socket(), "/apis/kubevirt.io/v1/namespaces/default/virtualmachines");
  REQUIRE(unix_list.has_value());
  CHECK(unix_list->status == 200);
  CHECK(Json::parse(unix_list->body)["items"].size() == 1);

  MustRun(k, {kc, "delete", "vm", "tls-vm"});
  auto gone = k.Run({kc, "get", "vm", "tls-vm"});
  CHECK(gone.code != 0);
  CHECK_THAT(gone.err, Catch::Contains("NotFound"));

  // A restart reuses the certificate; the old kubeconfigs keep working.
  INFO("daemon stderr:\n" << daemon.Stderr());
  CHECK(daemon.Stop() == 0);
  daemon.Start();
  CHECK(ReadFile(daemon.state() / "pki" / "server.crt") == server_cert);
  std::string rewritten = ReadFile(admin);
  const auto at = rewritten.find("server: ");
  rewritten.replace(at, rewritten.find('\n', at) - at, "server: \"" + daemon.url() + "\"");
  WriteFile(admin, rewritten);
  auto after = MustRun(k, {kc, "get", "vms", "-o", "name"});
  CHECK(after.out == "");
  CHECK(daemon.Stop() == 0);
}

}  // namespace
}  // namespace edgevirt::testing
