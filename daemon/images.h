// Pulls of containerDisk images for the controller, off its reconcile thread (DESIGN.md: "long
// work runs on workers and requeues the key when done; nothing sleeps inside a reconcile").
//
// The controller asks, on every reconcile of a VMI that waits to start, what the state of each
// of its images is (Ensure). The answer comes from memory and the image cache's index, never
// from the network: a pull that is needed is queued to a worker, and when it ends every VMI
// waiting for that image is enqueued again through `notify`. One pull serves every VMI waiting
// for the same reference at the same time. Failed pulls back off per VMI and image as kubelet
// does (10 s doubling to 5 min): the first answer after a failure is kFailed (KubeVirt's
// ErrImagePull), the following ones kBackOff (ImagePullBackOff) until the retry is due.
//
// Nothing here is durable: a daemon restart forgets results and progress, and the next
// reconcile asks again (a partial blob resumes from the offset the cache committed).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/result.h"
#include "daemon/config.h"
#include "image/image.h"

namespace edgevirt::daemon {

// The image cache's options from the daemon's configuration (images.*).
image::Options ImageCacheOptions(const Config& config);

// `edgevirtd image ARGS...` (cli.h validated ARGS): list, import PATH, pull REF,
// prune [--budget SIZE] on the cache of `config`, beside a running daemon or without one.
// Prints results to `out`, errors to `err`; returns the process exit code.
int RunImageCommand(const std::vector<std::string>& args, const Config& config, FILE* out,
                    FILE* err);

enum class PullPolicy { kAlways, kIfNotPresent, kNever };

// "Always" | "IfNotPresent" | "Never"; anything else (admission defaults the field) is
// kIfNotPresent.
PullPolicy ParsePullPolicy(std::string_view text);

struct ImageState {
  enum class Kind {
    kReady,    // `image` is cached and validated
    kPulling,  // a pull is queued or running; `progress` says how far it got
    kFailed,   // the last pull failed (ErrImagePull); `message` says why
    kBackOff,  // failed, and the retry waits until `retry_at` (ImagePullBackOff)
  };
  Kind kind = Kind::kPulling;
  image::Image image;
  image::Progress progress;
  std::string message;
  std::chrono::steady_clock::time_point retry_at;
};

struct ImagePullerOptions {
  int workers = 2;
  std::chrono::milliseconds backoff_initial{10'000};
  std::chrono::milliseconds backoff_max{300'000};
  // After every successful pull, unused images are pruned down to this many bytes (0: never).
  uint64_t prune_budget = 0;
  // Called when a pull that `requester` waits for ends (from a worker thread; must not block).
  std::function<void(const std::string& requester)> notify;
  // When set, every byte a pull downloads from a registry is added here (/metrics'
  // edgevirt_image_pull_bytes_total); layers already in the cache are not counted.
  std::atomic<uint64_t>* pulled_bytes = nullptr;
};

class ImagePuller {
 public:
  // `cache` must outlive the puller.
  ImagePuller(image::Cache& cache, ImagePullerOptions options);
  ~ImagePuller();  // cancels running pulls and joins the workers
  ImagePuller(const ImagePuller&) = delete;
  ImagePuller& operator=(const ImagePuller&) = delete;

  // The state of `reference` for `requester` (the key notify gets back, e.g. "vmi/ns/name"),
  // pulling it when `policy` asks for a pull and none has served this requester yet:
  //   kAlways        one pull per requester (until Forget), even when the image is cached;
  //   kIfNotPresent  the cached image if there is one, else one pull;
  //   kNever         the cached image, else kFailed (ErrImageNeverPull's message).
  // `credentials` (from imagePullSecrets) and `path_in_image` go to the pull this call starts;
  // a requester that joins a running pull of the same reference shares it.
  ImageState Ensure(const std::string& requester, const std::string& reference, PullPolicy policy,
                    const image::Keychain& credentials, const std::string& path_in_image);

  // Drops what is remembered for `requester` (its VMI started, or is gone).
  void Forget(const std::string& requester);

  // Stops the workers; queued pulls are dropped, running ones cancelled. Idempotent.
  void Stop();

 private:
  struct Outcome {
    bool ok = false;
    image::Image image;
    std::string message;
    bool reported = false;  // kFailed was answered once; later answers are kBackOff
    int failures = 0;
    std::chrono::steady_clock::time_point retry_at;
  };
  struct Job {
    std::string reference;
    image::PullOptions options;
    std::set<std::string> waiters;
    image::Progress progress;
    bool running = false;
  };
  using OutcomeKey = std::pair<std::string, std::string>;  // requester, reference

  void Work();
  ImageState Join(const std::string& requester, const std::string& reference,
                  const image::Keychain& credentials, const std::string& path_in_image);

  image::Cache& cache_;
  ImagePullerOptions options_;
  std::atomic<bool> cancel_{false};
  std::mutex mu_;  // guards everything below
  std::condition_variable cv_;
  bool stopping_ = false;
  std::map<std::string, std::shared_ptr<Job>> jobs_;  // by reference
  std::deque<std::shared_ptr<Job>> queue_;
  std::map<OutcomeKey, Outcome> outcomes_;
  std::vector<std::thread> workers_;
};

}  // namespace edgevirt::daemon
