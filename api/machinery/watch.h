// Watch streams: `?watch=true` turned into newline-delimited JSON events on a chunked response.
//
// WatchEncoder is the per-stream event producer (filtering, selector transitions, JSON or Table
// rendering, bookmarks, error events) and is unit-testable on its own. WatchHub drives every open
// stream from ONE thread: store watches notify it (SetNotify, no thread per watch), it drains
// them, writes lines to the ResponseStream, and sends bookmarks and ends streams at their
// timeout.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "api/http_server.h"
#include "api/machinery/registry.h"
#include "api/machinery/table.h"

namespace edgevirt::api::machinery {

struct WatchRequest {
  const ResourceType* rt = nullptr;
  std::string ns;  // "" = all namespaces
  LabelSelector labels;
  FieldSelector fields;
  // "" or "0": synthetic ADDED events for the current objects first; else changes after it.
  std::string resource_version;
  bool bookmarks = false;                // allowWatchBookmarks
  std::chrono::milliseconds timeout{0};  // 0 = the hub's default
  std::optional<TableOptions> table;     // Accept as=Table
};

class WatchEncoder {
 public:
  explicit WatchEncoder(const WatchRequest& request);
  // True if the request filters on something beyond the store watch's namespace and name.
  bool Selective() const { return selective_; }
  // Marks an object as currently matching (initial state of a selective watch).
  void Seed(const store::Record& record);
  // The line for an initial (synthetic ADDED) object, or nullopt if it does not match.
  std::optional<std::string> Initial(const store::Record& record, WallClock::time_point now);
  // The line for a store event, or nullopt when the watcher does not see it. For selective
  // watches an object that starts matching is ADDED and one that stops matching is DELETED.
  std::optional<std::string> Encode(const store::Event& event, WallClock::time_point now);
  std::string Bookmark(uint64_t resource_version) const;
  static std::string ErrorLine(const ApiError& error);

 private:
  bool Matches(const store::Record& record, Json* parsed) const;
  std::string Line(std::string_view type, const store::Record& record, const Json* parsed,
                   WallClock::time_point now);

  WatchRequest request_;
  bool selective_ = false;
  bool headers_sent_ = false;
  std::set<std::pair<std::string, std::string>> known_;  // (namespace, name) matching now
};

struct WatchHubOptions {
  std::chrono::milliseconds bookmark_interval{60'000};
  // Streams without timeoutSeconds end after a random time in [default_timeout,
  // 2 * default_timeout), like the apiserver's --min-request-timeout.
  std::chrono::milliseconds default_timeout{1'800'000};
  std::function<WallClock::time_point()> clock;
};

class WatchHub {
 public:
  WatchHub(Registry& registry, WatchHubOptions options);
  ~WatchHub();
  WatchHub(const WatchHub&) = delete;
  WatchHub& operator=(const WatchHub&) = delete;

  // Takes over a stream (the HttpResponse::stream callback calls this on an io thread).
  void Start(WatchRequest request, std::shared_ptr<ResponseStream> stream);
  // Ends every stream and joins the thread. Idempotent.
  void Stop();
  size_t active() const;

 private:
  struct Session;
  struct Core;
  void Run();
  void Process(const std::shared_ptr<Session>& session);
  void Init(const std::shared_ptr<Session>& session);
  void End(const std::shared_ptr<Session>& session);

  Registry& registry_;
  WatchHubOptions options_;
  std::shared_ptr<Core> core_;
  std::thread thread_;
};

}  // namespace edgevirt::api::machinery
