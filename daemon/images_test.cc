// ImagePuller's scheduling: one pull per image for every waiting VMI, pull policies, kubelet's
// back-off, and that nothing blocks the caller. The cache is a stand-in whose pulls the test
// releases and fails at will (the real cache and registry are exercised end to end by
// tests/integration/vm_containerdisk_test.cc).
#include "daemon/images.h"

#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "tests/support/catch.h"

namespace edgevirt::daemon {
namespace {

using namespace std::chrono_literals;

class GatedCache : public image::Cache {
 public:
  Result<std::optional<image::Image>> Lookup(const std::string& reference,
                                             const std::string&) override {
    std::lock_guard lock(mu_);
    auto it = cached_.find(reference);
    if (it == cached_.end()) return std::optional<image::Image>();
    return std::optional<image::Image>(it->second);
  }
  Result<image::Image> Pull(const std::string& reference,
                            const image::PullOptions& options) override {
    std::unique_lock lock(mu_);
    ++pulls_[reference];
    credentials_seen_ = options.credentials;
    // As image::Cache reports: what the cache already had first, then the download's growth.
    if (options.progress) options.progress({5, 10});
    if (options.progress) options.progress({9, 10});
    // Stop() sets the cancel flag without telling this stand-in: poll it.
    while (outcome_.count(reference) == 0 && !options.cancel->load()) {
      cv_.wait_for(lock, 20ms);
    }
    if (options.cancel->load()) return MakeError(Code::kUnavailable, "cancelled");
    auto it = outcome_.find(reference);
    Result<image::Image> r = std::move(it->second);
    outcome_.erase(it);
    if (r) cached_[reference] = *r;
    return r;
  }
  Result<std::vector<image::Image>> Import(const std::filesystem::path&) override {
    return MakeError(Code::kUnsupported, "not here");
  }
  Result<std::vector<image::Image>> List() override { return std::vector<image::Image>{}; }
  Status Use(const std::string&, const std::string&) override { return Ok(); }
  Status Release(const std::string&) override { return Ok(); }
  Result<image::PruneReport> Prune(uint64_t) override { return image::PruneReport{}; }

  // Lets the running pull of `reference` end with `r`.
  void Finish(const std::string& reference, Result<image::Image> r) {
    std::lock_guard lock(mu_);
    outcome_.emplace(reference, std::move(r));
    cv_.notify_all();
  }
  int Pulls(const std::string& reference) {
    std::lock_guard lock(mu_);
    return pulls_[reference];
  }
  void Seed(const std::string& reference, image::Image img) {
    std::lock_guard lock(mu_);
    cached_[reference] = std::move(img);
  }
  image::Keychain CredentialsSeen() {
    std::lock_guard lock(mu_);
    return credentials_seen_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, int> pulls_;
  std::map<std::string, Result<image::Image>> outcome_;
  std::map<std::string, image::Image> cached_;
  image::Keychain credentials_seen_;
};

template <typename F>
bool WaitUntilTrue(F f) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (f()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

image::Image Img(const std::string& digest) {
  image::Image i;
  i.manifest_digest = digest;
  i.disk_path = "/images/" + digest;
  i.format = "qcow2";
  return i;
}

struct Notified {
  std::mutex mu;
  std::condition_variable cv;
  std::multiset<std::string> keys;
  bool Wait(const std::string& key, size_t n = 1) {
    std::unique_lock lock(mu);
    return cv.wait_for(lock, 10s, [&] { return keys.count(key) >= n; });
  }
};

ImagePullerOptions Opts(Notified& n) {
  ImagePullerOptions o;
  o.workers = 2;
  o.backoff_initial = 200ms;
  o.backoff_max = 400ms;
  o.notify = [&n](const std::string& key) {
    std::lock_guard lock(n.mu);
    n.keys.insert(key);
    n.cv.notify_all();
  };
  return o;
}

TEST_CASE("VMIs waiting for the same image share one pull, and Ensure never blocks") {
  GatedCache cache;
  Notified n;
  std::atomic<uint64_t> pulled{0};
  ImagePullerOptions opts = Opts(n);
  opts.pulled_bytes = &pulled;
  ImagePuller puller(cache, opts);
  image::Keychain creds{{"reg:5000", {"alice", "secret", ""}}};
  auto a = puller.Ensure("vmi/a", "reg:5000/kv/disk:v1", PullPolicy::kIfNotPresent, creds, "");
  auto b = puller.Ensure("vmi/b", "reg:5000/kv/disk:v1", PullPolicy::kAlways, {}, "");
  CHECK(a.kind == ImageState::Kind::kPulling);
  CHECK(b.kind == ImageState::Kind::kPulling);
  // The pull runs on a worker while the caller goes on; progress is visible meanwhile.
  REQUIRE(WaitUntilTrue([&] { return cache.Pulls("reg:5000/kv/disk:v1") == 1; }));
  auto again = puller.Ensure("vmi/a", "reg:5000/kv/disk:v1", PullPolicy::kIfNotPresent, creds, "");
  CHECK(again.kind == ImageState::Kind::kPulling);
  CHECK(again.progress.total_bytes == 10);
  CHECK(cache.CredentialsSeen() == creds);  // the first requester's pull secret

  cache.Finish("reg:5000/kv/disk:v1", Img("sha256:aa"));
  REQUIRE(n.Wait("vmi/a"));
  REQUIRE(n.Wait("vmi/b"));
  CHECK(cache.Pulls("reg:5000/kv/disk:v1") == 1);
  CHECK(pulled.load() == 4);  // 9 - 5: the bytes already cached are not counted
  auto ready = puller.Ensure("vmi/b", "reg:5000/kv/disk:v1", PullPolicy::kAlways, {}, "");
  REQUIRE(ready.kind == ImageState::Kind::kReady);
  CHECK(ready.image.manifest_digest == "sha256:aa");
}

TEST_CASE("pull policies: IfNotPresent uses the cache, Always pulls once per VMI, Never never") {
  GatedCache cache;
  Notified n;
  ImagePuller puller(cache, Opts(n));
  cache.Seed("reg/kv/disk:v1", Img("sha256:bb"));
  auto hit = puller.Ensure("vmi/a", "reg/kv/disk:v1", PullPolicy::kIfNotPresent, {}, "");
  CHECK(hit.kind == ImageState::Kind::kReady);
  CHECK(cache.Pulls("reg/kv/disk:v1") == 0);

  auto never = puller.Ensure("vmi/c", "reg/kv/other:v1", PullPolicy::kNever, {}, "");
  CHECK(never.kind == ImageState::Kind::kFailed);
  CHECK(never.message ==
        "container image \"reg/kv/other:v1\" is not present with pull policy of Never");
  CHECK(puller.Ensure("vmi/c", "reg/kv/other:v1", PullPolicy::kNever, {}, "").kind ==
        ImageState::Kind::kBackOff);
  CHECK(puller.Ensure("vmi/d", "reg/kv/disk:v1", PullPolicy::kNever, {}, "").kind ==
        ImageState::Kind::kReady);

  // Always: cached or not, this VMI gets a fresh pull, and keeps its result until Forget.
  auto always = puller.Ensure("vmi/e", "reg/kv/disk:v1", PullPolicy::kAlways, {}, "");
  CHECK(always.kind == ImageState::Kind::kPulling);
  REQUIRE(WaitUntilTrue([&] { return cache.Pulls("reg/kv/disk:v1") == 1; }));
  cache.Finish("reg/kv/disk:v1", Img("sha256:cc"));
  REQUIRE(n.Wait("vmi/e"));
  CHECK(
      puller.Ensure("vmi/e", "reg/kv/disk:v1", PullPolicy::kAlways, {}, "").image.manifest_digest ==
      "sha256:cc");
  CHECK(cache.Pulls("reg/kv/disk:v1") == 1);
  puller.Forget("vmi/e");
  CHECK(puller.Ensure("vmi/e", "reg/kv/disk:v1", PullPolicy::kAlways, {}, "").kind ==
        ImageState::Kind::kPulling);
  REQUIRE(WaitUntilTrue([&] { return cache.Pulls("reg/kv/disk:v1") == 2; }));
  cache.Finish("reg/kv/disk:v1", Img("sha256:cc"));
  REQUIRE(n.Wait("vmi/e", 2));
}

TEST_CASE("a failed pull is ErrImagePull once, then ImagePullBackOff until the retry is due") {
  GatedCache cache;
  Notified n;
  ImagePuller puller(cache, Opts(n));
  const std::string ref = "reg/kv/private:v1";
  REQUIRE(puller.Ensure("vmi/a", ref, PullPolicy::kIfNotPresent, {}, "").kind ==
          ImageState::Kind::kPulling);
  REQUIRE(WaitUntilTrue([&] { return cache.Pulls(ref) == 1; }));
  cache.Finish(ref, MakeError(Code::kPermission, "401 Unauthorized: authentication required"));
  REQUIRE(n.Wait("vmi/a"));
  auto failed = puller.Ensure("vmi/a", ref, PullPolicy::kIfNotPresent, {}, "");
  CHECK(failed.kind == ImageState::Kind::kFailed);
  CHECK(failed.message == "401 Unauthorized: authentication required");
  auto backoff = puller.Ensure("vmi/a", ref, PullPolicy::kIfNotPresent, {}, "");
  CHECK(backoff.kind == ImageState::Kind::kBackOff);
  CHECK(backoff.message == "401 Unauthorized: authentication required");
  const auto first_delay = backoff.retry_at - std::chrono::steady_clock::now();
  CHECK(first_delay <= 200ms);
  CHECK(cache.Pulls(ref) == 1);
  // Once due, the next Ensure retries; a second failure doubles the delay.
  std::this_thread::sleep_until(backoff.retry_at + 10ms);
  CHECK(puller.Ensure("vmi/a", ref, PullPolicy::kIfNotPresent, {}, "").kind ==
        ImageState::Kind::kPulling);
  REQUIRE(WaitUntilTrue([&] { return cache.Pulls(ref) == 2; }));
  cache.Finish(ref, MakeError(Code::kPermission, "401 Unauthorized: authentication required"));
  REQUIRE(n.Wait("vmi/a", 2));
  CHECK(puller.Ensure("vmi/a", ref, PullPolicy::kIfNotPresent, {}, "").kind ==
        ImageState::Kind::kFailed);
  auto second = puller.Ensure("vmi/a", ref, PullPolicy::kIfNotPresent, {}, "");
  CHECK(second.kind == ImageState::Kind::kBackOff);
  CHECK(second.retry_at - std::chrono::steady_clock::now() > 250ms);
  // Another VMI asking for the same image is not held back by a's back-off.
  CHECK(puller.Ensure("vmi/b", ref, PullPolicy::kIfNotPresent, {}, "").kind ==
        ImageState::Kind::kPulling);
  REQUIRE(WaitUntilTrue([&] { return cache.Pulls(ref) == 3; }));
  cache.Finish(ref, Img("sha256:dd"));
  REQUIRE(n.Wait("vmi/b"));
  puller.Stop();  // idempotent with the destructor
}

TEST_CASE("Stop cancels a running pull") {
  GatedCache cache;
  Notified n;
  auto puller = std::make_unique<ImagePuller>(cache, Opts(n));
  (void)puller->Ensure("vmi/a", "reg/kv/slow:v1", PullPolicy::kAlways, {}, "");
  REQUIRE(WaitUntilTrue([&] { return cache.Pulls("reg/kv/slow:v1") == 1; }));
  const auto t0 = std::chrono::steady_clock::now();
  puller.reset();
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
}

}  // namespace
}  // namespace edgevirt::daemon
