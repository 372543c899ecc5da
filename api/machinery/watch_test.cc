// Unit tests of watch streams: the handler's watch response driven into a fake ResponseStream
// (the chunked transport is api/http_server's), and WatchEncoder on its own.
#include <thread>

#include "api/machinery/codec.h"
#include "api/machinery/machinery.h"
#include "api/machinery/testing.h"
#include "tests/support/catch.h"

namespace edgevirt::api::machinery {
namespace {

using namespace std::chrono_literals;
using testing::Env;
using testing::FakeStream;
using testing::WidgetJson;

const std::string kWidgets = "/apis/example.io/v1/namespaces/default/widgets";

Json Create(Env& env, const std::string& name, const std::string& meta = "") {
  auto r = env.Call("POST", kWidgets, WidgetJson(name, "", meta));
  REQUIRE(r.status == 201);
  return r.json;
}

// The events in the chunks: one JSON object per line; a chunk holds whole lines (events ready
// at the same time may share one).
std::vector<Json> Events(const std::vector<std::string>& chunks) {
  std::vector<Json> out;
  for (const auto& c : chunks) {
    REQUIRE(!c.empty());
    REQUIRE(c.back() == '\n');
    size_t start = 0;
    while (start < c.size()) {
      size_t nl = c.find('\n', start);
      out.push_back(Json::parse(c.substr(start, nl - start)));
      start = nl + 1;
    }
  }
  return out;
}

std::shared_ptr<FakeStream> Watch(Env& env, const std::string& target,
                                  std::vector<std::pair<std::string, std::string>> headers = {}) {
  auto r = env.Call("GET", target, "", "", std::move(headers));
  INFO(r.body);
  REQUIRE(r.status == 200);
  REQUIRE(r.stream);
  CHECK(r.body.empty());
  auto s = std::make_shared<FakeStream>();
  r.stream(s);
  return s;
}

MachineryOptions FastOptions() {
  MachineryOptions o;
  o.watch.bookmark_interval = 100ms;
  o.run_garbage_collector = false;
  return o;
}

TEST_CASE("watch from resourceVersion 0: synthetic ADDED, then changes", "[watch]") {
  Env env(FastOptions());
  Create(env, "a");
  Create(env, "b");
  auto s = Watch(env, kWidgets + "?watch=true&resourceVersion=0");
  auto initial = Events(s->WaitFor(2));
  REQUIRE(initial.size() == 2);
  CHECK(initial[0]["type"] == "ADDED");
  CHECK(initial[0]["object"]["metadata"]["name"] == "a");
  CHECK(initial[1]["object"]["metadata"]["name"] == "b");
  CHECK(initial[0]["object"]["kind"] == "Widget");

  auto p =
      env.Call("PATCH", kWidgets + "/a", R"({"spec":{"size":5}})", "application/merge-patch+json");
  REQUIRE(p.status == 200);
  REQUIRE(env.Call("DELETE", kWidgets + "/b").status == 200);
  Create(env, "c");
  auto all = Events(s->WaitFor(5));
  REQUIRE(all.size() == 5);
  CHECK(all[2]["type"] == "MODIFIED");
  CHECK(all[2]["object"]["spec"]["size"] == 5);
  CHECK(all[2]["object"]["metadata"]["resourceVersion"] == p.json["metadata"]["resourceVersion"]);
  CHECK(all[3]["type"] == "DELETED");
  CHECK(all[3]["object"]["metadata"]["name"] == "b");
  CHECK(all[4]["type"] == "ADDED");
  CHECK(all[4]["object"]["metadata"]["name"] == "c");
  // Other namespaces are not in a namespaced watch.
  REQUIRE(
      env.Call("POST", "/apis/example.io/v1/namespaces/other/widgets", WidgetJson("z")).status ==
      201);
  std::this_thread::sleep_for(100ms);
  CHECK(Events(s->chunks()).size() == 5);
  s->Hangup();
  for (int i = 0; i < 100 && env.machinery().watches().active() != 0; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  CHECK(env.machinery().watches().active() == 0);
}

TEST_CASE("watch without resourceVersion behaves like 0, and all namespaces", "[watch]") {
  Env env(FastOptions());
  Create(env, "a");
  auto s = Watch(env, "/apis/example.io/v1/widgets?watch=1");
  REQUIRE(Events(s->WaitFor(1)).size() == 1);
  REQUIRE(
      env.Call("POST", "/apis/example.io/v1/namespaces/other/widgets", WidgetJson("z")).status ==
      201);
  auto all = Events(s->WaitFor(2));
  REQUIRE(all.size() == 2);
  CHECK(all[1]["object"]["metadata"]["namespace"] == "other");
}

TEST_CASE("watch from a resourceVersion: only later changes", "[watch]") {
  Env env(FastOptions());
  Json a = Create(env, "a");
  Json b = Create(env, "b");
  // From a's RV: b's creation and what follows, not a's.
  auto s = Watch(env, kWidgets + "?watch=true&resourceVersion=" +
                          a["metadata"]["resourceVersion"].get<std::string>());
  auto first = Events(s->WaitFor(1));
  REQUIRE(first.size() == 1);
  CHECK(first[0]["type"] == "ADDED");
  CHECK(first[0]["object"]["metadata"]["name"] == "b");
  // A list RV is a valid start point (the reflector's LIST then WATCH).
  auto list = env.Call("GET", kWidgets);
  auto s2 = Watch(env, kWidgets + "?watch=true&resourceVersion=" +
                           list.json["metadata"]["resourceVersion"].get<std::string>());
  Create(env, "c");
  auto e = Events(s2->WaitFor(1));
  REQUIRE(e.size() == 1);
  CHECK(e[0]["object"]["metadata"]["name"] == "c");
  CHECK(env.Call("GET", kWidgets + "?watch=true&resourceVersion=abc").status == 400);
}

TEST_CASE("watch on one name (kubectl wait / delete --wait)", "[watch]") {
  Env env(FastOptions());
  Create(env, "a");
  Create(env, "b");
  auto list = env.Call("GET", kWidgets + "?fieldSelector=metadata.name%3Da");
  REQUIRE(list.json["items"].size() == 1);
  auto s = Watch(env, kWidgets + "?watch=true&fieldSelector=metadata.name%3Da&resourceVersion=" +
                          list.json["metadata"]["resourceVersion"].get<std::string>() +
                          "&allowWatchBookmarks=true&timeoutSeconds=300");
  REQUIRE(env.Call("DELETE", kWidgets + "/b").status == 200);
  REQUIRE(env.Call("DELETE", kWidgets + "/a").status == 200);
  std::vector<Json> events;
  for (int i = 0; i < 50; ++i) {
    events = Events(s->WaitFor(1));
    bool deleted = false;
    for (const auto& e : events) deleted = deleted || e["type"] == "DELETED";
    if (deleted) break;
    std::this_thread::sleep_for(20ms);
  }
  bool saw_deleted_a = false;
  for (const auto& e : events) {
    if (e["type"] == "BOOKMARK") continue;
    CHECK(e["object"]["metadata"]["name"] == "a");
    if (e["type"] == "DELETED") saw_deleted_a = true;
  }
  CHECK(saw_deleted_a);
  // The legacy /watch/ path.
  Create(env, "c");
  auto legacy = Watch(env, "/apis/example.io/v1/watch/namespaces/default/widgets/c");
  auto le = Events(legacy->WaitFor(1));
  REQUIRE(le.size() == 1);
  CHECK(le[0]["object"]["metadata"]["name"] == "c");
}

TEST_CASE("watch from a compacted resourceVersion: ERROR 410 Expired", "[watch]") {
  store::Options so;
  so.event_retention_count = 3;
  Env env(FastOptions(), so);
  for (int i = 0; i < 8; ++i) Create(env, "w" + std::to_string(i));
  auto s = Watch(env, kWidgets + "?watch=true&resourceVersion=1");
  REQUIRE(s->WaitClosed(5s));
  auto events = Events(s->chunks());
  REQUIRE(events.size() == 1);
  CHECK(events[0]["type"] == "ERROR");
  const Json& status = events[0]["object"];
  CHECK(status["kind"] == "Status");
  CHECK(status["status"] == "Failure");
  CHECK(status["code"] == 410);
  CHECK(status["reason"] == "Expired");
  CHECK(status["message"].get<std::string>().rfind("too old resource version: 1 (", 0) == 0);
}

TEST_CASE("watch bookmarks and timeout", "[watch]") {
  Env env(FastOptions());
  Json a = Create(env, "a");
  const std::string rv = a["metadata"]["resourceVersion"];
  auto s = Watch(env, kWidgets +
                          "?watch=true&allowWatchBookmarks=true&timeoutSeconds=1"
                          "&resourceVersion=" +
                          rv);
  auto chunks = s->WaitFor(1, 2s);
  REQUIRE(!chunks.empty());
  Json b = Json::parse(chunks[0]);
  CHECK(b["type"] == "BOOKMARK");
  CHECK(b["object"]["kind"] == "Widget");
  CHECK(b["object"]["apiVersion"] == "example.io/v1");
  CHECK(b["object"]["metadata"]["resourceVersion"] == rv);
  CHECK_FALSE(b["object"].contains("spec"));
  // timeoutSeconds ends the stream.
  auto start = std::chrono::steady_clock::now();
  REQUIRE(s->WaitClosed(5s));
  auto took = std::chrono::steady_clock::now() - start;
  CHECK(took < 3s);
  // Without allowWatchBookmarks: none.
  auto quiet = Watch(env, kWidgets + "?watch=true&timeoutSeconds=1&resourceVersion=" + rv);
  REQUIRE(quiet->WaitClosed(5s));
  CHECK(quiet->chunks().empty());
}

TEST_CASE("watch: many initial objects travel in few chunks", "[watch]") {
  Env env(FastOptions());
  for (int i = 0; i < 300; ++i) Create(env, "w" + std::to_string(i));
  auto s = Watch(env, kWidgets + "?watch=true");
  auto chunks = s->WaitFor(300);
  CHECK(Events(chunks).size() == 300);
  CHECK(chunks.size() < 30);  // the server's per-stream queue bound counts chunks
}

TEST_CASE("watch as Table: column definitions on the first event only", "[watch][table]") {
  Env env(FastOptions());
  Create(env, "a");
  Create(env, "b");
  auto s = Watch(env, kWidgets + "?watch=true",
                 {{"accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}});
  Create(env, "c");
  auto events = Events(s->WaitFor(3));
  REQUIRE(events.size() == 3);
  for (size_t i = 0; i < events.size(); ++i) {
    const Json& t = events[i]["object"];
    CHECK(t["kind"] == "Table");
    REQUIRE(t["rows"].size() == 1);
    CHECK(t["rows"][0]["object"]["kind"] == "PartialObjectMetadata");
    if (i == 0) {
      CHECK(t["columnDefinitions"][0]["name"] == "Name");
    } else {
      CHECK(t["columnDefinitions"].is_null());
    }
  }
  CHECK(events[2]["object"]["rows"][0]["cells"][0] == "c");
}

TEST_CASE("label-selected watch: objects entering and leaving the selection", "[watch]") {
  Env env(FastOptions());
  Create(env, "a", R"("labels":{"app":"web"})");
  Create(env, "b");
  auto list = env.Call("GET", kWidgets + "?labelSelector=app%3Dweb");
  auto s = Watch(env, kWidgets + "?watch=true&labelSelector=app%3Dweb&resourceVersion=" +
                          list.json["metadata"]["resourceVersion"].get<std::string>());
  // b joins, a leaves, a changes while out (unseen), b changes while in.
  auto label = [&](const std::string& name, const std::string& value) {
    std::string patch = value.empty() ? R"({"metadata":{"labels":null}})"
                                      : R"({"metadata":{"labels":{"app":")" + value + R"("}}})";
    REQUIRE(
        env.Call("PATCH", kWidgets + "/" + name, patch, "application/merge-patch+json").status ==
        200);
  };
  label("b", "web");
  label("a", "");
  REQUIRE(
      env.Call("PATCH", kWidgets + "/a", R"({"spec":{"size":9}})", "application/merge-patch+json")
          .status == 200);
  REQUIRE(
      env.Call("PATCH", kWidgets + "/b", R"({"spec":{"size":9}})", "application/merge-patch+json")
          .status == 200);
  auto events = Events(s->WaitFor(3));
  std::this_thread::sleep_for(100ms);
  events = Events(s->chunks());
  REQUIRE(events.size() == 3);
  CHECK(events[0]["type"] == "ADDED");
  CHECK(events[0]["object"]["metadata"]["name"] == "b");
  CHECK(events[1]["type"] == "DELETED");
  CHECK(events[1]["object"]["metadata"]["name"] == "a");
  CHECK(events[2]["type"] == "MODIFIED");
  CHECK(events[2]["object"]["metadata"]["name"] == "b");
}

TEST_CASE("label-selected watch from an RV sees changes made before it started", "[watch]") {
  Env env(FastOptions());
  Create(env, "stays", R"("labels":{"app":"web"})");
  Create(env, "leaves", R"("labels":{"app":"web"})");
  Create(env, "enters");
  auto list = env.Call("GET", kWidgets + "?labelSelector=app%3Dweb");
  const std::string rv0 = list.json["metadata"]["resourceVersion"];
  Create(env, "new", R"("labels":{"app":"web"})");
  REQUIRE(env.Call("PATCH", kWidgets + "/leaves", R"({"metadata":{"labels":null}})",
                   "application/merge-patch+json")
              .status == 200);
  REQUIRE(env.Call("PATCH", kWidgets + "/enters", R"({"metadata":{"labels":{"app":"web"}}})",
                   "application/merge-patch+json")
              .status == 200);
  REQUIRE(env.Call("PATCH", kWidgets + "/stays", R"({"spec":{"size":4}})",
                   "application/merge-patch+json")
              .status == 200);
  Create(env, "unrelated");
  REQUIRE(env.Call("DELETE", kWidgets + "/unrelated").status == 200);
  REQUIRE(env.Call("DELETE", kWidgets + "/new").status == 200);
  auto s = Watch(env, kWidgets + "?watch=true&labelSelector=app%3Dweb&resourceVersion=" + rv0);
  s->WaitFor(5);
  std::this_thread::sleep_for(100ms);
  auto events = Events(s->chunks());
  std::vector<std::string> seen;
  for (const auto& e : events) {
    seen.push_back(e["type"].get<std::string>() + " " +
                   e["object"]["metadata"]["name"].get<std::string>());
  }
  CHECK(seen == std::vector<std::string>{"ADDED new", "DELETED leaves", "ADDED enters",
                                         "MODIFIED stays", "DELETED new"});
}

TEST_CASE("hub stop ends every stream", "[watch]") {
  Env env(FastOptions());
  auto s1 = Watch(env, kWidgets + "?watch=true");
  auto s2 = Watch(env, kWidgets + "?watch=true");
  for (int i = 0; i < 100 && env.machinery().watches().active() != 2; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  env.machinery().Stop();
  CHECK(s1->WaitClosed(2s));
  CHECK(s2->WaitClosed(2s));
  // A watch started after Stop ends at once.
  auto late = Watch(env, kWidgets + "?watch=true");
  CHECK(late->WaitClosed(2s));
}

TEST_CASE("WatchEncoder alone", "[watch]") {
  ResourceType rt = testing::WidgetType();
  WatchRequest req;
  req.rt = &rt;
  req.ns = "default";
  WatchEncoder enc(req);
  store::Event ev;
  ev.type = store::EventType::kModified;
  ev.object.key = {"example.io", "Widget", "default", "x"};
  ev.object.uid = "u";
  ev.object.resource_version = 7;
  ev.object.generation = 1;
  ev.object.creation_timestamp = "2025-01-02T03:04:05Z";
  ev.object.data = EncodeForStore(Json::parse(WidgetJson("x")));
  auto line = enc.Encode(ev, WallClock::now());
  REQUIRE(line);
  CHECK(*line == "{\"type\":\"MODIFIED\",\"object\":" + Render(ev.object) + "}\n");
  ev.object.key.ns = "other";
  CHECK_FALSE(enc.Encode(ev, WallClock::now()));
  CHECK(enc.Bookmark(9) ==
        "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":\"Widget\",\"apiVersion\":\"example.io/v1\","
        "\"metadata\":{\"resourceVersion\":\"9\"}}}\n");
  CHECK(WatchEncoder::ErrorLine(Expired("too old resource version: 1 (5)")) ==
        "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},"
        "\"status\":\"Failure\",\"message\":\"too old resource version: 1 (5)\",\"reason\":"
        "\"Expired\",\"code\":410}}\n");
}

}  // namespace
}  // namespace edgevirt::api::machinery
