#include "api/machinery/machinery.h"

#include <set>

#include "api/machinery/handler.h"

namespace edgevirt::api::machinery {

Result<std::unique_ptr<Machinery>> Machinery::Create(store::Store& store,
                                                     std::vector<ApiGroupVersion> groups,
                                                     MachineryOptions options) {
  bool has_core = false;
  std::set<std::string> seen;
  for (const auto& gv : groups) {
    if (gv.group.empty()) has_core = true;
    if (gv.version.empty()) return MakeError(Code::kInvalid, "group " + gv.group + ": no version");
    for (const auto& rt : gv.resources) {
      if (rt.kind.empty() || rt.plural.empty() || rt.list_kind.empty()) {
        return MakeError(Code::kInvalid, "group " + gv.group +
                                             ": resource without kind, plural "
                                             "or listKind");
      }
      if (rt.group != gv.group || rt.version != gv.version) {
        return MakeError(Code::kInvalid, rt.kind + ": group/version differ from its group");
      }
      if (!seen.insert(rt.group + "/" + rt.kind).second ||
          !seen.insert(rt.group + "/" + rt.version + "/" + rt.plural).second) {
        return MakeError(Code::kInvalid, "duplicate resource " + rt.group + "/" + rt.kind);
      }
    }
  }
  if (!has_core) groups.push_back(CoreV1());

  std::unique_ptr<Machinery> m(new Machinery());
  m->clock_ = options.clock;
  m->registry_ = std::make_unique<Registry>(store, std::move(groups), options.clock);
  m->discovery_ = std::make_unique<Discovery>(m->registry_->groups(), options.discovery);
  WatchHubOptions wo = options.watch;
  if (!wo.clock) wo.clock = options.clock;
  m->watches_ = std::make_unique<WatchHub>(*m->registry_, std::move(wo));
  if (options.run_garbage_collector) {
    m->gc_ = std::make_unique<GarbageCollector>(*m->registry_, options.gc);
    if (Status s = m->gc_->Start(); !s) {
      m->Stop();
      return Error(s.error()).Wrap("start the garbage collector");
    }
  }
  m->handler_ = std::make_unique<ApiHandler>(*m->registry_, *m->discovery_, *m->watches_);
  return m;
}

Machinery::~Machinery() { Stop(); }

std::optional<HttpResponse> Machinery::Serve(const HttpRequest& request) const {
  return handler_->Serve(request);
}

std::unique_ptr<EventRecorder> Machinery::NewEventRecorder(EventRecorderOptions options) {
  if (!options.clock) options.clock = clock_;
  return std::make_unique<EventRecorder>(*registry_, std::move(options));
}

void Machinery::Stop() {
  if (watches_) watches_->Stop();
  if (gc_) gc_->Stop();
}

}  // namespace edgevirt::api::machinery
