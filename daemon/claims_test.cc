// Unit tests of the claims controller: a real store and machinery in a temp directory, the real
// qemu-img (file ownership is checked when run as root), files classes only (device and LVM classes
// need block devices: see tests/integration/kubectl_pvc_test.cc), plus the argv it builds for
// lvcreate/lvremove.
#include "daemon/claims.h"

#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "api/machinery/codec.h"
#include "common/exec.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::daemon {
namespace {

using api::Json;
using namespace std::chrono_literals;
using edgevirt::testing::TempDir;
namespace fs = std::filesystem;

constexpr char kUid[] = "0b6a3c1e-5f7d-4e2a-9c8b-1d2e3f405162";

// A store, the machinery (core/v1 only, default class "local") and, once started, the claims
// controller with a files class "local" (qcow2) and "rawfiles" (raw) under the temp directory.
class ClaimsEnv {
 public:
  ClaimsEnv() {
    store::Options so;
    so.dir = tmp_.path() / "state";
    auto s = store::Store::Open(so);
    REQUIRE(s.has_value());
    store_ = std::move(*s);
    api::machinery::CoreV1Options core;
    core.claims.default_storage_class = "local";
    api::machinery::MachineryOptions mo;
    mo.run_garbage_collector = false;
    auto m = api::machinery::Machinery::Create(*store_, {api::machinery::CoreV1(core)}, mo);
    REQUIRE(m.has_value());
    machinery_ = std::move(*m);
    recorder_ = machinery_->NewEventRecorder({"edgevirt-provisioner", "test"});
  }
  ~ClaimsEnv() {
    claims_.reset();
    recorder_.reset();
    machinery_->Stop();
    machinery_.reset();
    store_->Close();
  }

  fs::path volumes() const { return tmp_.path() / "volumes"; }

  void Start() {
    ClaimsOptions o;
    StorageClass local;
    local.name = "local";
    local.is_default = true;
    local.dir = volumes().string();
    StorageClass raw = local;
    raw.name = "rawfiles";
    raw.is_default = false;
    raw.format = StorageClass::Format::kRaw;
    o.classes = {local, raw};
    o.resync_period = 500ms;
    auto c = Claims::Start(*machinery_, recorder_.get(), std::move(o));
    if (!c) FAIL(c.error().message);
    claims_ = std::move(*c);
  }
  void StopClaims() { claims_.reset(); }

  const api::ResourceType& rt() {
    return *machinery_->registry().ByKind("", "PersistentVolumeClaim");
  }

  Json CreateClaim(const std::string& name, const std::string& extra_spec = "") {
    Json pvc =
        Json::parse(R"({"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":{"name":")" +
                    name + R"("},"spec":{"accessModes":["ReadWriteOnce"],)" + extra_spec +
                    R"("resources":{"requests":{"storage":"64Mi"}}}})");
    auto created = machinery_->registry().Create(rt(), "default", pvc, {});
    if (!created) FAIL(created.error().message);
    auto obj = machinery_->registry().GetObject(rt(), "default", name);
    REQUIRE(obj.ok());
    return *obj;
  }

  // The claim once its status.phase is `phase` (fails after 20 s).
  Json WaitPhase(const std::string& name, const std::string& phase) {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    Json last;
    while (std::chrono::steady_clock::now() < deadline) {
      auto obj = machinery_->registry().GetObject(rt(), "default", name);
      if (obj) {
        last = *obj;
        if (last["status"].value("phase", "") == phase) return last;
      }
      std::this_thread::sleep_for(50ms);
    }
    FAIL("claim " << name << " did not reach " << phase << ": " << last.dump());
    return last;
  }

  void Delete(const std::string& name) {
    auto d = machinery_->registry().Delete(rt(), "default", name, {}, {});
    REQUIRE(d.ok());
  }

  // Messages of the events about the claim with `uid`.
  std::vector<std::string> EventsAbout(const std::string& uid) {
    recorder_->Flush();
    std::vector<std::string> out;
    auto list = machinery_->registry().List(*machinery_->registry().ByKind("", "Event"), {});
    REQUIRE(list.ok());
    for (const auto& rec : list->items) {
      Json e = *api::machinery::DecodeRecord(rec);
      if (e["involvedObject"].value("uid", "") == uid) {
        out.push_back(e.value("reason", "") + ": " + e.value("message", ""));
      }
    }
    return out;
  }

  bool WaitFor(const std::function<bool()>& done) {
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    while (std::chrono::steady_clock::now() < deadline) {
      if (done()) return true;
      std::this_thread::sleep_for(50ms);
    }
    return done();
  }

  store::Store& store() { return *store_; }
  Claims* claims() { return claims_.get(); }

 private:
  TempDir tmp_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<api::machinery::Machinery> machinery_;
  std::unique_ptr<api::machinery::EventRecorder> recorder_;
  std::unique_ptr<Claims> claims_;
};

std::set<std::string> Listing(const fs::path& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) out.insert(e.path().filename().string());
  return out;
}

uint64_t VirtualSize(const std::string& path) {
  auto r = ExecChecked({"qemu-img", "info", "--output=json", path});
  REQUIRE(r.has_value());
  return Json::parse(r->stdout_text)["virtual-size"].get<uint64_t>();
}

TEST_CASE("claims: argv, capacities and records") {
  CHECK(QemuImgCreateArgv("qcow2", "/v/default/x.qcow2", 1 << 20) ==
        std::vector<std::string>{"qemu-img", "create", "-q", "-f", "qcow2", "/v/default/x.qcow2",
                                 "1048576"});
  CHECK(LvCreateArgv("vg0", std::string("edgevirt-") + kUid, 1073741824) ==
        std::vector<std::string>{"lvcreate", "-n", std::string("edgevirt-") + kUid, "-L",
                                 "1073741824b", "vg0", "-y", "-W", "y", "-Z", "y"});
  CHECK(LvRemoveArgv("vg0", "edgevirt-x") ==
        std::vector<std::string>{"lvremove", "-y", "vg0/edgevirt-x"});

  CHECK(FormatCapacity(0) == "0");
  CHECK(FormatCapacity(1073741824) == "1Gi");
  CHECK(FormatCapacity(1610612736) == "1536Mi");
  CHECK(FormatCapacity(67108864) == "64Mi");
  CHECK(FormatCapacity(1000000000) == "1000000000");
  CHECK(FormatCapacity(512) == "512");
  CHECK(FormatCapacity(uint64_t{1} << 62) == "4Ei");

  ClaimRecord r;
  r.ns = "default";
  r.name = "data";
  r.class_name = "fast";
  r.kind = ClaimRecord::Kind::kLvm;
  r.path = "/dev/vg0/edgevirt-x";
  r.volume_group = "vg0";
  r.lv_name = "edgevirt-x";
  r.capacity = 4 << 20;
  r.block = true;
  auto back = ClaimRecord::FromJson(r.ToJson());
  REQUIRE(back.has_value());
  CHECK(back->ToJson() == r.ToJson());
  CHECK(Json::parse(r.ToJson())["state"] == "provisioning");
  CHECK_FALSE(ClaimRecord::FromJson("{\"kind\":\"tape\"}").has_value());
  CHECK_FALSE(ClaimRecord::FromJson("not json").has_value());
}

TEST_CASE("claims: a files class provisions, binds, resolves and releases") {
  ClaimsEnv env;
  env.Start();
  Json claim = env.CreateClaim("data");
  const std::string uid = claim["metadata"]["uid"];
  Json bound = env.WaitPhase("data", "Bound");
  CHECK(bound["spec"]["volumeName"] == "pvc-" + uid);
  CHECK(bound["spec"]["storageClassName"] == "local");
  CHECK(bound["status"]["capacity"]["storage"] == "64Mi");
  CHECK(bound["status"]["accessModes"] == Json::array({"ReadWriteOnce"}));
  CHECK(bound["metadata"]["annotations"]["pv.kubernetes.io/bind-completed"] == "yes");

  const fs::path file = env.volumes() / "default" / (uid + ".qcow2");
  REQUIRE(fs::is_regular_file(file));
  CHECK(Listing(env.volumes() / "default") == std::set<std::string>{uid + ".qcow2"});
  CHECK(VirtualSize(file.string()) == 64u << 20);
  struct stat st {};
  REQUIRE(::stat(file.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0660);
  if (::geteuid() == 0) {
    CHECK(st.st_uid == 0);
    const group* kvm = ::getgrnam("kvm");  // getgrnam's result is overwritten by the next call
    const gid_t qemu_gid = kvm ? kvm->gr_gid : ::getgrnam("nogroup")->gr_gid;
    CHECK(st.st_gid == qemu_gid);
  }
  REQUIRE(::stat((env.volumes() / "default").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0750);

  auto volume = ResolveClaim(env.store(), "default", "data");
  INFO((volume ? std::string() : volume.error().message));
  REQUIRE(volume.has_value());
  CHECK(volume->claim_uid == uid);
  CHECK(volume->path == fs::canonical(file).string());
  CHECK(volume->qcow2);
  CHECK_FALSE(volume->block);
  CHECK(volume->capacity_bytes == 64u << 20);
  CHECK_FALSE(volume->read_only_many);
  auto record = env.store().GetRaw(kClaimsSpace, uid);
  REQUIRE(record.has_value());
  CHECK(Json::parse(*record)["state"] == "bound");
  CHECK(env.EventsAbout(uid) ==
        std::vector<std::string>{"ProvisioningSucceeded: Successfully provisioned volume pvc-" +
                                 uid});

  // A raw class, and a claim that can only be read.
  Json raw = env.CreateClaim("raw", R"("storageClassName":"rawfiles",)");
  env.WaitPhase("raw", "Bound");
  const std::string raw_uid = raw["metadata"]["uid"];
  CHECK(fs::file_size(env.volumes() / "default" / (raw_uid + ".img")) == 64u << 20);
  auto raw_volume = ResolveClaim(env.store(), "default", "raw");
  REQUIRE(raw_volume.has_value());
  CHECK_FALSE(raw_volume->qcow2);

  env.Delete("data");
  CHECK(env.WaitFor([&] { return !fs::exists(file); }));
  CHECK(env.WaitFor([&] { return !env.store().GetRaw(kClaimsSpace, uid).has_value(); }));
  CHECK(ResolveClaim(env.store(), "default", "data").error().code == Code::kNotFound);
  CHECK(Listing(env.volumes() / "default") == std::set<std::string>{raw_uid + ".img"});
}

TEST_CASE("claims: claims that cannot be provisioned stay Pending with an event") {
  ClaimsEnv env;
  env.Start();
  Json nope = env.CreateClaim("nope", R"("storageClassName":"nope",)");
  Json none = env.CreateClaim("none", R"("storageClassName":"",)");
  Json selector = env.CreateClaim("selector", R"("selector":{"matchLabels":{"a":"b"}},)");
  const std::string uid = nope["metadata"]["uid"];
  REQUIRE(env.WaitFor([&] { return !env.EventsAbout(uid).empty(); }));
  REQUIRE(env.claims()->WaitIdleForTest(10s));
  CHECK(env.EventsAbout(uid) ==
        std::vector<std::string>{
            "ProvisioningFailed: storageclass.storage.k8s.io \"nope\" not found"});
  CHECK(env.EventsAbout(none["metadata"]["uid"]) ==
        std::vector<std::string>{"FailedBinding: no persistent volumes available for this claim "
                                 "and no storage class is set"});
  CHECK(env.EventsAbout(selector["metadata"]["uid"]) ==
        std::vector<std::string>{"ProvisioningFailed: failed to provision volume with "
                                 "StorageClass \"local\": claim Selector is not supported"});
  auto resolved = ResolveClaim(env.store(), "default", "nope");
  REQUIRE_FALSE(resolved.has_value());
  CHECK(resolved.error().code == Code::kUnavailable);
  CHECK(resolved.error().message ==
        "persistentvolumeclaim default/nope is not bound yet (phase Pending): "
        "storageclass.storage.k8s.io \"nope\" not found");
  CHECK(ResolveClaim(env.store(), "default", "missing").error().code == Code::kNotFound);
  // Nothing was allocated for them.
  auto records = env.store().ListRaw(kClaimsSpace, "");
  REQUIRE(records.has_value());
  CHECK(records->empty());
  // The resync does not repeat the same event.
  std::this_thread::sleep_for(1200ms);
  CHECK(env.EventsAbout(uid).size() == 1);
}

TEST_CASE("claims: resumes after a crash from the records") {
  ClaimsEnv env;
  // A claim created while no controller ran, and its record written as a crash would leave it:
  // "provisioning", with a half-made temporary file.
  Json claim = env.CreateClaim("data");
  const std::string uid = claim["metadata"]["uid"];
  fs::create_directories(env.volumes() / "default");
  ClaimRecord r;
  r.ns = "default";
  r.name = "data";
  r.class_name = "local";
  r.kind = ClaimRecord::Kind::kFiles;
  r.dir = fs::weakly_canonical(env.volumes()).string();
  r.format = "qcow2";
  r.path = r.dir + "/default/" + uid + ".qcow2";
  r.capacity = 64 << 20;
  REQUIRE(env.store().PutRaw(kClaimsSpace, uid, r.ToJson()).has_value());
  std::ofstream(env.volumes() / "default" / ("." + uid + ".tmp")) << "half";
  // And a record of a claim that no longer exists, whose file is still there.
  ClaimRecord gone = r;
  gone.name = "gone";
  gone.path = r.dir + "/default/" + kUid + ".qcow2";
  gone.state = ClaimRecord::State::kBound;
  REQUIRE(env.store().PutRaw(kClaimsSpace, kUid, gone.ToJson()).has_value());
  std::ofstream(gone.path) << "old";

  env.Start();
  env.WaitPhase("data", "Bound");
  CHECK(env.WaitFor(
      [&] { return Listing(env.volumes() / "default") == std::set<std::string>{uid + ".qcow2"}; }));
  CHECK(VirtualSize(r.path) == 64u << 20);
  // The release removes the file, then the record.
  CHECK(env.WaitFor([&] {
    auto records = env.store().ListRaw(kClaimsSpace, "");
    return records && records->size() == 1 && records->front().first == uid;
  }));

  // Stopped and started again: nothing changes, nothing is made twice.
  env.StopClaims();
  env.Start();
  REQUIRE(env.claims()->WaitIdleForTest(10s));
  CHECK(Listing(env.volumes() / "default") == std::set<std::string>{uid + ".qcow2"});
  CHECK(env.EventsAbout(uid).size() == 1);
}

TEST_CASE("claims: a record with an unexpected path is never acted on") {
  ClaimsEnv env;
  fs::create_directories(env.volumes());
  const fs::path outside = env.volumes().parent_path() / "precious";
  std::ofstream(outside) << "keep";
  ClaimRecord r;
  r.ns = "default";
  r.name = "evil";
  r.class_name = "local";
  r.kind = ClaimRecord::Kind::kFiles;
  r.dir = fs::weakly_canonical(env.volumes()).string();
  r.format = "qcow2";
  r.path = outside.string();
  r.state = ClaimRecord::State::kBound;
  REQUIRE(env.store().PutRaw(kClaimsSpace, kUid, r.ToJson()).has_value());
  env.Start();
  std::this_thread::sleep_for(300ms);
  CHECK(fs::exists(outside));
  CHECK(env.store().GetRaw(kClaimsSpace, kUid).has_value());

  // A symbolic link planted as the namespace directory is not followed.
  env.StopClaims();
  REQUIRE(env.store().DeleteRaw(kClaimsSpace, kUid).has_value());
  const fs::path elsewhere = env.volumes().parent_path() / "elsewhere";
  fs::create_directories(elsewhere);
  std::ofstream(elsewhere / (std::string(kUid) + ".qcow2")) << "keep";
  fs::create_directory_symlink(elsewhere, env.volumes() / "other");
  r.ns = "other";
  r.path = r.dir + "/other/" + kUid + ".qcow2";
  REQUIRE(env.store().PutRaw(kClaimsSpace, kUid, r.ToJson()).has_value());
  env.Start();
  std::this_thread::sleep_for(300ms);
  CHECK(fs::exists(elsewhere / (std::string(kUid) + ".qcow2")));
  CHECK(env.store().GetRaw(kClaimsSpace, kUid).has_value());
}

}  // namespace
}  // namespace edgevirt::daemon
