// The registry client against a real registry: docker-registry 2.8 (plain, htpasswd and token
// auth with tests/fixtures/registry/token-server.py) with images pushed by skopeo, and the fault
// proxy of tests/fixtures/registry/fault-proxy.py in front, which cuts, stalls, corrupts,
// ignores Range, answers wrong Content-Ranges, rate-limits and redirects to a second origin
// that refuses Authorization (as S3 presigned URLs do). Everything listens on 127.0.0.1.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/exec.h"
#include "image/content.h"
#include "image/index.h"
#include "image/manifest.h"
#include "image/reference.h"
#include "image/registry.h"
#include "tests/support/catch.h"
#include "tests/support/net.h"
#include "tests/support/temp_dir.h"

extern char** environ;

namespace edgevirt::image {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace std::chrono_literals;

const std::string kFixtures = std::string(EDGEVIRT_SOURCE_DIR) + "/tests/fixtures/registry";

// A background helper process (no shell), output to a log file; killed at destruction.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const fs::path& log) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    int rc = posix_spawnp(&pid_, args[0], &fa, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    REQUIRE(rc == 0);
  }
  ~Child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      for (int i = 0; i < 50; ++i) {
        if (::waitpid(pid_, nullptr, WNOHANG) == pid_) return;
        std::this_thread::sleep_for(20ms);
      }
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  bool Alive() const { return ::waitpid(pid_, nullptr, WNOHANG) == 0; }

 private:
  pid_t pid_ = -1;
};

std::string ReadFile(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string WaitForFile(const fs::path& p) {
  for (int i = 0; i < 200; ++i) {
    if (fs::exists(p)) return ReadFile(p);
    std::this_thread::sleep_for(25ms);
  }
  FAIL("timed out waiting for " << p);
  return {};
}

void WaitForPort(int port, const Child& child, const fs::path& log) {
  for (int i = 0; i < 200; ++i) {
    if (testing::LoopbackPortOpen(port)) return;
    if (!child.Alive()) FAIL("server exited: " << ReadFile(log));
    std::this_thread::sleep_for(25ms);
  }
  FAIL("port " << port << " never opened: " << ReadFile(log));
}

std::string Run(const std::vector<std::string>& argv) {
  auto r = ExecChecked(argv, ExecOptions{.timeout = 120s});
  if (!r) FAIL(r.error().ToString());
  return r->stdout_text;
}

struct Pushed {
  std::string layer_digest;
  uint64_t layer_size = 0;
};

// The registries, the token server and the proxies, started once for the whole binary.
struct Env {
  testing::TempDir dir{"ev-regtest"};
  int plain = 0, htpasswd = 0, token = 0, token_server = 0, tls = 0;
  int proxy = 0, proxy_redirect = 0, token_proxy = 0, token_proxy_redirect = 0;
  std::vector<std::unique_ptr<Child>> children;
  Pushed disk, big, token_disk, htpasswd_disk, multi, tls_disk;

  std::unique_ptr<Child> Start(const std::vector<std::string>& argv, const std::string& name) {
    return std::make_unique<Child>(argv, dir / (name + ".log"));
  }

  void StartRegistry(int* port, const std::string& name, std::vector<std::string> mode) {
    *port = testing::FreeLoopbackPort();
    REQUIRE(*port > 0);
    std::vector<std::string> argv = {kFixtures + "/start-registry.sh", dir.Path(name),
                                     std::to_string(*port)};
    argv.insert(argv.end(), mode.begin(), mode.end());
    children.push_back(Start(argv, name));
    WaitForPort(*port, *children.back(), dir / (name + ".log"));
  }

  void StartProxy(int upstream, int* main_port, int* redirect_port, const std::string& name) {
    children.push_back(Start({"python3", kFixtures + "/fault-proxy.py",
                              "127.0.0.1:" + std::to_string(upstream), dir.Path(name + ".ports")},
                             name));
    std::istringstream(WaitForFile(dir / (name + ".ports"))) >> *main_port >> *redirect_port;
  }

  Pushed Push(const std::string& disk, const std::string& ref, std::vector<std::string> extra) {
    static int n = 0;
    std::vector<std::string> argv = {kFixtures + "/push-image.sh", disk,
                                     dir.Path("oci" + std::to_string(n++)), "v1", ref};
    argv.insert(argv.end(), extra.begin(), extra.end());
    Pushed p;
    std::istringstream(Run(argv)) >> p.layer_digest >> p.layer_size;
    REQUIRE(IsValidDigest(p.layer_digest));
    return p;
  }

  std::string RandomFile(const std::string& name, size_t bytes) {
    std::string path = dir.Path(name);
    auto r = Exec({"openssl", "rand", "-out", path, std::to_string(bytes)});
    REQUIRE(r);
    REQUIRE(r->ok());
    return path;
  }

  Env() {
    StartRegistry(&plain, "plain", {"none"});
    StartRegistry(&htpasswd, "htpasswd", {"htpasswd", "alice:secret"});
    Run({kFixtures + "/make-token-key.sh", dir.Path("key.pem"), dir.Path("cert.pem")});
    children.push_back(Start({"python3", kFixtures + "/token-server.py", dir.Path("key.pem"),
                              dir.Path("cert.pem"), dir.Path("token.port")},
                             "token-server"));
    token_server = std::stoi(WaitForFile(dir / "token.port"));
    StartRegistry(&token, "token",
                  {"token", "http://127.0.0.1:" + std::to_string(token_server) + "/token",
                   dir.Path("cert.pem")});
    Run({kFixtures + "/make-tls-cert.sh", dir.Path("tls-key.pem"), dir.Path("tls-cert.pem")});
    StartRegistry(&tls, "tls", {"tls", dir.Path("tls-cert.pem"), dir.Path("tls-key.pem")});
    StartProxy(plain, &proxy, &proxy_redirect, "proxy");
    StartProxy(token, &token_proxy, &token_proxy_redirect, "token-proxy");

    std::string small = RandomFile("disk.img", 2 << 20);
    std::string large = RandomFile("big.img", 24 << 20);
    std::string p = "127.0.0.1:" + std::to_string(plain);
    disk = Push(small, p + "/kv/disk:v1", {});
    REQUIRE(Push(small, p + "/kv/disk:v2s2", {"--format", "v2s2"}).layer_digest ==
            disk.layer_digest);
    multi = Push(small, p + "/kv/multi:v1", {"--arch", "amd64,arm64"});
    big = Push(large, p + "/kv/big:v1", {});
    token_disk = Push(small, "127.0.0.1:" + std::to_string(token) + "/kv/disk:v1",
                      {"--creds", "alice:secret"});
    htpasswd_disk = Push(small, "127.0.0.1:" + std::to_string(htpasswd) + "/kv/disk:v1",
                         {"--creds", "alice:secret"});
    tls_disk = Push(small, "127.0.0.1:" + std::to_string(tls) + "/kv/disk:v1", {});
  }

  std::string Host(int port) const { return "127.0.0.1:" + std::to_string(port); }

  ClientOptions Client() const {
    ClientOptions o;
    for (int port :
         {plain, htpasswd, token, proxy, proxy_redirect, token_proxy, token_proxy_redirect}) {
      o.registries.push_back(RegistryHost{Host(port), /*insecure=*/true, false, ""});
    }
    o.stall_timeout_for_test = 1500ms;
    o.low_speed_limit = 0;
    o.max_attempts = 4;
    o.retry_base = 50ms;
    o.retry_max = 1s;
    o.checkpoint_bytes = 256 << 10;
    return o;
  }

  // Proxy control through curl(1).
  void Rules(int port, const json& rules, uint64_t throttle = 0) {
    Run({"curl", "-fsS", "-X", "POST", "--data-binary",
         json{{"rules", rules}, {"throttle_bps", throttle}}.dump(),
         "http://127.0.0.1:" + std::to_string(port) + "/__proxy/rules"});
  }
  void ResetProxy(int port) {
    Run({"curl", "-fsS", "-X", "POST",
         "http://127.0.0.1:" + std::to_string(port) + "/__proxy/reset"});
  }
  json ProxyLog(int port) {
    json j = json::parse(
        Run({"curl", "-fsS", "http://127.0.0.1:" + std::to_string(port) + "/__proxy/log"}));
    return j;
  }
  // Only the blob GETs of the log.
  json BlobLog(int port) {
    json out = json::array();
    for (const auto& e : ProxyLog(port)) {
      if (e["method"] == "GET" &&
          e["path"].get<std::string>().find("/blobs/") != std::string::npos) {
        out.push_back(e);
      }
    }
    return out;
  }
  // The next `count` tokens minted for `repo` grant nothing on it.
  void Deny(const std::string& repo, int count) {
    Run({"curl", "-fsS", "-X", "POST", "--data-binary",
         json{{"name", repo}, {"count", count}}.dump(),
         "http://127.0.0.1:" + std::to_string(token_server) + "/__deny"});
  }
  json TokenLog() {
    return json::parse(
        Run({"curl", "-fsS", "http://127.0.0.1:" + std::to_string(token_server) + "/__log"}));
  }
};

Env& TheEnv() {
  static Env env;
  return env;
}

// A fresh cache directory: index + content store.
struct Store {
  testing::TempDir dir{"ev-regstore"};
  std::unique_ptr<internal::Index> index;
  std::unique_ptr<ContentStore> store;
  Store() {
    auto i = internal::Index::Open(dir / "index");
    REQUIRE(i);
    index = std::move(*i);
    store = std::make_unique<ContentStore>(dir.path(), index.get());
  }
};

Reference Ref(const std::string& text) {
  auto r = ParseReference(text);
  REQUIRE(r);
  return *r;
}

// Resolve + config + every layer into `store`.
Result<Manifest> Pull(RegistryClient& client, const std::string& ref, ContentStore& store,
                      const Keychain& extra = {}, std::string* config = nullptr) {
  Reference r = Ref(ref);
  ASSIGN_OR_RETURN(Manifest m, client.Resolve(r, extra));
  ASSIGN_OR_RETURN(std::string cfg, client.FetchSmallBlob(r, m.config, extra));
  if (config != nullptr) *config = cfg;
  for (const auto& layer : m.layers) {
    RETURN_IF_ERROR(client.FetchBlob(r, layer, store, extra, nullptr, nullptr));
  }
  return m;
}

void CheckBlob(const ContentStore& store, const std::string& digest) {
  REQUIRE(store.Has(digest));
  CHECK(Sha256Digest(ReadFile(store.BlobPath(digest))) == digest);
}

TEST_CASE("plain pull: OCI manifest and Docker schema 2", "[registry]") {
  Env& env = TheEnv();
  env.ResetProxy(env.proxy);
  RegistryClient client(env.Client());
  Store s;
  uint64_t progressed = 0;
  Reference ref = Ref(env.Host(env.proxy) + "/kv/disk:v1");
  auto m = client.Resolve(ref, {});
  REQUIRE(m);
  CHECK(m->media_type == kOciManifest);
  REQUIRE(m->layers.size() == 1);
  CHECK(m->layers[0].digest == env.disk.layer_digest);
  REQUIRE(client.FetchBlob(
      ref, m->layers[0], *s.store, {}, [&](uint64_t d) { progressed += d; }, nullptr));
  CheckBlob(*s.store, env.disk.layer_digest);
  CHECK(progressed == env.disk.layer_size);
  // Present: no second GET.
  size_t gets = env.BlobLog(env.proxy).size();
  REQUIRE(client.FetchBlob(ref, m->layers[0], *s.store, {}, nullptr, nullptr));
  CHECK(env.BlobLog(env.proxy).size() == gets);
  // By digest.
  auto by_digest = client.Resolve(Ref(env.Host(env.proxy) + "/kv/disk@" + m->digest), {});
  REQUIRE(by_digest);
  CHECK(by_digest->digest == m->digest);

  Store s2;
  auto v2 = Pull(client, env.Host(env.proxy) + "/kv/disk:v2s2", *s2.store);
  REQUIRE(v2);
  CHECK(v2->media_type == kDockerManifest);
  CHECK(v2->layers[0].media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip");
  CheckBlob(*s2.store, env.disk.layer_digest);

  auto missing = client.Resolve(Ref(env.Host(env.proxy) + "/kv/disk:nope"), {});
  REQUIRE_FALSE(missing);
  CHECK(missing.error().code == Code::kNotFound);
  CHECK(missing.error().message.find("404 Not Found: manifest unknown") != std::string::npos);
  // A manifest fetched by a digest it does not have.
  auto wrong =
      client.Resolve(Ref(env.Host(env.proxy) + "/kv/disk@sha256:" + std::string(64, '0')), {});
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error().code == Code::kNotFound);
}

TEST_CASE("an index picks the host's platform, or the override", "[registry]") {
  Env& env = TheEnv();
  RegistryClient client(env.Client());
  Store s;
  std::string cfg;
  std::string index_digest;
  Reference ref = Ref(env.Host(env.proxy) + "/kv/multi:v1");
  auto m = client.Resolve(ref, {}, &index_digest);
  REQUIRE(m);
  CHECK(IsValidDigest(index_digest));
  CHECK(index_digest != m->digest);
  auto c = client.FetchSmallBlob(ref, m->config, {});
  REQUIRE(c);
  CHECK(json::parse(*c)["architecture"] == "amd64");

  ClientOptions arm = env.Client();
  arm.platform = "linux/arm64";
  RegistryClient arm_client(arm);
  std::string arm_index;
  auto a = arm_client.Resolve(ref, {}, &arm_index);
  REQUIRE(a);
  CHECK(arm_index == index_digest);
  CHECK(a->digest != m->digest);
  auto ac = arm_client.FetchSmallBlob(ref, a->config, {});
  REQUIRE(ac);
  CHECK(json::parse(*ac)["architecture"] == "arm64");

  ClientOptions s390 = env.Client();
  s390.platform = "linux/s390x";
  auto none = RegistryClient(s390).Resolve(ref, {});
  REQUIRE_FALSE(none);
  CHECK(none.error().code == Code::kNotFound);
}

TEST_CASE("token auth: anonymous, credentials from the keychain, wrong credentials", "[registry]") {
  Env& env = TheEnv();
  std::string ref = env.Host(env.token) + "/kv/disk:v1";
  {
    RegistryClient client(env.Client());
    Store s;
    size_t before = env.TokenLog().size();
    REQUIRE(Pull(client, ref, *s.store));
    CheckBlob(*s.store, env.token_disk.layer_digest);
    json log = env.TokenLog();
    REQUIRE(log.size() > before);
    // Anonymous, one token for repository:kv/disk:pull reused for every request.
    CHECK(log.size() - before == 1);
    CHECK(log.back()["basic"] == false);
    CHECK(log.back()["scope"][0] == "repository:kv/disk:pull");
  }
  {
    ClientOptions o = env.Client();
    o.keychain = {{env.Host(env.token), {"alice", "wrong", ""}}};  // the auth file
    RegistryClient client(o);
    Store s;
    // `extra` (imagePullSecrets) wins over the auth file.
    REQUIRE(Pull(client, ref, *s.store, {{env.Host(env.token), {"alice", "secret", ""}}}));
    CHECK(env.TokenLog().back()["basic"] == true);
    Store s2;
    auto bad = Pull(client, ref, *s2.store);
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == Code::kPermission);
    CHECK(bad.error().message.find("401 Unauthorized") != std::string::npos);
    CHECK(bad.error().message.find("wrong") == std::string::npos);
  }
}

TEST_CASE("htpasswd Basic auth", "[registry]") {
  Env& env = TheEnv();
  std::string ref = env.Host(env.htpasswd) + "/kv/disk:v1";
  RegistryClient client(env.Client());
  Store s;
  REQUIRE(Pull(client, ref, *s.store, {{env.Host(env.htpasswd), {"alice", "secret", ""}}}));
  CheckBlob(*s.store, env.htpasswd_disk.layer_digest);
  auto anon = RegistryClient(env.Client()).Resolve(Ref(ref), {});
  REQUIRE_FALSE(anon);
  CHECK(anon.error().code == Code::kPermission);
  CHECK(anon.error().message == "401 Unauthorized: authentication required");
  auto wrong = RegistryClient(env.Client())
                   .Resolve(Ref(ref), {{env.Host(env.htpasswd), {"alice", "nope", ""}}});
  REQUIRE_FALSE(wrong);
  CHECK(wrong.error().code == Code::kPermission);
  CHECK(wrong.error().message.find("401 Unauthorized") == 0);
}

TEST_CASE("HTTPS: system CAs only, a per-registry ca_file, skip_verify", "[registry]") {
  Env& env = TheEnv();
  std::string ref = env.Host(env.tls) + "/kv/disk:v1";
  auto with = [&](RegistryHost host) {
    ClientOptions o = env.Client();
    o.registries.push_back(std::move(host));
    o.max_attempts = 2;
    return o;
  };
  {
    // No entry: HTTPS verified against the system CAs only, which do not know this cert.
    ClientOptions o = env.Client();
    o.max_attempts = 2;
    RegistryClient client(o);
    auto r = client.Resolve(Ref(ref), {});
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Code::kUnavailable);
    CHECK(r.error().message.find("certificate") != std::string::npos);
  }
  {
    RegistryClient client(with({env.Host(env.tls), false, false, env.dir.Path("tls-cert.pem")}));
    Store s;
    REQUIRE(Pull(client, ref, *s.store));
    CheckBlob(*s.store, env.tls_disk.layer_digest);
  }
  {
    RegistryClient client(with({env.Host(env.tls), false, true, ""}));
    Store s;
    REQUIRE(Pull(client, ref, *s.store));
    CheckBlob(*s.store, env.tls_disk.layer_digest);
  }
  {
    // A CA file that does not exist is an error, not a silent fallback to no verification.
    RegistryClient client(with({env.Host(env.tls), false, false, env.dir.Path("missing.pem")}));
    CHECK_FALSE(client.Resolve(Ref(ref), {}));
  }
}

// Fetches the 2 MiB layer of kv/disk:v1 through the plain proxy with `rules` armed.
Status FetchDisk(Env& env, Store& s, const json& rules, ClientOptions o,
                 uint64_t* progressed = nullptr) {
  env.ResetProxy(env.proxy);
  RegistryClient client(std::move(o));
  Reference ref = Ref(env.Host(env.proxy) + "/kv/disk:v1");
  auto m = client.Resolve(ref, {});
  REQUIRE(m);
  env.Rules(env.proxy, rules);
  std::function<void(uint64_t)> progress;
  if (progressed != nullptr) progress = [progressed](uint64_t d) { *progressed += d; };
  return client.FetchBlob(ref, m->layers[0], *s.store, {}, progress, nullptr);
}

TEST_CASE("fault proxy: a connection cut mid-blob is resumed with Range", "[registry]") {
  Env& env = TheEnv();
  Store s;
  REQUIRE(FetchDisk(env, s, {{{"action", "cut"}, {"after", 700000}}}, env.Client()));
  CheckBlob(*s.store, env.disk.layer_digest);
  json log = env.BlobLog(env.proxy);
  REQUIRE(log.size() == 2);
  CHECK(log[0]["range"].is_null());
  CHECK(log[1]["range"] == "bytes=700000-");
  CHECK(log[1]["status"] == 206);
  CHECK(s.store->CommittedOffset(env.disk.layer_digest).value() == 0);
}

TEST_CASE("fault proxy: Range ignored -> restart from byte 0", "[registry]") {
  Env& env = TheEnv();
  Store s;
  uint64_t progressed = 0;
  REQUIRE(FetchDisk(env, s, {{{"action", "cut"}, {"after", 500000}}, {{"action", "ignore_range"}}},
                    env.Client(), &progressed));
  CHECK(progressed == env.disk.layer_size);  // the restarted prefix is not counted twice
  CheckBlob(*s.store, env.disk.layer_digest);
  json log = env.BlobLog(env.proxy);
  REQUIRE(log.size() == 2);
  CHECK(log[1]["range"] == "bytes=500000-");
  CHECK(log[1]["status"] == 200);
}

TEST_CASE("fault proxy: a wrong Content-Range is detected", "[registry]") {
  Env& env = TheEnv();
  Store s;
  REQUIRE(FetchDisk(env, s, {{{"action", "cut"}, {"after", 500000}}, {{"action", "bad_range"}}},
                    env.Client()));
  CheckBlob(*s.store, env.disk.layer_digest);
  json log = env.BlobLog(env.proxy);
  REQUIRE(log.size() == 3);
  CHECK(log[1]["range"] == "bytes=500000-");
  CHECK(log[1]["status"] == 206);    // "bytes 0-.../..." for a request from 500000: refused
  CHECK(log[2]["range"].is_null());  // restarted from 0
  CHECK(log[2]["status"] == 200);
}

TEST_CASE("fault proxy: corrupted bytes -> digest mismatch, nothing stored", "[registry]") {
  Env& env = TheEnv();
  Store s;
  auto st = FetchDisk(env, s, {{{"action", "corrupt"}, {"at", 12345}}}, env.Client());
  REQUIRE_FALSE(st);
  CHECK(st.error().code == Code::kInvalid);
  CHECK(st.error().message.find("digest mismatch") != std::string::npos);
  CHECK(s.store->List()->empty());
  CHECK_FALSE(fs::exists(s.store->IngestPath(env.disk.layer_digest)));
  CHECK(s.store->CommittedOffset(env.disk.layer_digest).value() == 0);
  CHECK(env.BlobLog(env.proxy).size() == 1);  // not retried: the data itself is bad
}

TEST_CASE("fault proxy: redirect to another origin gets no Authorization", "[registry]") {
  Env& env = TheEnv();
  env.ResetProxy(env.token_proxy);
  RegistryClient client(env.Client());
  Store s;
  Reference ref = Ref(env.Host(env.token_proxy) + "/kv/disk:v1");
  auto m = client.Resolve(ref, {});
  REQUIRE(m);
  env.Rules(env.token_proxy, {{{"action", "redirect"}}});
  REQUIRE(client.FetchBlob(ref, m->layers[0], *s.store, {}, nullptr, nullptr));
  CheckBlob(*s.store, env.token_disk.layer_digest);
  json log = env.ProxyLog(env.token_proxy);
  bool saw_redirect = false, saw_target = false;
  for (const auto& e : log) {
    if (e["port"] == "main" && e["status"] == 307) {
      saw_redirect = true;
      CHECK(e["auth"] == true);  // the registry itself did get the token
    }
    if (e["port"] == "redirect") {
      saw_target = true;
      CHECK(e["auth"] == false);
      CHECK(e["status"] == 200);
    }
  }
  CHECK(saw_redirect);
  CHECK(saw_target);
}

TEST_CASE("a 401 on a resume (token revoked/expired) re-authenticates and resumes", "[registry]") {
  Env& env = TheEnv();
  env.ResetProxy(env.token_proxy);
  RegistryClient client(env.Client());
  Store s;
  Reference ref = Ref(env.Host(env.token_proxy) + "/kv/disk:v1");
  auto m = client.Resolve(ref, {});
  REQUIRE(m);
  size_t tokens_before = env.TokenLog().size();
  // Cut mid-blob; the resume is refused by the registry itself (401 + its Bearer challenge).
  // distribution allows 60 s of leeway on token expiry, so a really expired token would make
  // this test a minute long.
  env.Rules(env.token_proxy,
            {{{"action", "cut"}, {"after", 400000}}, {{"action", "unauthorized"}}});
  REQUIRE(client.FetchBlob(ref, m->layers[0], *s.store, {}, nullptr, nullptr));
  CheckBlob(*s.store, env.token_disk.layer_digest);
  json log = env.BlobLog(env.token_proxy);
  REQUIRE(log.size() == 3);
  CHECK(log[0]["status"] == 200);
  CHECK(log[1]["status"] == 401);
  CHECK(log[1]["range"] == "bytes=400000-");
  CHECK(log[2]["status"] == 206);
  CHECK(log[2]["range"] == "bytes=400000-");
  CHECK(log[2]["auth"] == true);
  // The cached token was not reused blindly: a fresh one was fetched.
  CHECK(env.TokenLog().size() == tokens_before + 1);
}

TEST_CASE("fault proxy: a stall fires the stall timeout, the retry resumes", "[registry]") {
  Env& env = TheEnv();
  Store s;
  auto start = std::chrono::steady_clock::now();
  REQUIRE(
      FetchDisk(env, s, {{{"action", "stall"}, {"after", 300000}, {"seconds", 8}}}, env.Client()));
  auto took = std::chrono::steady_clock::now() - start;
  CheckBlob(*s.store, env.disk.layer_digest);
  CHECK(took >= 1500ms);
  CHECK(took < 7s);  // well before the proxy would have closed the stalled connection
  json log = env.BlobLog(env.proxy);
  REQUIRE(log.size() == 2);
  CHECK(log[1]["range"] == "bytes=300000-");
}

TEST_CASE("fault proxy: 429 with Retry-After is honoured", "[registry]") {
  Env& env = TheEnv();
  Store s;
  REQUIRE(
      FetchDisk(env, s, {{{"action", "status"}, {"code", 429}, {"retry_after", 2}}}, env.Client()));
  CheckBlob(*s.store, env.disk.layer_digest);
  json log = env.BlobLog(env.proxy);
  REQUIRE(log.size() == 2);
  CHECK(log[0]["status"] == 429);
  CHECK(log[1]["t"].get<double>() - log[0]["t"].get<double>() >= 1.9);
  // Without Retry-After the backoff would have been ~50 ms; persistent 503s give up.
  Store s2;
  json many = json::array();
  for (int i = 0; i < 6; ++i)
    many.push_back({{"action", "status"}, {"code", 503}, {"retry_after", 0}});
  auto st = FetchDisk(env, s2, many, env.Client());
  REQUIRE_FALSE(st);
  CHECK(st.error().code == Code::kUnavailable);
  CHECK(st.error().message.find("giving up after 4 attempts") != std::string::npos);
  CHECK(env.BlobLog(env.proxy).size() == 4);
}

TEST_CASE("a blob download resumes after the process is killed", "[registry]") {
  Env& env = TheEnv();
  Store s;
  env.ResetProxy(env.proxy);
  Reference ref = Ref(env.Host(env.proxy) + "/kv/big:v1");
  Manifest m;
  {
    RegistryClient client(env.Client());
    auto r = client.Resolve(ref, {});
    REQUIRE(r);
    m = *r;
  }
  REQUIRE(m.layers[0].size > (20u << 20));
  env.Rules(env.proxy, json::array(), 6u << 20);  // ~4 s for the whole blob
  fs::path store_dir = s.dir.path() / "child";
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto index = internal::Index::Open(store_dir / "index");
    if (!index) ::_exit(2);
    ContentStore store(store_dir, index->get());
    RegistryClient client(env.Client());
    Status st = client.FetchBlob(ref, m.layers[0], store, {}, nullptr, nullptr);
    ::_exit(st ? 0 : 1);
  }
  std::unique_ptr<internal::Index> index;
  for (int i = 0; i < 200 && !index; ++i) {
    auto opened =
        fs::exists(store_dir / "index")
            ? internal::Index::Open(store_dir / "index")
            : Result<std::unique_ptr<internal::Index>>(MakeError(Code::kNotFound, "not yet"));
    if (opened)
      index = std::move(*opened);
    else
      std::this_thread::sleep_for(20ms);
  }
  REQUIRE(index);
  ContentStore store(store_dir, index.get());
  uint64_t committed = 0;
  for (int i = 0; i < 400 && committed < (1u << 20); ++i) {
    std::this_thread::sleep_for(10ms);
    committed = store.CommittedOffset(m.layers[0].digest).value_or(0);
  }
  ::kill(pid, SIGKILL);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFSIGNALED(status));
  committed = store.CommittedOffset(m.layers[0].digest).value();
  REQUIRE(committed >= (1u << 20));
  REQUIRE(committed < m.layers[0].size);
  CHECK(fs::file_size(store.IngestPath(m.layers[0].digest)) >= committed);

  env.ResetProxy(env.proxy);
  RegistryClient client(env.Client());
  uint64_t progressed = 0;
  REQUIRE(client.FetchBlob(
      ref, m.layers[0], store, {}, [&](uint64_t d) { progressed += d; }, nullptr));
  CheckBlob(store, m.layers[0].digest);
  CHECK(progressed == m.layers[0].size);  // the resumed prefix is reported first
  json log = env.BlobLog(env.proxy);
  REQUIRE(log.size() == 1);
  CHECK(log[0]["range"] == "bytes=" + std::to_string(committed) + "-");
  CHECK(log[0]["status"] == 206);
}

TEST_CASE("cancel stops a download with kUnavailable \"cancelled\"", "[registry]") {
  Env& env = TheEnv();
  Store s;
  env.ResetProxy(env.proxy);
  RegistryClient client(env.Client());
  Reference ref = Ref(env.Host(env.proxy) + "/kv/big:v1");
  auto m = client.Resolve(ref, {});
  REQUIRE(m);
  env.Rules(env.proxy, json::array(), 4u << 20);
  std::atomic<bool> cancel{false};
  std::thread t([&] {
    std::this_thread::sleep_for(300ms);
    cancel = true;
  });
  auto st = client.FetchBlob(ref, m->layers[0], *s.store, {}, nullptr, &cancel);
  t.join();
  env.ResetProxy(env.proxy);
  REQUIRE_FALSE(st);
  CHECK(st.error().code == Code::kUnavailable);
  CHECK(st.error().message == "cancelled");
  CHECK_FALSE(s.store->Has(m->layers[0].digest));
}

TEST_CASE("insufficient_scope: one re-auth, then kPermission with the registry's message",
          "[registry]") {
  Env& env = TheEnv();
  std::string ref = env.Host(env.token_proxy) + "/kv/disk:v1";
  env.ResetProxy(env.token_proxy);
  auto manifest_gets = [&] {
    size_t n = 0;
    for (const auto& e : env.ProxyLog(env.token_proxy)) {
      if (e["path"].get<std::string>().find("/manifests/") != std::string::npos) ++n;
    }
    return n;
  };
  {
    // The first token lacks pull on kv/disk: the registry answers 401 insufficient_scope, the
    // client fetches a fresh token (which has pull) and the pull succeeds.
    RegistryClient client(env.Client());
    Store s;
    size_t before = env.TokenLog().size();
    env.Deny("kv/disk", 1);
    REQUIRE(Pull(client, ref, *s.store));
    CheckBlob(*s.store, env.token_disk.layer_digest);
    json log = env.TokenLog();
    REQUIRE(log.size() == before + 2);
    CHECK(log[before]["denied"] == true);
    CHECK(log[before + 1]["denied"] == false);
    CHECK(log[before + 1]["scope"][0] == "repository:kv/disk:pull");
    std::vector<json> gets;
    for (const auto& e : env.ProxyLog(env.token_proxy)) {
      if (e["path"].get<std::string>().find("/manifests/") != std::string::npos) gets.push_back(e);
    }
    REQUIRE(gets.size() == 2);
    CHECK(gets[0]["status"] == 401);  // with the token that lacks pull
    CHECK(gets[0]["auth"] == true);
    CHECK(gets[1]["status"] == 200);
  }
  {
    // Every token lacks pull: exactly one re-auth, then kPermission with the registry's message.
    env.ResetProxy(env.token_proxy);
    RegistryClient client(env.Client());
    size_t before = env.TokenLog().size();
    env.Deny("kv/disk", 100);
    auto r = client.Resolve(Ref(ref), {});
    env.Deny("kv/disk", 0);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Code::kPermission);
    INFO(r.error().message);
    CHECK(r.error().message.find("401 Unauthorized: authentication required") == 0);
    CHECK(r.error().message.find("insufficient_scope: the token lacks repository:kv/disk:pull") !=
          std::string::npos);
    CHECK(env.TokenLog().size() == before + 2);
    CHECK(manifest_gets() == 2);
  }
}

TEST_CASE("a 403 insufficient_scope on a blob re-authenticates once", "[registry]") {
  Env& env = TheEnv();
  env.ResetProxy(env.token_proxy);
  RegistryClient client(env.Client());
  Reference ref = Ref(env.Host(env.token_proxy) + "/kv/disk:v1");
  auto m = client.Resolve(ref, {});
  REQUIRE(m);
  {
    Store s;
    size_t before = env.TokenLog().size();
    env.Rules(env.token_proxy, {{{"action", "denied"}}});
    REQUIRE(client.FetchBlob(ref, m->layers[0], *s.store, {}, nullptr, nullptr));
    CheckBlob(*s.store, env.token_disk.layer_digest);
    json log = env.BlobLog(env.token_proxy);
    REQUIRE(log.size() == 2);
    CHECK(log[0]["status"] == 403);
    CHECK(log[1]["status"] == 200);
    CHECK(env.TokenLog().size() == before + 1);  // a fresh token, not the cached one
  }
  {
    env.ResetProxy(env.token_proxy);
    Store s;
    env.Rules(env.token_proxy, {{{"action", "denied"}}, {{"action", "denied"}}});
    auto st = client.FetchBlob(ref, m->layers[0], *s.store, {}, nullptr, nullptr);
    REQUIRE_FALSE(st);
    CHECK(st.error().code == Code::kPermission);
    CHECK(st.error().message.find("403 Forbidden: requested access to the resource is denied") ==
          0);
    CHECK(st.error().message.find("insufficient_scope") != std::string::npos);
    CHECK(env.BlobLog(env.token_proxy).size() == 2);  // one re-auth, no retry loop
  }
}

TEST_CASE("identity token: OAuth2 refresh_token grant at the realm", "[registry]") {
  Env& env = TheEnv();
  std::string ref = env.Host(env.token) + "/kv/disk:v1";
  auto cfg = ParseDockerConfig(
      json{{"auths", {{env.Host(env.token), {{"identitytoken", "alice-refresh-token"}}}}}}.dump());
  REQUIRE(cfg);
  {
    ClientOptions o = env.Client();
    o.keychain = *cfg;
    RegistryClient client(o);
    Store s;
    size_t before = env.TokenLog().size();
    REQUIRE(Pull(client, ref, *s.store));
    CheckBlob(*s.store, env.token_disk.layer_digest);
    json log = env.TokenLog();
    REQUIRE(log.size() == before + 1);
    CHECK(log.back()["method"] == "POST");
    CHECK(log.back()["grant"] == "refresh_token");
    CHECK(log.back()["basic"] == false);
    CHECK(log.back()["scope"][0] == "repository:kv/disk:pull");
  }
  {
    RegistryClient client(env.Client());
    auto r = client.Resolve(Ref(ref), {{env.Host(env.token), {"", "", "not-a-refresh-token"}}});
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Code::kPermission);
    CHECK(r.error().message.find("400 Bad Request") == 0);
    CHECK(r.error().message.find("not-a-refresh-token") == std::string::npos);
    CHECK(env.TokenLog().back()["grant"] == "refresh_token");
  }
}

TEST_CASE("fault proxy: a trickle is cut by the low-speed limit, the retry resumes", "[registry]") {
  Env& env = TheEnv();
  Store s;
  ClientOptions o = env.Client();
  o.low_speed_limit = 1024;
  o.low_speed_time = 1s;
  o.stall_timeout_for_test = 6s;  // bytes keep coming: only the low-speed limit can fire
  auto start = std::chrono::steady_clock::now();
  REQUIRE(FetchDisk(env, s, {{{"action", "trickle"}, {"after", 1000}, {"bps", 2}}}, o));
  auto took = std::chrono::steady_clock::now() - start;
  CheckBlob(*s.store, env.disk.layer_digest);
  CHECK(took >= 1s);
  CHECK(took < 5s);
  json log = env.BlobLog(env.proxy);
  REQUIRE(log.size() == 2);
  CHECK(log[0]["rule"]["action"] == "trickle");
  CHECK(log[1]["path"] == log[0]["path"]);
  CHECK(log[1]["path"].get<std::string>().find(env.disk.layer_digest) != std::string::npos);
  REQUIRE(log[1]["range"].is_string());
  std::string range = log[1]["range"];
  REQUIRE(range.rfind("bytes=", 0) == 0);
  uint64_t from = std::stoull(range.substr(6));
  CHECK(from >= 1000);
  CHECK(from < 1000 + 30);  // a few trickled bytes at most
  CHECK(log[1]["status"] == 206);
}

TEST_CASE("fault proxy: one-time presigned URLs: a resume asks the registry again", "[registry]") {
  Env& env = TheEnv();
  Store s;
  REQUIRE(FetchDisk(env, s,
                    {{{"action", "redirect"}, {"once", true}, {"cut_after", 600000}},
                     {{"action", "redirect"}, {"expired", true}},
                     {{"action", "redirect"}, {"once", true}}},
                    env.Client()));
  CheckBlob(*s.store, env.disk.layer_digest);
  json log = env.ProxyLog(env.proxy);
  std::vector<json> main, target;
  for (const auto& e : log) {
    if (e["port"] == "main" && e["path"].get<std::string>().find("/blobs/") != std::string::npos)
      main.push_back(e);
    if (e["port"] == "redirect") target.push_back(e);
  }
  // registry 307 -> target 200 (cut at 600000); registry 307 -> target 403 (spent) -> registry
  // again 307 -> target 206 from 600000.
  REQUIRE(main.size() == 3);
  REQUIRE(target.size() == 3);
  for (const auto& e : main) CHECK(e["status"] == 307);
  CHECK(main[0]["range"].is_null());
  CHECK(main[1]["range"] == "bytes=600000-");
  CHECK(main[2]["range"] == "bytes=600000-");
  CHECK(target[0]["status"] == 200);
  CHECK(target[1]["status"] == 403);
  CHECK(target[2]["status"] == 206);
  CHECK(target[2]["range"] == "bytes=600000-");
  // Every presigned URL was used once: the client never went back to an old one.
  CHECK(target[0]["path"] != target[1]["path"]);
  CHECK(target[0]["path"] != target[2]["path"]);
  CHECK(target[1]["path"] != target[2]["path"]);
  for (const auto& e : target) CHECK(e["auth"] == false);
  // The fixture really refuses a second use.
  std::string again = Run({"curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           "http://127.0.0.1:" + std::to_string(env.proxy_redirect) +
                               target[0]["path"].get<std::string>()});
  CHECK(again == "403");
}

// Sets environment variables for one scope and restores the previous values afterwards.
class ScopedEnv {
 public:
  explicit ScopedEnv(const std::map<std::string, std::string>& vars) {
    for (const char* name : {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                             "ALL_PROXY", "no_proxy", "NO_PROXY"}) {
      const char* v = ::getenv(name);
      saved_[name] = v != nullptr ? std::optional<std::string>(v) : std::nullopt;
      ::unsetenv(name);
    }
    for (const auto& [k, v] : vars) ::setenv(k.c_str(), v.c_str(), 1);
  }
  ~ScopedEnv() {
    for (const auto& [k, v] : saved_) {
      if (v)
        ::setenv(k.c_str(), v->c_str(), 1);
      else
        ::unsetenv(k.c_str());
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::map<std::string, std::optional<std::string>> saved_;
};

TEST_CASE("http_proxy / NO_PROXY from the environment", "[registry]") {
  Env& env = TheEnv();
  std::string ref = env.Host(env.plain) + "/kv/disk:v1";  // the registry itself, not the proxy
  std::string proxy_url = "http://127.0.0.1:" + std::to_string(env.proxy);
  auto forwarded = [&] {
    std::vector<std::string> paths;
    for (const auto& e : env.ProxyLog(env.proxy)) {
      if (e["port"] == "forward") paths.push_back(e["path"]);
    }
    return paths;
  };
  {
    env.ResetProxy(env.proxy);
    ScopedEnv scoped({{"http_proxy", proxy_url}});
    RegistryClient client(env.Client());
    Store s;
    REQUIRE(Pull(client, ref, *s.store));
    CheckBlob(*s.store, env.disk.layer_digest);
    std::vector<std::string> paths = forwarded();
    REQUIRE(paths.size() >= 4);  // /v2/, manifest, config, layer
    std::string origin = "http://" + env.Host(env.plain) + "/v2/";
    for (const auto& p : paths) CHECK(p.rfind(origin, 0) == 0);
    CHECK(paths.back() == origin + "kv/disk/blobs/" + env.disk.layer_digest);
  }
  for (const auto& no_proxy : {"NO_PROXY", "no_proxy"}) {
    INFO(no_proxy);
    env.ResetProxy(env.proxy);
    ScopedEnv scoped({{"http_proxy", proxy_url}, {no_proxy, "127.0.0.1"}});
    RegistryClient client(env.Client());
    Store s;
    REQUIRE(Pull(client, ref, *s.store));
    CHECK(forwarded().empty());
  }
  {
    // libcurl ignores upper-case HTTP_PROXY (httpoxy: CGI puts the Proxy request header there).
    env.ResetProxy(env.proxy);
    ScopedEnv scoped({{"HTTP_PROXY", proxy_url}});
    RegistryClient client(env.Client());
    Store s;
    REQUIRE(Pull(client, ref, *s.store));
    CHECK(forwarded().empty());
  }
  CHECK(::getenv("http_proxy") == nullptr);
}

}  // namespace
}  // namespace edgevirt::image
