// containerDisk end to end through the real edgevirtd: images built from the test guest, pushed
// with skopeo to a real registry (Debian's docker-registry, CNCF distribution 2.8) on loopback,
// pulled by the daemon, extracted, validated and booted under QEMU from a per-VMI overlay.
// Also: pull errors and imagePullSecrets in the VM's status, an OCI archive imported beside the
// running daemon (air-gapped), and a daemon SIGKILLed in the middle of a 2 GiB blob resuming it.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <fstream>

#include "tests/integration/daemon_test_util.h"
#include "tests/integration/vm_test_util.h"
#include "tests/support/net.h"

namespace edgevirt::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

fs::path Fixtures() { return fs::path(EDGEVIRT_SOURCE_DIR) / "tests" / "fixtures"; }

uint16_t FreePort() {
  const int port = FreeLoopbackPort();
  REQUIRE(port > 0);
  return static_cast<uint16_t>(port);
}

// Runs `argv` (argv[0] absolute) to completion and requires exit 0; returns its stdout.
std::string Run(const std::vector<std::string>& argv, const fs::path& out_dir,
                std::chrono::milliseconds timeout = 300s) {
  auto [code, out] = RunCommand(argv, out_dir, timeout);
  INFO("command: " << argv[0] << " " << (argv.size() > 1 ? argv[1] : "") << "\nstdout: " << out);
  REQUIRE(code == 0);
  return out;
}

std::string Base64(const std::string& in) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += k[(v >> s) & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += std::string{k[(v >> 18) & 63], k[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += std::string{k[(v >> 18) & 63], k[(v >> 12) & 63], k[(v >> 6) & 63], '='};
  }
  return out;
}

// A free port on the loopback of the test's private network namespace, where the daemon runs
// too (see EdgevirtDaemon): enters that namespace first.
int PrivatePort() {
  REQUIRE(EnterPrivateNetns() == 0);
  return FreePort();
}

// A registry on 127.0.0.1:<free port>: auth "none", or "htpasswd" with user:pass.
struct Registry {
  Registry(const fs::path& dir, std::vector<std::string> auth) : dir(dir), port(PrivatePort()) {
    fs::create_directories(dir);
    std::vector<std::string> argv = {"/bin/bash",
                                     (Fixtures() / "registry" / "start-registry.sh").string(),
                                     (dir / "reg").string(), std::to_string(port)};
    argv.insert(argv.end(), auth.begin(), auth.end());
    child = std::make_unique<Child>(argv, std::map<std::string, std::optional<std::string>>{}, dir,
                                    "registry");
    const bool up = WaitUntil(
        [&] {
          auto r = Http(url(), "GET", "/v2/");
          return r.ok && (r.status == 200 || r.status == 401);
        },
        30s);
    INFO("registry: " << child->Stderr());
    REQUIRE(up);
  }
  std::string host() const { return "127.0.0.1:" + std::to_string(port); }
  std::string url() const { return "http://" + host(); }

  fs::path dir;
  uint16_t port;
  std::unique_ptr<Child> child;
};

// Packs `disk` as a containerDisk OCI layout (compression gzip|zstd|none); returns the layout.
fs::path Pack(const fs::path& work, const fs::path& disk, const std::string& name,
              const std::string& compression) {
  fs::path layout = work / ("oci-" + name);
  Run({"/bin/bash", (Fixtures() / "containerdisk" / "make-containerdisk.sh").string(),
       disk.string(), layout.string(), "v1", compression},
      work);
  return layout;
}

// skopeo copy of a layout to the registry (plain HTTP); extra args before the source.
void Push(const fs::path& work, const fs::path& layout, const std::string& ref,
          std::vector<std::string> extra = {}) {
  std::vector<std::string> argv = {"/usr/bin/skopeo", "copy", "-q", "--dest-tls-verify=false"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  argv.push_back("oci:" + layout.string() + ":v1");
  argv.push_back("docker://" + ref);
  Run(argv, work);
}

// The manifest (or index) the registry serves for `repo:tag`, as JSON.
Json RegistryManifest(const Registry& reg, const std::string& repo, const std::string& tag,
                      const std::string& accept) {
  auto r = Http(reg.url(), "GET", "/v2/" + repo + "/manifests/" + tag, "", "", 10s,
                {"Accept: " + accept});
  INFO(r.body);
  REQUIRE(r.status == 200);
  return ParseJson(r.body);
}

Json ContainerDiskVm(const std::string& name, const std::string& image,
                     const std::string& pull_secret = "", const std::string& policy = "") {
  Json cd = {{"image", image}};
  if (!pull_secret.empty()) cd["imagePullSecret"] = pull_secret;
  if (!policy.empty()) cd["imagePullPolicy"] = policy;
  Json vm = {{"apiVersion", "kubevirt.io/v1"}, {"kind", "VirtualMachine"}};
  vm["metadata"] = {{"name", name}, {"namespace", "default"}};
  vm["spec"]["runStrategy"] = "Always";
  vm["spec"]["template"]["spec"] = {
      {"terminationGracePeriodSeconds", 0},
      {"domain",
       {{"devices", {{"disks", Json::array({{{"name", "root"}, {"disk", {{"bus", "virtio"}}}}})}}},
        {"resources", {{"requests", {{"memory", "256Mi"}}}}}}},
      {"volumes", Json::array({{{"name", "root"}, {"containerDisk", cd}}})}};
  return vm;
}

void DeleteVm(VmEnv& env, const std::string& name) {
  auto r = Http(env.daemon.url(), "DELETE",
                "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/" + name);
  REQUIRE((r.status == 200 || r.status == 202));
}

// The VMI's Synchronized condition (reason, message); empty when it has none.
std::pair<std::string, std::string> SyncCondition(VmEnv& env, const std::string& name) {
  Json vmi = env.Vmi(name);
  if (vmi.is_null() || !vmi.contains("status")) return {};
  for (const auto& c : vmi["status"].value("conditions", Json::array())) {
    if (c.value("type", "") == "Synchronized") {
      return {c.value("reason", ""), c.value("message", "")};
    }
  }
  return {};
}

std::vector<std::string> EventMessages(VmEnv& env, const std::string& reason) {
  auto r = Http(env.daemon.url(), "GET", "/api/v1/namespaces/default/events");
  REQUIRE(r.status == 200);
  std::vector<std::string> out;
  Json events = ParseJson(r.body);
  for (const auto& e : events["items"]) {
    if (e.value("reason", "") == reason) out.push_back(e.value("message", ""));
  }
  return out;
}

// `edgevirtd image ARGS` on the test daemon's configuration (beside the running daemon).
std::pair<int, std::string> ImageCli(VmEnv& env, std::vector<std::string> args) {
  std::vector<std::string> argv = {EDGEVIRTD_PATH, "--config",
                                   (env.tmp / "daemon" / "edgevirtd.yaml").string(), "image"};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(argv, env.tmp.path(), 120s);
}

std::string Registries(const std::vector<std::string>& hosts) {
  std::string out = "images:\n  registries:\n";
  for (const auto& h : hosts) out += "    - host: \"" + h + "\"\n      insecure: true\n";
  return out;
}

void CreateSecret(VmEnv& env, const std::string& name, const std::string& host,
                  const std::string& user, const std::string& pass) {
  const std::string auth = Base64(user + ":" + pass);
  Json config = {{"auths", {{host, {{"auth", auth}}}}}};
  Json secret = {{"apiVersion", "v1"},
                 {"kind", "Secret"},
                 {"metadata", {{"name", name}, {"namespace", "default"}}},
                 {"type", "kubernetes.io/dockerconfigjson"},
                 {"data", {{".dockerconfigjson", Base64(config.dump())}}}};
  auto r = Http(env.daemon.url(), "POST", "/api/v1/namespaces/default/secrets", secret.dump());
  INFO(r.body);
  REQUIRE(r.status == 201);
}

TEST_CASE(
    "VMs boot the test guest from containerDisks: qcow2 and raw, OCI and Docker v2s2, "
    "gzip and zstd, an index with amd64 and arm64 entries") {
  TempDir work("ev-cd-reg");
  REQUIRE(::chmod(work.path().c_str(), 0711) == 0);
  Registry reg(work / "registry", {"none"});
  VmEnv env("ev-cd", Registries({reg.host()}));

  // qcow2 in an OCI index (amd64 + arm64 manifests), gzip.
  Run({"/bin/bash", (Fixtures() / "registry" / "push-image.sh").string(),
       (GuestDir() / "guest.qcow2").string(), (work / "oci-index").string(), "v1",
       reg.host() + "/kv/guest-index:v1", "--arch", "amd64,arm64"},
      work.path());
  // raw as Docker schema 2 (gzip).
  Push(work.path(), Pack(work.path(), GuestDir() / "guest.raw", "raw", "gzip"),
       reg.host() + "/kv/guest-v2s2:v1", {"--format", "v2s2"});
  // raw, OCI, zstd.
  Push(work.path(), Pack(work.path(), GuestDir() / "guest.raw", "zstd", "zstd"),
       reg.host() + "/kv/guest-zstd:v1");
  Json zstd =
      RegistryManifest(reg, "kv/guest-zstd", "v1", "application/vnd.oci.image.manifest.v1+json");
  REQUIRE(zstd["layers"][0]["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd");
  Json v2s2 = RegistryManifest(reg, "kv/guest-v2s2", "v1",
                               "application/vnd.docker.distribution.manifest.v2+json");
  REQUIRE(v2s2["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json");
  Json index =
      RegistryManifest(reg, "kv/guest-index", "v1", "application/vnd.oci.image.index.v1+json");
  std::string amd64_digest;
  for (const auto& m : index["manifests"]) {
    if (m["platform"].value("architecture", "") == "amd64") amd64_digest = m["digest"];
  }
  REQUIRE(index["manifests"].size() == 2);
  REQUIRE_FALSE(amd64_digest.empty());

  const std::vector<std::pair<std::string, std::string>> vms = {
      {"cd-index", reg.host() + "/kv/guest-index:v1"},
      {"cd-v2s2", reg.host() + "/kv/guest-v2s2:v1"},
      {"cd-zstd", reg.host() + "/kv/guest-zstd:v1"}};
  for (const auto& [name, image] : vms) env.Create(ContainerDiskVm(name, image));
  std::map<std::string, std::string> uids;
  for (const auto& [name, image] : vms) {
    INFO(name << "\n" << env.daemon.Stderr());
    REQUIRE(env.WaitPhase(name, "Running", 300s));
    uids[name] = env.Vmi(name)["metadata"]["uid"];
  }
  for (const auto& [name, image] : vms) {
    INFO(name);
    CHECK(env.WaitSerial(uids[name], "EDGE-GUEST-BOOTED"));
    // The guest writes to its own overlay; the base stays the cache's read-only file.
    const fs::path overlay = env.VmiDir(uids[name]) / "containerdisk-root.qcow2";
    REQUIRE(fs::exists(overlay));
    Json info = ParseJson(
        Run({"/usr/bin/qemu-img", "info", "--output=json", "-U", overlay.string()}, work.path()));
    CHECK(info["format"] == "qcow2");
    const std::string base =
        info.value("full-backing-filename", info.value("backing-filename", ""));
    CHECK(base.rfind((env.daemon.state_dir() / "images" / "disks").string(), 0) == 0);
    CHECK(info.value("backing-filename-format", "") == (name == "cd-index" ? "qcow2" : "raw"));
    struct stat st {};
    REQUIRE(::stat(base.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0444);
  }
  // kubelet-style events, and the cache's view: three images with one user each; the index
  // resolved to its amd64 manifest.
  CHECK(EventMessages(env, "Pulling").size() == 3);
  CHECK(EventMessages(env, "Pulled").size() == 3);
  auto [code, list] = ImageCli(env, {"list"});
  INFO(list);
  REQUIRE(code == 0);
  CHECK(list.find(amd64_digest.substr(0, 19)) != std::string::npos);
  for (const auto& [name, image] : vms) CHECK(list.find(image) != std::string::npos);

  // Deleting the VMs removes their overlays and releases the images; prune then empties the
  // cache.
  for (const auto& [name, image] : vms) DeleteVm(env, name);
  for (const auto& [name, image] : vms) {
    REQUIRE(env.WaitUntilGone(name));
    CHECK_FALSE(fs::exists(env.VmiDir(uids[name])));
  }
  auto [pcode, pruned] = ImageCli(env, {"prune"});
  INFO(pruned);
  REQUIRE(pcode == 0);
  CHECK(std::count(pruned.begin(), pruned.end(), '\n') == 4);  // 3 removed + the summary
  const fs::path images = env.daemon.state_dir() / "images";
  CHECK(fs::is_empty(images / "disks"));
  CHECK(fs::is_empty(images / "blobs" / "sha256"));
  CHECK(ImageCli(env, {"list"}).second.find("kv/guest") == std::string::npos);
}

TEST_CASE(
    "pull errors show in the VM's status; an imagePullSecret supplies credentials; "
    "a hostile image is refused with its reason") {
  TempDir work("ev-cd-auth");
  REQUIRE(::chmod(work.path().c_str(), 0711) == 0);
  Registry reg(work / "registry", {"htpasswd", "alice:secret"});
  VmEnv env("ev-cd", Registries({reg.host()}));
  Push(work.path(), Pack(work.path(), GuestDir() / "guest.qcow2", "guest", "gzip"),
       reg.host() + "/kv/private:v1", {"--dest-creds", "alice:secret"});
  // A qcow2 whose backing file points at a host file: never to be handed to QEMU.
  const fs::path evil = work / "evil.qcow2";
  Run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", "-u",
       evil.string(), "16M"},
      work.path());
  Push(work.path(), Pack(work.path(), evil, "evil", "gzip"), reg.host() + "/kv/evil:v1",
       {"--dest-creds", "alice:secret"});

  // Hostile layers (tests/fixtures/containerdisk/make-hostile-tar.py), an external data file,
  // a virtual size above images.maxVirtualSize (default 1 TiB).
  for (const std::string kind : {"dotdot", "symlink-disk"}) {
    const fs::path tar = work / (kind + ".tar");
    Run({"/usr/bin/python3", (Fixtures() / "containerdisk" / "make-hostile-tar.py").string(), kind,
         tar.string(), (GuestDir() / "guest.qcow2").string()},
        work.path());
    const fs::path layout = work / ("oci-" + kind);
    Run({"/bin/bash", (Fixtures() / "containerdisk" / "make-containerdisk.sh").string(), "--layer",
         tar.string(), layout.string(), "v1", "gzip"},
        work.path());
    Push(work.path(), layout, reg.host() + "/kv/" + kind + ":v1", {"--dest-creds", "alice:secret"});
  }
  const fs::path datafile = work / "datafile.qcow2";
  Run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-o",
       "data_file=" + (work / "datafile.raw").string(), datafile.string(), "16M"},
      work.path());
  Push(work.path(), Pack(work.path(), datafile, "datafile", "gzip"), reg.host() + "/kv/datafile:v1",
       {"--dest-creds", "alice:secret"});
  const fs::path huge = work / "huge.qcow2";
  Run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", huge.string(), "2T"}, work.path());
  Push(work.path(), Pack(work.path(), huge, "huge", "gzip"), reg.host() + "/kv/huge:v1",
       {"--dest-creds", "alice:secret"});
  const std::map<std::string, std::string> refusals = {{"dotdot", "evil"},
                                                       {"symlink-disk", "symlink"},
                                                       {"datafile", "data file"},
                                                       {"huge", "virtual size"}};

  CreateSecret(env, "wrong-creds", reg.host(), "alice", "guess");
  CreateSecret(env, "right-creds", reg.host(), "alice", "secret");
  env.Create(ContainerDiskVm("anonymous", reg.host() + "/kv/private:v1"));
  env.Create(ContainerDiskVm("wrong", reg.host() + "/kv/private:v1", "wrong-creds"));
  env.Create(ContainerDiskVm("right", reg.host() + "/kv/private:v1", "right-creds"));
  env.Create(ContainerDiskVm("evil", reg.host() + "/kv/evil:v1", "right-creds"));
  for (const auto& [kind, why] : refusals) {
    env.Create(ContainerDiskVm(kind, reg.host() + "/kv/" + kind + ":v1", "right-creds"));
  }

  for (const std::string name : {"anonymous", "wrong"}) {
    INFO(name);
    const bool failed = WaitUntil(
        [&] {
          const std::string s = env.PrintableStatus(name);
          return s == "ErrImagePull" || s == "ImagePullBackOff";
        },
        60s);
    REQUIRE(failed);
    CHECK(env.Phase(name) == "Scheduling");
    auto [reason, message] = SyncCondition(env, name);
    CHECK((reason == "ErrImagePull" || reason == "ImagePullBackOff"));
    CHECK_THAT(message, Catch::Contains("401 Unauthorized"));
  }
  REQUIRE(env.WaitPhase("right", "Running", 120s));
  CHECK(WaitUntil(
      [&] { return SyncCondition(env, "evil").second.find("backing file") != std::string::npos; },
      60s));
  CHECK(env.Phase("evil") == "Scheduling");
  for (const auto& [kind, why] : refusals) {
    INFO(kind << ": " << SyncCondition(env, kind).second);
    CHECK(WaitUntil(
        [&] {
          auto [reason, message] = SyncCondition(env, kind);
          return (reason == "ErrImagePull" || reason == "ImagePullBackOff") &&
                 message.find(why) != std::string::npos;
        },
        60s));
    CHECK(env.Phase(kind) == "Scheduling");
  }
  bool failed_event = false;
  for (const auto& m : EventMessages(env, "Failed")) {
    if (m.find("kv/private:v1") != std::string::npos && m.find("401") != std::string::npos) {
      failed_event = true;
    }
  }
  CHECK(failed_event);
  // Nothing of the refused image reached the disks directory.
  auto [code, list] = ImageCli(env, {"list"});
  CHECK(list.find("kv/evil") == std::string::npos);
  std::vector<std::string> all = {"anonymous", "wrong", "right", "evil"};
  for (const auto& [kind, why] : refusals) all.push_back(kind);
  for (const auto& name : all) DeleteVm(env, name);
  for (const auto& name : all) CHECK(env.WaitUntilGone(name));
}

TEST_CASE("a token-auth registry: credentials from images.authFile, re-read for every pull") {
  REQUIRE(EnterPrivateNetns() == 0);  // the token server must share the daemon's namespace
  TempDir work("ev-cd-token");
  REQUIRE(::chmod(work.path().c_str(), 0711) == 0);
  const fs::path key = work / "key.pem", cert = work / "cert.pem";
  Run({"/bin/bash", (Fixtures() / "registry" / "make-token-key.sh").string(), key.string(),
       cert.string()},
      work.path());
  const fs::path token_port = work / "token.port";
  Child tokens({"/usr/bin/python3", (Fixtures() / "registry" / "token-server.py").string(),
                key.string(), cert.string(), token_port.string()},
               {}, work.path(), "token-server");
  REQUIRE(WaitUntil([&] { return !ReadFile(token_port).empty(); }, 10s));
  const std::string realm = "http://127.0.0.1:" + ReadFile(token_port) + "/token";
  Registry reg(work / "registry", {"token", realm, cert.string()});
  Push(work.path(), Pack(work.path(), GuestDir() / "guest.qcow2", "guest", "gzip"),
       reg.host() + "/kv/guest:v1", {"--dest-creds", "alice:secret"});

  const fs::path auth_file = work / "auth.json";
  auto write_auth = [&](const std::string& pass) {
    WriteFile(auth_file,
              Json{{"auths", {{reg.host(), {{"auth", Base64("alice:" + pass)}}}}}}.dump());
  };
  write_auth("guess");
  VmEnv env("ev-cd", Registries({reg.host()}) + "  authFile: " + auth_file.string() + "\n");
  env.Create(ContainerDiskVm("tok-wrong", reg.host() + "/kv/guest:v1"));
  REQUIRE(WaitUntil(
      [&] { return SyncCondition(env, "tok-wrong").second.find("401") != std::string::npos; },
      60s));
  CHECK(env.PrintableStatus("tok-wrong") != "Running");
  // Corrected on disk, without a restart: the next pull uses it.
  write_auth("secret");
  env.Create(ContainerDiskVm("tok-right", reg.host() + "/kv/guest:v1"));
  REQUIRE(env.WaitPhase("tok-right", "Running", 120s));
  auto log = Http("http://127.0.0.1:" + ReadFile(token_port), "GET", "/__log");
  REQUIRE(log.status == 200);
  bool with_credentials = false;
  for (const auto& e : ParseJson(log.body)) with_credentials |= e.value("basic", false);
  CHECK(with_credentials);
  for (const std::string name : {"tok-wrong", "tok-right"}) DeleteVm(env, name);
  for (const std::string name : {"tok-wrong", "tok-right"}) CHECK(env.WaitUntilGone(name));
}

TEST_CASE("an air-gapped host imports an OCI archive beside the running daemon") {
  TempDir work("ev-cd-import");
  REQUIRE(::chmod(work.path().c_str(), 0711) == 0);
  VmEnv env("ev-cd");
  const fs::path layout = Pack(work.path(), GuestDir() / "guest.qcow2", "guest", "gzip");
  const fs::path archive = work / "guest.tar";
  // As an operator would carry it over: the full reference in the archive's ref.name.
  Run({"/usr/bin/skopeo", "copy", "-q", "oci:" + layout.string() + ":v1",
       "oci-archive:" + archive.string() + ":edge.local/kubevirt/test-guest:v1"},
      work.path());
  auto [code, out] = ImageCli(env, {"import", archive.string()});
  INFO(out);
  REQUIRE(code == 0);
  CHECK(out.find("edge.local/kubevirt/test-guest:v1") != std::string::npos);
  // The README's example, applied with kubectl. edge.local does not resolve: the VM can only
  // start from the imported image.
  MustRun(env.kubectl,
          {"apply", "-f",
           (fs::path(EDGEVIRT_SOURCE_DIR) / "examples" / "vm-containerdisk.yaml").string()});
  REQUIRE(env.WaitPhase("edge-cd", "Running", 120s));
  const std::string uid = env.Vmi("edge-cd")["metadata"]["uid"];
  CHECK(env.WaitSerial(uid, "EDGE-GUEST-BOOTED"));
  CHECK(EventMessages(env, "Pulling").empty());
  // An image still in use survives a prune.
  CHECK(ImageCli(env, {"prune"}).first == 0);
  CHECK(ImageCli(env, {"list"}).second.find("edge.local/kubevirt/test-guest:v1") !=
        std::string::npos);
  DeleteVm(env, "edge-cd");
  REQUIRE(env.WaitUntilGone("edge-cd"));
}

// tests/fixtures/registry/fault-proxy.py in front of a registry: it relays, throttles on request
// and logs every request with its Range header.
struct FaultProxy {
  FaultProxy(const fs::path& dir, const Registry& reg) {
    const fs::path ports = dir / "proxy.ports";
    child = std::make_unique<Child>(
        std::vector<std::string>{"/usr/bin/python3",
                                 (Fixtures() / "registry" / "fault-proxy.py").string(), reg.host(),
                                 ports.string()},
        std::map<std::string, std::optional<std::string>>{}, dir, "proxy");
    REQUIRE(WaitUntil([&] { return !ReadFile(ports).empty(); }, 10s));
    port = std::stoi(ReadFile(ports));
  }
  std::string host() const { return "127.0.0.1:" + std::to_string(port); }
  void Control(const std::string& path, const Json& body) {
    auto r = Http("http://" + host(), "POST", path, body.dump());
    REQUIRE(r.status == 200);
  }
  Json Log() {
    auto r = Http("http://" + host(), "GET", "/__proxy/log");
    REQUIRE(r.status == 200);
    return ParseJson(r.body);
  }
  int port = 0;
  std::unique_ptr<Child> child;
};

uint64_t FileSize(const fs::path& p) {
  std::error_code ec;
  auto n = fs::file_size(p, ec);
  return ec ? 0 : n;
}

TEST_CASE("a daemon SIGKILLed in the middle of a 2 GiB blob resumes it with a Range request") {
  TempDir work("ev-cd-big");
  REQUIRE(::chmod(work.path().c_str(), 0711) == 0);
  Registry reg(work / "registry", {"none"});
  FaultProxy proxy(work.path(), reg);
  // 2 GiB of random bytes: incompressible, so the (uncompressed) layer is 2 GiB too.
  const fs::path disk = work / "big.raw";
  Run({"/usr/bin/dd", "if=/dev/urandom", "of=" + disk.string(), "bs=16M", "count=128",
       "iflag=fullblock", "status=none"},
      work.path());
  const fs::path layout = Pack(work.path(), disk, "big", "none");
  fs::remove(disk);
  Push(work.path(), layout, reg.host() + "/kv/big:v1");
  Json manifest =
      RegistryManifest(reg, "kv/big", "v1", "application/vnd.oci.image.manifest.v1+json");
  const std::string layer = manifest["layers"][0]["digest"];
  const uint64_t layer_size = manifest["layers"][0]["size"];
  REQUIRE(layer_size > (uint64_t{2} << 30));
  fs::remove_all(layout);
  const std::string hex = layer.substr(7);

  VmEnv env("ev-cd", Registries({proxy.host()}));
  const fs::path images = env.daemon.state_dir() / "images";
  // About 20 s for the whole blob: long enough to kill the daemon in the middle.
  proxy.Control("/__proxy/rules", {{"rules", Json::array()}, {"throttle_bps", 100 << 20}});
  env.Create(ContainerDiskVm("big", proxy.host() + "/kv/big:v1"));
  const fs::path partial = images / "ingest" / hex;
  const bool midway = WaitUntil([&] { return FileSize(partial) >= (uint64_t{400} << 20); }, 120s);
  INFO(env.daemon.Stderr());
  REQUIRE(midway);
  env.daemon.Kill();
  const uint64_t at_kill = FileSize(partial);
  REQUIRE(at_kill < layer_size);

  proxy.Control("/__proxy/reset", Json::object());
  env.daemon.Start();
  REQUIRE(env.WaitPhase("big", "Running", 300s));
  // The blob was fetched once more, from an offset past zero (the last checkpoint), not again
  // from the start.
  std::vector<std::string> ranges;
  for (const auto& e : proxy.Log()) {
    if (e.value("method", "") == "GET" &&
        e.value("path", "").find("/blobs/" + layer) != std::string::npos) {
      ranges.push_back(e["range"].is_string() ? e["range"].get<std::string>() : "");
    }
  }
  INFO("blob GETs after the restart:");
  for (const auto& r : ranges) INFO(r);
  REQUIRE(ranges.size() == 1);
  REQUIRE(ranges[0].rfind("bytes=", 0) == 0);
  const uint64_t resumed_at = std::stoull(ranges[0].substr(6));
  CHECK(resumed_at > 0);
  CHECK(resumed_at <= at_kill);
  // The blob in the store is exactly the registry's.
  const fs::path blob = images / "blobs" / "sha256" / hex;
  REQUIRE(FileSize(blob) == layer_size);
  const std::string sum = Run({"/usr/bin/sha256sum", blob.string()}, work.path());
  CHECK(sum.substr(0, 64) == hex);
  CHECK_FALSE(fs::exists(partial));
  CHECK(fs::is_empty(images / "tmp"));
  DeleteVm(env, "big");
  REQUIRE(env.WaitUntilGone("big"));
}

}  // namespace
}  // namespace edgevirt::testing
