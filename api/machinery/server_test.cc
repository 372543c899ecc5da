// The machinery behind a real HttpServer on 127.0.0.1:0, driven by cpp-httplib: what kubectl
// does on the wire (headers, bodies, chunked watch streams).
#include <atomic>
#include <thread>

#include <httplib.h>

#include "api/machinery/machinery.h"
#include "api/machinery/testing.h"
#include "tests/support/catch.h"

namespace edgevirt::api::machinery {
namespace {

using namespace std::chrono_literals;
using testing::Env;
using testing::WidgetJson;

const std::string kWidgets = "/apis/example.io/v1/namespaces/default/widgets";

class Served {
 public:
  explicit Served(Env& env) {
    ServerOptions o;
    o.listen.push_back(*ListenAddress::Parse("http://127.0.0.1:0"));
    Machinery* m = &env.machinery();
    auto s = HttpServer::Start(o, [m](const HttpRequest& r) -> HttpResponse {
      if (auto a = m->Serve(r)) return std::move(*a);
      return HttpResponse::StatusError(404, "NotFound", "not here");
    });
    REQUIRE(s.has_value());
    server_ = std::move(*s);
    std::string addr = server_->BoundAddresses().front();
    port_ = std::stoi(addr.substr(addr.rfind(':') + 1));
  }
  ~Served() { server_->Stop(1s); }
  httplib::Client Client() const {
    httplib::Client c("127.0.0.1", port_);
    c.set_read_timeout(10, 0);
    return c;
  }

 private:
  std::unique_ptr<HttpServer> server_;
  int port_ = 0;
};

TEST_CASE("kubectl-like requests over HTTP", "[server]") {
  Env env;
  Served served(env);
  auto c = served.Client();
  httplib::Headers kubectl = {{"User-Agent", "kubectl/v1.32.0 (linux/amd64) kubernetes/70d3cc9"}};

  auto apis = c.Get("/apis", kubectl);
  REQUIRE(apis);
  CHECK(apis->status == 200);
  CHECK(apis->get_header_value("Content-Type") == "application/json");

  auto created = c.Post(kWidgets + "?fieldManager=kubectl-client-side-apply&fieldValidation=Strict",
                        kubectl, WidgetJson("h1"), "application/json");
  REQUIRE(created);
  CHECK(created->status == 201);

  auto table = c.Get(kWidgets + "?limit=500",
                     {{"Accept",
                       "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;"
                       "v=v1beta1;g=meta.k8s.io,application/json"}});
  REQUIRE(table);
  CHECK(table->status == 200);
  CHECK(Json::parse(table->body)["rows"][0]["cells"][0] == "h1");

  auto patched =
      c.Patch(kWidgets + "/h1", kubectl, R"({"spec":{"size":3}})", "application/merge-patch+json");
  REQUIRE(patched);
  CHECK(patched->status == 200);
  // kubectl took over the only field the creator owned: one manager left.
  const Json mf = Json::parse(patched->body)["metadata"]["managedFields"];
  REQUIRE(mf.size() == 1);
  CHECK(mf[0]["manager"] == "kubectl");

  auto smp = c.Patch(kWidgets + "/h1", kubectl, R"({"spec":{"size":3}})",
                     "application/strategic-merge-patch+json");
  REQUIRE(smp);
  CHECK(smp->status == 415);
  CHECK(Json::parse(smp->body)["reason"] == "UnsupportedMediaType");

  auto warn = c.Post(kWidgets, kubectl, WidgetJson("h2", "\"bogus\":1"), "application/json");
  REQUIRE(warn);
  CHECK(warn->status == 201);
  CHECK(warn->get_header_value("Warning") == "299 - \"unknown field \\\"spec.bogus\\\"\"");

  auto del =
      c.Delete(kWidgets + "/h1", kubectl,
               R"({"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"})",
               "application/json");
  REQUIRE(del);
  CHECK(del->status == 200);
  auto gone = c.Get(kWidgets + "/h1");
  REQUIRE(gone);
  CHECK(gone->status == 404);
}

TEST_CASE("a watch over HTTP: chunked, one event per line, flushed per event", "[server][watch]") {
  Env env;
  Served served(env);
  REQUIRE(env.Call("POST", kWidgets, WidgetJson("a")).status == 201);

  std::mutex mu;
  std::string received;
  std::atomic<bool> done{false};
  std::thread reader([&] {
    auto c = served.Client();
    auto r = c.Get(kWidgets + "?watch=true&timeoutSeconds=3", httplib::Headers{},
                   [&](const char* data, size_t len) {
                     std::lock_guard<std::mutex> lock(mu);
                     received.append(data, len);
                     return true;
                   });
    if (r) CHECK(r->status == 200);
    done = true;
  });
  auto lines = [&] {
    std::lock_guard<std::mutex> lock(mu);
    return std::count(received.begin(), received.end(), '\n');
  };
  for (int i = 0; i < 200 && lines() < 1; ++i) std::this_thread::sleep_for(10ms);
  REQUIRE(lines() == 1);  // the synthetic ADDED arrived before anything else happened
  REQUIRE(
      env.Call("PATCH", kWidgets + "/a", R"({"spec":{"size":2}})", "application/merge-patch+json")
          .status == 200);
  for (int i = 0; i < 200 && lines() < 2; ++i) std::this_thread::sleep_for(10ms);
  CHECK(lines() == 2);
  reader.join();  // timeoutSeconds=3 ends it
  CHECK(done);
  std::lock_guard<std::mutex> lock(mu);
  size_t nl = received.find('\n');
  CHECK(Json::parse(received.substr(0, nl))["type"] == "ADDED");
  CHECK(Json::parse(received.substr(nl + 1))["type"] == "MODIFIED");
}

}  // namespace
}  // namespace edgevirt::api::machinery
