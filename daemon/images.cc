#include "daemon/images.h"

#include <algorithm>

#include "common/log.h"

namespace edgevirt::daemon {

using Clock = std::chrono::steady_clock;

image::Options ImageCacheOptions(const Config& config) {
  image::Options o;
  o.dir = config.EffectiveImagesDir();
  for (const auto& r : config.images.registries) {
    o.registries.push_back({r.host, r.insecure, r.skip_verify, r.ca_file});
  }
  o.auth_file = config.images.auth_file;
  o.platform = config.images.platform;
  o.max_virtual_size = config.images.max_virtual_size;
  o.stall_timeout = std::chrono::duration_cast<std::chrono::seconds>(config.images.stall_timeout);
  return o;
}

namespace {

std::string HumanBytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f%s" : "%.1f%s", v, units[u]);
  return buf;
}

void PrintImages(const std::vector<image::Image>& images, FILE* out) {
  std::fprintf(out, "%-19s %-6s %-10s %-10s %-5s %s\n", "DIGEST", "FORMAT", "VIRTUAL", "SIZE",
               "USERS", "REFERENCES");
  for (const auto& img : images) {
    std::string refs;
    for (const auto& r : img.references) refs += (refs.empty() ? "" : ",") + r;
    std::fprintf(out, "%-19s %-6s %-10s %-10s %-5zu %s\n",
                 img.manifest_digest.substr(0, 19).c_str(), img.format.c_str(),
                 HumanBytes(img.virtual_size).c_str(), HumanBytes(img.disk_bytes).c_str(),
                 img.users.size(), refs.empty() ? "<none>" : refs.c_str());
  }
}

}  // namespace

int RunImageCommand(const std::vector<std::string>& args, const Config& config, FILE* out,
                    FILE* err) {
  auto opened = image::Cache::Open(ImageCacheOptions(config));
  if (!opened) {
    std::fprintf(err, "edgevirtd image: %s\n", opened.error().message.c_str());
    return 1;
  }
  image::Cache& cache = **opened;
  const std::string& sub = args.at(0);
  if (sub == "list") {
    auto images = cache.List();
    if (!images) {
      std::fprintf(err, "edgevirtd image list: %s\n", images.error().message.c_str());
      return 1;
    }
    PrintImages(*images, out);
    return 0;
  }
  if (sub == "import") {
    auto images = cache.Import(args.at(1));
    if (!images) {
      std::fprintf(err, "edgevirtd image import: %s\n", images.error().message.c_str());
      return 1;
    }
    PrintImages(*images, out);
    return 0;
  }
  if (sub == "pull") {
    image::PullOptions options;
    auto pulled = cache.Pull(args.at(1), options);
    if (!pulled) {
      std::fprintf(err, "edgevirtd image pull: %s\n", pulled.error().message.c_str());
      return 1;
    }
    PrintImages({*pulled}, out);
    return 0;
  }
  if (sub == "prune") {
    uint64_t budget = 0;
    if (args.size() == 3) {
      auto parsed = ParseByteSize(args[2]);
      if (!parsed) {
        std::fprintf(err, "edgevirtd image prune: %s\n", parsed.error().message.c_str());
        return 2;
      }
      budget = *parsed;
    }
    auto report = cache.Prune(budget);
    if (!report) {
      std::fprintf(err, "edgevirtd image prune: %s\n", report.error().message.c_str());
      return 1;
    }
    for (const auto& digest : report->removed) std::fprintf(out, "removed %s\n", digest.c_str());
    std::fprintf(out, "freed %s, %s kept\n", HumanBytes(report->freed_bytes).c_str(),
                 HumanBytes(report->kept_bytes).c_str());
    return 0;
  }
  std::fprintf(err, "edgevirtd image: unknown command %s\n", sub.c_str());
  return 2;
}

PullPolicy ParsePullPolicy(std::string_view text) {
  if (text == "Always") return PullPolicy::kAlways;
  if (text == "Never") return PullPolicy::kNever;
  return PullPolicy::kIfNotPresent;
}

ImagePuller::ImagePuller(image::Cache& cache, ImagePullerOptions options)
    : cache_(cache), options_(std::move(options)) {
  const int n = std::max(1, options_.workers);
  for (int i = 0; i < n; ++i) workers_.emplace_back([this] { Work(); });
}

ImagePuller::~ImagePuller() { Stop(); }

void ImagePuller::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    queue_.clear();
  }
  cancel_ = true;
  cv_.notify_all();
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
  workers_.clear();
}

ImageState ImagePuller::Join(const std::string& requester, const std::string& reference,
                             const image::Keychain& credentials, const std::string& path_in_image) {
  // mu_ held by the caller.
  auto& job = jobs_[reference];
  if (!job) {
    job = std::make_shared<Job>();
    job->reference = reference;
    job->options.credentials = credentials;
    job->options.path_in_image = path_in_image;
    queue_.push_back(job);
    cv_.notify_one();
  }
  job->waiters.insert(requester);
  ImageState s;
  s.kind = ImageState::Kind::kPulling;
  s.progress = job->progress;
  return s;
}

ImageState ImagePuller::Ensure(const std::string& requester, const std::string& reference,
                               PullPolicy policy, const image::Keychain& credentials,
                               const std::string& path_in_image) {
  // The cache's index is read outside mu_ (an LMDB read transaction, no network).
  std::optional<image::Image> cached;
  if (policy != PullPolicy::kAlways) {
    auto found = cache_.Lookup(reference, path_in_image);
    if (found && *found) {
      cached = std::move(**found);
    } else if (!found) {
      EV_LOG(kWarning) << "image cache lookup of " << reference << ": " << found.error().message;
    }
  }
  std::lock_guard lock(mu_);
  const OutcomeKey key{requester, reference};
  auto it = outcomes_.find(key);
  if (it == outcomes_.end() && cached) {
    it = outcomes_.emplace(key, Outcome{}).first;
    it->second.ok = true;
    it->second.image = *cached;
  }
  if (it != outcomes_.end()) {
    Outcome& o = it->second;
    if (o.ok) {
      ImageState s;
      s.kind = ImageState::Kind::kReady;
      s.image = o.image;
      return s;
    }
    if (auto job = jobs_.find(reference);
        job != jobs_.end() && job->second->waiters.count(requester)) {
      ImageState s;  // a retry is running
      s.kind = ImageState::Kind::kPulling;
      s.progress = job->second->progress;
      return s;
    }
    ImageState s;
    s.message = o.message;
    s.retry_at = o.retry_at;
    if (!o.reported) {
      o.reported = true;
      s.kind = ImageState::Kind::kFailed;
      return s;
    }
    if (Clock::now() < o.retry_at || policy == PullPolicy::kNever) {
      s.kind = ImageState::Kind::kBackOff;
      return s;
    }
    return Join(requester, reference, credentials, path_in_image);
  }
  if (policy == PullPolicy::kNever) {
    Outcome& o = outcomes_[key];
    o.message = "container image \"" + reference + "\" is not present with pull policy of Never";
    o.failures = 1;
    o.reported = true;
    o.retry_at = Clock::now() + options_.backoff_initial;
    ImageState s;
    s.kind = ImageState::Kind::kFailed;
    s.message = o.message;
    s.retry_at = o.retry_at;
    return s;
  }
  return Join(requester, reference, credentials, path_in_image);
}

void ImagePuller::Forget(const std::string& requester) {
  std::lock_guard lock(mu_);
  for (auto it = outcomes_.lower_bound({requester, ""});
       it != outcomes_.end() && it->first.first == requester;) {
    it = outcomes_.erase(it);
  }
  for (auto& [ref, job] : jobs_) job->waiters.erase(requester);
}

void ImagePuller::Work() {
  for (;;) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (stopping_) return;
      job = queue_.front();
      queue_.pop_front();
      job->running = true;
    }
    image::PullOptions pull = job->options;
    pull.cancel = &cancel_;
    pull.progress = [this, job, decile = uint64_t{0},
                     counted = std::optional<uint64_t>()](const image::Progress& p) mutable {
      {
        std::lock_guard lock(mu_);
        job->progress = p;
      }
      // image::Cache reports the layers it already has first, then each download's growth:
      // the first report is the baseline, later increases are downloaded bytes.
      if (options_.pulled_bytes != nullptr && counted && p.done_bytes > *counted) {
        *options_.pulled_bytes += p.done_bytes - *counted;
      }
      if (!counted || p.done_bytes > *counted) counted = p.done_bytes;
      // The journal gets every tenth of a large pull (status shows it continuously).
      if (p.total_bytes >= (uint64_t{64} << 20)) {
        const uint64_t now = p.done_bytes * 10 / p.total_bytes;
        if (now > decile) {
          decile = now;
          EV_LOG(kInfo).Field("IMAGE", job->reference)
              << "pulling image " << job->reference << ": " << p.done_bytes << " of "
              << p.total_bytes << " bytes";
        }
      }
    };
    const auto started = Clock::now();
    EV_LOG(kInfo).Field("IMAGE", job->reference) << "pulling image " << job->reference;
    Result<image::Image> result = cache_.Pull(job->reference, pull);
    const auto seconds = std::chrono::duration<double>(Clock::now() - started).count();
    if (result) {
      EV_LOG(kInfo).Field("IMAGE", job->reference)
          << "pulled image " << job->reference << " (" << result->manifest_digest << ", "
          << result->disk_bytes << " bytes) in " << seconds << "s";
    } else {
      EV_LOG(kWarning).Field("IMAGE", job->reference)
          << "pull of image " << job->reference << " failed after " << seconds
          << "s: " << result.error().message;
    }
    if (result && options_.prune_budget > 0) {
      if (auto pruned = cache_.Prune(options_.prune_budget); !pruned) {
        EV_LOG(kWarning) << "image cache prune: " << pruned.error().message;
      } else if (!pruned->removed.empty()) {
        EV_LOG(kInfo) << "image cache: pruned " << pruned->removed.size() << " unused images ("
                      << pruned->freed_bytes << " bytes) to stay within its budget";
      }
    }
    std::set<std::string> waiters;
    {
      std::lock_guard lock(mu_);
      if (auto it = jobs_.find(job->reference); it != jobs_.end() && it->second == job) {
        jobs_.erase(it);
      }
      waiters = job->waiters;
      for (const auto& w : waiters) {
        Outcome& o = outcomes_[{w, job->reference}];
        if (result) {
          o.ok = true;
          o.image = *result;
          o.message.clear();
        } else {
          o.ok = false;
          o.message = result.error().message;
          o.reported = false;
          ++o.failures;
          auto delay = options_.backoff_initial;
          for (int i = 1; i < o.failures && delay < options_.backoff_max; ++i) delay *= 2;
          o.retry_at = Clock::now() + std::min(delay, options_.backoff_max);
        }
      }
      if (stopping_) return;
    }
    if (options_.notify) {
      for (const auto& w : waiters) options_.notify(w);
    }
  }
}

}  // namespace edgevirt::daemon
