// Test fixtures for api/machinery's unit tests (not part of the library): a temporary store, a
// small "example.io/v1" group with Widget (status subresource, webhook-style validation,
// defaulting, printer columns, a selectable field) and Gadget (no status subresource), a
// request helper and a fake ResponseStream.
#pragma once

#include <stdlib.h>

#include <algorithm>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "api/machinery/machinery.h"
#include "store/store.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::api::machinery::testing {

using edgevirt::testing::TempDir;

// Widget: spec {size: int >= 0 (webhook "widget-validator.example.io"), color: string
// (default "blue"), items: list, template: object}; spec required (schema error).
inline ResourceType WidgetType() {
  ResourceType rt;
  rt.group = "example.io";
  rt.version = "v1";
  rt.kind = "Widget";
  rt.list_kind = "WidgetList";
  rt.plural = "widgets";
  rt.singular = "widget";
  rt.short_names = {"wd"};
  rt.categories = {"all"};
  rt.status_subresource = true;
  rt.verbs = {"delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"};
  rt.schema_name = "io.example.v1.Widget";
  rt.admit = [](const AdmitRequest& req) {
    AdmitResult r;
    if (req.object == nullptr || req.op == Operation::kDelete) return r;
    Json& o = *req.object;
    for (auto it = o.begin(); it != o.end();) {
      const std::string& k = it.key();
      if (k == "apiVersion" || k == "kind" || k == "metadata" || k == "spec" || k == "status") {
        ++it;
      } else {
        r.unknown_fields.push_back(k);
        it = o.erase(it);
      }
    }
    if (req.status_subresource) return r;
    if (!o.contains("spec")) {
      r.invalid.push_back({"FieldValueRequired", "spec: Required value", "spec"});
      return r;
    }
    Json& spec = o["spec"];
    if (spec.is_object()) {
      for (auto it = spec.begin(); it != spec.end();) {
        const std::string& k = it.key();
        if (k == "size" || k == "color" || k == "items" || k == "template") {
          ++it;
        } else {
          r.unknown_fields.push_back("spec." + k);
          it = spec.erase(it);
        }
      }
      if (!spec.contains("color")) spec["color"] = "blue";
      if (spec.contains("size") && spec["size"].is_number() && spec["size"].get<int>() < 0) {
        r.invalid.push_back({"FieldValueInvalid", "spec.size must not be negative", "spec.size"});
        r.denied_by = "widget-validator.example.io";
      }
      if (spec.value("color", "") == "red") r.warnings.push_back("red widgets fade");
    }
    if (req.field_validation == FieldValidation::kIgnore) r.unknown_fields.clear();
    return r;
  };
  rt.columns = {{"Size", "integer", "", "spec.size", 0},
                {"Color", "string", "", "spec.color", 0},
                {"Phase", "string", "", "status.phase", 1}};
  rt.cells = [](const Json& o) {
    auto at = [&](const char* a, const char* b) -> Json {
      if (!o.contains(a) || !o[a].is_object() || !o[a].contains(b)) return nullptr;
      return o[a][b];
    };
    return std::vector<Json>{at("spec", "size"), at("spec", "color"), at("status", "phase")};
  };
  rt.field_value = [](const Json& o, const std::string& f) -> std::optional<std::string> {
    if (f != "spec.color") return std::nullopt;
    if (o.contains("spec") && o["spec"].is_object() && o["spec"].contains("color") &&
        o["spec"]["color"].is_string()) {
      return o["spec"]["color"].get<std::string>();
    }
    return std::string();
  };
  return rt;
}

inline ResourceType GadgetType() {
  ResourceType rt;
  rt.group = "example.io";
  rt.version = "v1";
  rt.kind = "Gadget";
  rt.list_kind = "GadgetList";
  rt.plural = "gadgets";
  rt.singular = "gadget";
  rt.status_subresource = false;
  rt.verbs = {"delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"};
  rt.schema_name = "io.example.v1.Gadget";
  rt.cells = [](const Json&) { return std::vector<Json>{}; };
  return rt;
}

inline ApiGroupVersion ExampleV1() {
  ApiGroupVersion gv;
  gv.group = "example.io";
  gv.version = "v1";
  gv.resources = {WidgetType(), GadgetType()};
  for (const char* kind : {"Widget", "Gadget"}) {
    gv.schemas[std::string("io.example.v1.") + kind] = {
        {"type", "object"},
        {"properties", {{"spec", {{"type", "object"}}}, {"status", {{"type", "object"}}}}},
        {"x-kubernetes-group-version-kind",
         Json::array({{{"group", "example.io"}, {"kind", kind}, {"version", "v1"}}})}};
  }
  return gv;
}

// A store in a temp dir plus a Machinery serving ExampleV1 (and core/v1 events), or `groups`.
class Env {
 public:
  explicit Env(MachineryOptions options = {}, store::Options store_options = {},
               std::vector<ApiGroupVersion> groups = {ExampleV1()}) {
    store_options.dir = dir_.path() / "state";
    auto s = store::Store::Open(store_options);
    if (!s) std::abort();
    store_ = std::move(*s);
    auto m = Machinery::Create(*store_, std::move(groups), std::move(options));
    if (!m) std::abort();
    machinery_ = std::move(*m);
  }
  ~Env() {
    machinery_->Stop();
    machinery_.reset();
    store_->Close();
  }
  store::Store& store() { return *store_; }
  Machinery& machinery() { return *machinery_; }
  Registry& registry() { return machinery_->registry(); }
  const ResourceType& widget() { return *registry().ByKind("example.io", "Widget"); }
  const ResourceType& gadget() { return *registry().ByKind("example.io", "Gadget"); }

  struct Reply {
    int status = 0;
    std::string body;
    Json json;
    std::vector<std::pair<std::string, std::string>> headers;
    std::function<void(std::shared_ptr<ResponseStream>)> stream;
    std::string Header(std::string_view name) const {
      for (const auto& [k, v] : headers) {
        if (k == name) return v;
      }
      return "";
    }
    std::vector<std::string> Headers(std::string_view name) const {
      std::vector<std::string> out;
      for (const auto& [k, v] : headers) {
        if (k == name) out.push_back(v);
      }
      return out;
    }
  };

  // method + target ("/apis/example.io/v1/namespaces/default/widgets?limit=1").
  Reply Call(const std::string& method, const std::string& target, const std::string& body = "",
             const std::string& content_type = "application/json",
             std::vector<std::pair<std::string, std::string>> headers = {}) {
    HttpRequest req;
    req.method = method;
    req.target = target;
    size_t q = target.find('?');
    req.path = target.substr(0, q);
    req.query = q == std::string::npos ? "" : target.substr(q + 1);
    req.body = body;
    if (!content_type.empty()) req.headers.emplace_back("content-type", content_type);
    for (auto& [k, v] : headers) req.headers.emplace_back(k, v);
    Reply r;
    auto resp = machinery_->Serve(req);
    if (!resp) {
      r.status = -1;
      return r;
    }
    r.status = resp->status;
    r.body = resp->body;
    r.headers = resp->headers;
    r.stream = resp->stream;
    r.json = Json::parse(r.body, nullptr, false);
    return r;
  }

 private:
  TempDir dir_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Machinery> machinery_;
};

inline std::string WidgetJson(const std::string& name, const std::string& extra_spec = "",
                              const std::string& extra_meta = "") {
  std::string meta = "\"name\":\"" + name + "\"";
  if (!extra_meta.empty()) meta += "," + extra_meta;
  std::string spec = "\"size\":1";
  if (!extra_spec.empty()) spec += "," + extra_spec;
  return "{\"apiVersion\":\"example.io/v1\",\"kind\":\"Widget\",\"metadata\":{" + meta +
         "},\"spec\":{" + spec + "}}";
}

// A ResponseStream recording what a watch writes.
class FakeStream : public ResponseStream {
 public:
  bool Write(std::string chunk) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed_) return false;
    chunks_.push_back(std::move(chunk));
    cv_.notify_all();
    return true;
  }
  void Finish() override { End(); }
  void OnClosed(std::function<void()> cb) override {
    bool run = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) {
        run = true;
      } else {
        callbacks_.push_back(std::move(cb));
      }
    }
    if (run) cb();
  }
  bool closed() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return closed_;
  }
  // The client hangs up.
  void Hangup() { End(); }
  bool finished() const { return closed(); }

  // Waits until at least `n` lines (events) arrived (or the stream ended); returns the chunks.
  std::vector<std::string> WaitFor(
      size_t n, std::chrono::milliseconds timeout = std::chrono::milliseconds(5000)) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, timeout, [&] { return LinesLocked() >= n || closed_; });
    return chunks_;
  }
  bool WaitClosed(std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return closed_; });
  }
  std::vector<std::string> chunks() const {
    std::lock_guard<std::mutex> lock(mu_);
    return chunks_;
  }

 private:
  void End() {
    std::vector<std::function<void()>> cbs;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return;
      closed_ = true;
      cbs.swap(callbacks_);
      cv_.notify_all();
    }
    for (auto& cb : cbs) cb();
  }
  size_t LinesLocked() const {
    size_t n = 0;
    for (const auto& c : chunks_) n += static_cast<size_t>(std::count(c.begin(), c.end(), '\n'));
    return n;
  }
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> chunks_;
  std::vector<std::function<void()>> callbacks_;
  bool closed_ = false;
};

}  // namespace edgevirt::api::machinery::testing
