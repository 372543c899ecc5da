#include "api/machinery/watch.h"

#include <sys/random.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <deque>
#include <list>

#include "api/machinery/codec.h"
#include "common/log.h"

namespace edgevirt::api::machinery {
namespace {

constexpr size_t kEventsPerTurn = 512;  // per stream per wakeup, so one busy stream cannot starve
// Events ready at the same time go out in one chunk of at most this size: the server bounds the
// chunks queued per stream (a burst of single-event chunks, e.g. the initial ADDED events, would
// hit that bound long before its byte bound).
constexpr size_t kChunkBytes = 64 << 10;

// Appends `line` to `batch`, writing the batch out when it is full. False once the stream is
// gone.
bool Append(ResponseStream& stream, std::string& batch, std::string line) {
  if (batch.empty()) {
    batch = std::move(line);
  } else {
    batch += line;
  }
  if (batch.size() < kChunkBytes) return true;
  bool ok = stream.Write(std::move(batch));
  batch.clear();
  return ok;
}

bool Flush(ResponseStream& stream, std::string& batch) {
  if (batch.empty()) return true;
  bool ok = stream.Write(std::move(batch));
  batch.clear();
  return ok;
}

uint64_t RandomU64() {
  uint64_t v = 0;
  while (getrandom(&v, sizeof(v), 0) < 0 && errno == EINTR) {
  }
  return v;
}

}  // namespace

// ---- WatchEncoder -----------------------------------------------------------------------------

WatchEncoder::WatchEncoder(const WatchRequest& request) : request_(request) {
  selective_ = !request_.labels.Empty();
  for (const auto& t : request_.fields.terms()) {
    if (t.field == "metadata.name" && !t.negate) continue;
    if (t.field == "metadata.namespace" && !t.negate) continue;
    selective_ = true;
  }
}

bool WatchEncoder::Matches(const store::Record& record, Json* parsed) const {
  if (!request_.ns.empty() && record.key.ns != request_.ns) return false;
  bool need_object = !request_.labels.Empty() || request_.fields.NeedsObject();
  if (!need_object)
    return request_.fields.Matches(*request_.rt, record.key.ns, record.key.name, nullptr);
  if (parsed->is_null()) {
    auto decoded = DecodeRecord(record);
    if (!decoded) return false;
    *parsed = std::move(*decoded);
  }
  if (!request_.labels.Empty()) {
    const Json* labels = nullptr;
    if (auto m = parsed->find("metadata"); m != parsed->end() && m->is_object()) {
      if (auto l = m->find("labels"); l != m->end()) labels = &*l;
    }
    if (!request_.labels.Matches(labels)) return false;
  }
  return request_.fields.Matches(*request_.rt, record.key.ns, record.key.name, parsed);
}

std::string WatchEncoder::Line(std::string_view type, const store::Record& record,
                               const Json* parsed, WallClock::time_point now) {
  std::string out = "{\"type\":\"";
  out += type;
  out += "\",\"object\":";
  if (request_.table) {
    Json object;
    if (parsed && !parsed->is_null()) {
      object = *parsed;
    } else {
      auto decoded = DecodeRecord(record);
      object = decoded ? std::move(*decoded) : Json::object();
    }
    TableOptions opts = *request_.table;
    opts.no_headers = headers_sent_;
    headers_sent_ = true;
    out +=
        RenderTable(*request_.rt, {object}, std::to_string(record.resource_version), "", opts, now);
  } else {
    AppendRendered(record, &out);
  }
  out += "}\n";
  return out;
}

void WatchEncoder::Seed(const store::Record& record) {
  Json parsed;
  if (Matches(record, &parsed)) known_.insert({record.key.ns, record.key.name});
}

std::optional<std::string> WatchEncoder::Initial(const store::Record& record,
                                                 WallClock::time_point now) {
  Json parsed;
  if (!Matches(record, &parsed)) return std::nullopt;
  if (selective_) known_.insert({record.key.ns, record.key.name});
  return Line("ADDED", record, &parsed, now);
}

std::optional<std::string> WatchEncoder::Encode(const store::Event& event,
                                                WallClock::time_point now) {
  const store::Record& r = event.object;
  Json parsed;
  if (!selective_) {
    if (!Matches(r, &parsed)) return std::nullopt;
    return Line(store::EventTypeName(event.type), r, &parsed, now);
  }
  // The watch cache's rule: compare whether the previous and the current version pass the
  // filter. ADDED has no previous version; DELETED's object is the last version (which then
  // is the previous one). For MODIFIED the write recorded the previous labels; other fields are
  // taken from the current version (only metadata.name/namespace, which never change, and the
  // kind's selectable fields are filtered on).
  const auto key = std::make_pair(r.key.ns, r.key.name);
  const bool matches = Matches(r, &parsed);
  bool cur_passes = false;
  bool old_passes = false;
  switch (event.type) {
    case store::EventType::kAdded:
      cur_passes = matches;
      break;
    case store::EventType::kDeleted:
      old_passes = matches;
      break;
    case store::EventType::kModified: {
      cur_passes = matches;
      if (auto prev = PreviousLabels(r)) {
        old_passes = request_.labels.Matches(&*prev) &&
                     request_.fields.Matches(*request_.rt, r.key.ns, r.key.name,
                                             parsed.is_null() ? nullptr : &parsed) &&
                     (request_.ns.empty() || r.key.ns == request_.ns);
      } else {
        old_passes = known_.count(key) != 0;  // written without the previous labels
      }
      break;
    }
  }
  if (cur_passes) {
    known_.insert(key);
  } else {
    known_.erase(key);
  }
  if (cur_passes && !old_passes) return Line("ADDED", r, &parsed, now);
  if (cur_passes && old_passes) return Line("MODIFIED", r, &parsed, now);
  if (!cur_passes && old_passes) return Line("DELETED", r, &parsed, now);
  return std::nullopt;
}

std::string WatchEncoder::Bookmark(uint64_t resource_version) const {
  std::string out = "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":";
  out += Dump(Json(request_.rt->kind));
  out += ",\"apiVersion\":";
  out += Dump(Json(request_.rt->ApiVersion()));
  out += ",\"metadata\":{\"resourceVersion\":\"";
  out += std::to_string(resource_version);
  out += "\"}}}\n";
  return out;
}

std::string WatchEncoder::ErrorLine(const ApiError& error) {
  return "{\"type\":\"ERROR\",\"object\":" + error.ToJson() + "}\n";
}

// ---- WatchHub ---------------------------------------------------------------------------------

struct WatchHub::Session {
  WatchRequest request;
  std::shared_ptr<ResponseStream> stream;
  std::unique_ptr<store::Watch> watch;
  std::unique_ptr<WatchEncoder> encoder;
  bool started = false;
  bool ended = false;
  std::atomic<bool> queued{false};
  std::atomic<bool> closed{false};
  MonoClock::time_point deadline;
  MonoClock::time_point next_bookmark;
};

struct WatchHub::Core {
  mutable std::mutex mu;
  std::condition_variable cv;
  std::deque<std::shared_ptr<Session>> ready;    // guarded by mu
  std::list<std::shared_ptr<Session>> sessions;  // hub thread only (plus size under mu)
  size_t count = 0;                              // guarded by mu
  bool stopping = false;                         // guarded by mu

  void Enqueue(const std::shared_ptr<Session>& s) {
    if (s->queued.exchange(true)) return;
    {
      std::lock_guard<std::mutex> lock(mu);
      ready.push_back(s);
    }
    cv.notify_one();
  }
};

WatchHub::WatchHub(Registry& registry, WatchHubOptions options)
    : registry_(registry), options_(std::move(options)), core_(std::make_shared<Core>()) {
  thread_ = std::thread([this] { Run(); });
}

WatchHub::~WatchHub() { Stop(); }

void WatchHub::Stop() {
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    if (core_->stopping && !thread_.joinable()) return;
    core_->stopping = true;
  }
  core_->cv.notify_all();
  if (thread_.joinable()) thread_.join();
}

size_t WatchHub::active() const {
  std::lock_guard<std::mutex> lock(core_->mu);
  return core_->count;
}

void WatchHub::Start(WatchRequest request, std::shared_ptr<ResponseStream> stream) {
  auto s = std::make_shared<Session>();
  s->request = std::move(request);
  s->stream = std::move(stream);
  s->encoder = std::make_unique<WatchEncoder>(s->request);
  auto now = MonoClock::now();
  std::chrono::milliseconds timeout = s->request.timeout;
  if (timeout.count() <= 0) {
    const auto base = options_.default_timeout.count();
    timeout = std::chrono::milliseconds(
        base +
        static_cast<int64_t>(RandomU64() % static_cast<uint64_t>(std::max<int64_t>(base, 1))));
  }
  s->deadline = now + timeout;
  s->next_bookmark = now + options_.bookmark_interval;
  std::weak_ptr<Core> weak_core = core_;
  std::weak_ptr<Session> weak_session = s;
  {
    std::lock_guard<std::mutex> lock(core_->mu);
    if (core_->stopping) {
      s->stream->Finish();
      return;
    }
    ++core_->count;
  }
  s->stream->OnClosed([weak_core, weak_session] {
    auto c = weak_core.lock();
    auto session = weak_session.lock();
    if (!c || !session) return;
    session->closed = true;
    c->Enqueue(session);
  });
  core_->Enqueue(s);
}

void WatchHub::End(const std::shared_ptr<Session>& s) {
  if (s->ended) return;
  s->ended = true;
  s->watch.reset();  // unsubscribes; its notify may still run once, harmlessly
  s->stream->Finish();
  std::lock_guard<std::mutex> lock(core_->mu);
  --core_->count;
}

void WatchHub::Init(const std::shared_ptr<Session>& s) {
  s->started = true;
  const WatchRequest& req = s->request;
  const ResourceType& rt = *req.rt;
  store::WatchOptions wo;
  wo.group = rt.group;
  wo.kind = rt.kind;
  wo.ns = req.ns;
  if (auto name = req.fields.RequiredValue("metadata.name")) wo.name = *name;
  const auto now = options_.clock ? options_.clock() : WallClock::now();

  if (req.resource_version.empty() || req.resource_version == "0") {
    // Get State and Start at Most Recent: the current objects as ADDED, then the changes.
    ListQuery q;
    q.ns = req.ns;
    q.labels = req.labels;
    q.fields = req.fields;
    auto page = registry_.List(rt, q);
    if (!page) {
      s->stream->Write(WatchEncoder::ErrorLine(page.error()));
      End(s);
      return;
    }
    std::string batch;
    for (const auto& r : page->items) {
      if (auto line = s->encoder->Initial(r, now)) {
        if (!Append(*s->stream, batch, std::move(*line))) {
          End(s);
          return;
        }
      }
    }
    if (!Flush(*s->stream, batch)) {
      End(s);
      return;
    }
    wo.from_rv = page->resource_version;
  } else {
    char* end = nullptr;
    errno = 0;
    unsigned long long rv = std::strtoull(req.resource_version.c_str(), &end, 10);
    wo.from_rv = rv;
    if (s->encoder->Selective()) {
      // Approximate the matching set at that RV with the current one.
      ListQuery q;
      q.ns = req.ns;
      q.labels = req.labels;
      q.fields = req.fields;
      if (auto page = registry_.List(rt, q)) {
        for (const auto& r : page->items) s->encoder->Seed(r);
      }
    }
  }
  auto watch = registry_.store().StartWatch(wo);
  if (!watch) {
    ApiError e = watch.error().code == Code::kGone
                     ? Expired("too old resource version: " + req.resource_version + " (" +
                               std::to_string(registry_.store().GetStats().compacted_rv + 1) + ")")
                     : FromError(watch.error(), &rt, "");
    s->stream->Write(WatchEncoder::ErrorLine(e));
    End(s);
    return;
  }
  s->watch = std::move(*watch);
  std::weak_ptr<Core> weak_core = core_;
  std::weak_ptr<Session> weak_session = s;
  s->watch->SetNotify([weak_core, weak_session] {
    auto c = weak_core.lock();
    auto session = weak_session.lock();
    if (c && session) c->Enqueue(session);
  });
}

void WatchHub::Process(const std::shared_ptr<Session>& s) {
  if (s->ended) return;
  if (s->closed || s->stream->closed()) {
    End(s);
    return;
  }
  if (!s->started) {
    Init(s);
    if (s->ended) return;
  }
  const auto now = options_.clock ? options_.clock() : WallClock::now();
  std::string batch;
  for (size_t n = 0; n < kEventsPerTurn; ++n) {
    auto next = s->watch->TryNext();
    if (!next) {
      if (next.error().code == Code::kGone) {
        Append(*s->stream, batch,
               WatchEncoder::ErrorLine(
                   Expired("too old resource version: " + s->request.resource_version + " (" +
                           std::to_string(registry_.store().GetStats().compacted_rv + 1) + ")")));
      }
      // kUnavailable: fell behind or the store is closing; the client re-lists.
      Flush(*s->stream, batch);
      End(s);
      return;
    }
    if (!next->has_value()) {
      if (!Flush(*s->stream, batch)) End(s);
      return;
    }
    if (auto line = s->encoder->Encode(**next, now)) {
      if (!Append(*s->stream, batch, std::move(*line))) {
        End(s);
        return;
      }
    }
  }
  if (!Flush(*s->stream, batch)) {
    End(s);
    return;
  }
  core_->Enqueue(s);  // more may be waiting: continue after the other streams had a turn
}

void WatchHub::Run() {
  std::unique_lock<std::mutex> lock(core_->mu);
  while (true) {
    if (core_->stopping) break;
    // Earliest deadline among the sessions (hub-thread data, read under the lock for brevity).
    auto wake = MonoClock::now() + std::chrono::seconds(1);
    for (const auto& s : core_->sessions) {
      wake = std::min(wake, s->deadline);
      if (s->request.bookmarks) wake = std::min(wake, s->next_bookmark);
    }
    core_->cv.wait_until(lock, wake, [&] { return core_->stopping || !core_->ready.empty(); });
    if (core_->stopping) break;
    std::deque<std::shared_ptr<Session>> ready;
    ready.swap(core_->ready);
    lock.unlock();

    for (auto& s : ready) {
      s->queued = false;
      if (std::find(core_->sessions.begin(), core_->sessions.end(), s) == core_->sessions.end()) {
        core_->sessions.push_back(s);
      }
      Process(s);
    }
    const auto now = MonoClock::now();
    for (auto it = core_->sessions.begin(); it != core_->sessions.end();) {
      auto& s = *it;
      if (!s->ended && now >= s->deadline) End(s);
      if (!s->ended && s->started && s->watch && s->request.bookmarks && now >= s->next_bookmark) {
        // Only once drained: the bookmark's RV must not pass an event still queued.
        auto peek_rv = s->watch->last_rv();
        if (!s->queued) {
          if (!s->stream->Write(s->encoder->Bookmark(peek_rv))) End(s);
        }
        s->next_bookmark = now + options_.bookmark_interval;
      }
      if (s->ended) {
        it = core_->sessions.erase(it);
      } else {
        ++it;
      }
    }
    lock.lock();
  }
  // Stopping: end every stream.
  std::deque<std::shared_ptr<Session>> ready;
  ready.swap(core_->ready);
  lock.unlock();
  for (auto& s : ready) {
    if (std::find(core_->sessions.begin(), core_->sessions.end(), s) == core_->sessions.end()) {
      core_->sessions.push_back(s);
    }
  }
  for (auto& s : core_->sessions) End(s);
  core_->sessions.clear();
}

}  // namespace edgevirt::api::machinery
