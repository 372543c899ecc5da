// subresources.kubevirt.io against a real temp store and a Machinery serving the real
// kubevirt.io/v1 kinds, with requests shaped as virtctl v1.0 sends them (PUT, no Content-Type,
// an empty body or `{}`, Accept `application/json, */*`) and a recording fake VmiRuntime.
#include "api/subresources/subresources.h"

#include <mutex>

#include <nlohmann/json.hpp>

#include "api/kubevirt/kubevirt.h"
#include "api/machinery/machinery.h"
#include "api/machinery/testing.h"
#include "api/pipe_stream_for_test.h"
#include "tests/support/catch.h"
#include "tests/support/websocket_client.h"

namespace edgevirt::api::subresources {
namespace {

using machinery::Machinery;
using machinery::MachineryOptions;
using machinery::testing::TempDir;

const std::string kSr = "/apis/subresources.kubevirt.io/v1/namespaces/default/";
const std::string kVms = "/apis/kubevirt.io/v1/namespaces/default/virtualmachines";
const std::string kVmis = "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances";

class FakeRuntime : public VmiRuntime {
 public:
  Status Pause(const Json& vmi) override { return Record("pause", vmi); }
  Status Unpause(const Json& vmi) override { return Record("unpause", vmi); }
  Status SoftReboot(const Json& vmi) override { return Record("softreboot", vmi); }
  Status Reset(const Json& vmi) override { return Record("reset", vmi); }
  Result<Json> GuestAgent(const Json& vmi, std::string_view kind) override {
    if (Status s = Record(std::string(kind), vmi); !s) return s.error();
    return Json{{"hostname", "guest"}, {"kind", std::string(kind)}};
  }
  Result<std::unique_ptr<Stream>> OpenStream(const Json& vmi, StreamKind kind, uint16_t port,
                                             std::string_view protocol) override {
    const char* k = kind == StreamKind::kConsole ? "console"
                    : kind == StreamKind::kVnc   ? "vnc"
                                                 : "portforward";
    if (Status s =
            Record(std::string(k) + ":" + std::to_string(port) + ":" + std::string(protocol), vmi);
        !s) {
      return s.error();
    }
    return std::unique_ptr<Stream>(std::make_unique<testing::PipeStream>(1 << 20, /*echo=*/true));
  }
  Result<std::string> Screenshot(const Json& vmi) override {
    if (Status s = Record("screenshot", vmi); !s) return s.error();
    return std::string("\x89PNG\r\n\x1a\n", 8);
  }
  std::vector<std::string> calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  std::optional<Error> fail;

 private:
  Status Record(const std::string& what, const Json& vmi) {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.push_back(what + ":" + vmi["metadata"]["name"].get<std::string>());
    if (fail) return *fail;
    return Ok();
  }
  std::mutex mu_;
  std::vector<std::string> calls_;
};

struct Reply {
  int status = 0;
  std::string body;
  Json json;
};

class Env {
 public:
  Env() {
    store::Options so;
    so.dir = dir_.path() / "state";
    store_ = std::move(*store::Store::Open(so));
    MachineryOptions mo;
    mo.run_garbage_collector = false;
    machinery_ = std::move(*Machinery::Create(*store_, {kubevirt::KubevirtV1({})}, mo));
    sub_ = std::make_unique<Subresources>(machinery_->registry(), &runtime_);
  }
  ~Env() {
    sub_.reset();
    machinery_.reset();
    store_->Close();
  }
  FakeRuntime& runtime() { return runtime_; }
  machinery::Registry& registry() { return machinery_->registry(); }
  Subresources& sub() { return *sub_; }

  // As virtctl: no Content-Type, Accept "application/json, */*".
  std::optional<Reply> Sub(const std::string& method, const std::string& path,
                           const std::string& body = "{}") {
    auto r = Raw(method, path, body);
    if (!r) return std::nullopt;
    return Reply{r->status, r->body, Json::parse(r->body, nullptr, false)};
  }
  // A GET as virtctl's WebSocket dialer sends it.
  std::optional<HttpResponse> Upgrade(const std::string& path) {
    return Raw("GET", path, "",
               {{"connection", "Upgrade"},
                {"upgrade", "websocket"},
                {"sec-websocket-version", "13"},
                {"sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="},
                {"sec-websocket-protocol", "plain.kubevirt.io"}});
  }
  std::optional<HttpResponse> Raw(
      const std::string& method, const std::string& path, const std::string& body,
      const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    HttpRequest req;
    req.headers = headers;
    req.method = method;
    req.target = path;
    req.path = path;
    req.body = body;
    req.headers.emplace_back("accept", "application/json, */*");
    return sub_->Serve(req);
  }
  Reply Put(const std::string& resource, const std::string& name, const std::string& sub,
            const std::string& body = "{}") {
    auto r = Sub("PUT", kSr + resource + "/" + name + "/" + sub, body);
    REQUIRE(r);
    return *r;
  }
  Reply Api(const std::string& method, const std::string& target, const std::string& body = "") {
    HttpRequest req;
    req.method = method;
    req.target = target;
    req.path = target;
    req.body = body;
    req.headers.emplace_back("content-type", "application/json");
    auto r = machinery_->Serve(req);
    REQUIRE(r);
    return Reply{r->status, r->body, Json::parse(r->body, nullptr, false)};
  }

  // `strategy`: a runStrategy, or "running:true"/"running:false" for the deprecated field.
  Json CreateVm(const std::string& name, const std::string& strategy) {
    Json vm = Json::parse(R"({"apiVersion":"kubevirt.io/v1","kind":"VirtualMachine",)"
                          R"("metadata":{"name":")" +
                          name +
                          R"("},"spec":{"template":{"spec":{"domain":)"
                          R"({"devices":{},"resources":{"requests":{"memory":"64Mi"}}}}}}})");
    if (strategy == "running:true" || strategy == "running:false") {
      vm["spec"]["running"] = strategy == "running:true";
    } else {
      vm["spec"]["runStrategy"] = strategy;
    }
    auto r = Api("POST", kVms, vm.dump());
    INFO(r.body);
    REQUIRE(r.status == 201);
    return r.json;
  }
  // A VMI named like its VM, in `phase`, with extra status/spec members.
  Json CreateVmi(const std::string& name, const std::string& phase,
                 const Json& conditions = Json::array(), const Json& spec_extra = Json::object()) {
    Json vmi = Json::parse(R"({"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance",)"
                           R"("metadata":{"name":")" +
                           name +
                           R"("},"spec":{"domain":)"
                           R"({"devices":{},"resources":{"requests":{"memory":"64Mi"}}}}})");
    auto r = Api("POST", kVmis, vmi.dump());
    INFO(r.body);
    REQUIRE(r.status == 201);
    machinery::WriteOptions o;
    o.admit = false;
    auto m = registry().Mutate(
        *registry().ByKind("kubevirt.io", "VirtualMachineInstance"), "default", name, false,
        [&](Json& v) -> Status {
          v["status"]["phase"] = phase;
          v["status"]["conditions"] = conditions;
          for (auto& [k, val] : spec_extra.items()) v["spec"][k] = val;
          return Ok();
        },
        o);
    REQUIRE(m);
    return Api("GET", kVmis + "/" + name).json;
  }
  Json Vm(const std::string& name) { return Api("GET", kVms + "/" + name).json; }
  Json Vmi(const std::string& name) { return Api("GET", kVmis + "/" + name).json; }
  void SetVmStatus(const std::string& name, const Json& status) {
    auto r = Api("PUT", kVms + "/" + name + "/status", [&] {
      Json vm = Vm(name);
      vm["status"] = status;
      return vm.dump();
    }());
    INFO(r.body);
    REQUIRE(r.status == 200);
  }

 private:
  TempDir dir_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Machinery> machinery_;
  FakeRuntime runtime_;
  std::unique_ptr<Subresources> sub_;
};

Json Requests(const Json& vm) {
  if (!vm.contains("status") || !vm["status"].contains("stateChangeRequests")) return nullptr;
  return vm["status"]["stateChangeRequests"];
}

Json StopStart(const std::string& uid) {
  return Json::array({{{"action", "Stop"}, {"uid", uid}}, {{"action", "Start"}}});
}

// Every runStrategy x {start, stop, restart}, with and without a Running VMI.
TEST_CASE("VM subresources: every runStrategy x start/stop/restart", "[subresources][vm]") {
  struct Row {
    std::string strategy;
    std::string op;
    bool vmi;
    int code;
    std::string message;  // the Status message for errors
    // What changed on success: "runStrategy=<v>", "running=<v>", "requests=[Start]",
    // "requests=[Stop]", "requests=[Stop,Start]".
    std::string effect;
  };
  const std::string ofx = "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"vm\": ";
  const std::vector<Row> rows = {
      {"Always", "start", false, 409, ofx + "Always does not support manual start requests", ""},
      {"Always", "start", true, 409, ofx + "VM is already running", ""},
      {"Always", "stop", false, 202, "", "runStrategy=Halted"},
      {"Always", "stop", true, 202, "", "runStrategy=Halted"},
      {"Always", "restart", false, 409, ofx + "VM is not running: Halted", ""},
      {"Always", "restart", true, 202, "", "requests=[Stop,Start]"},
      {"Halted", "start", false, 202, "", "runStrategy=Always"},
      {"Halted", "start", true, 409, ofx + "VM is already running", ""},
      {"Halted", "stop", false, 409, ofx + "VM is not running", ""},
      {"Halted", "stop", true, 409,
       ofx + "Halted only supports manual stop requests with a shorter graceperiod", ""},
      {"Halted", "restart", false, 409,
       ofx + "RunStategy Halted does not support manual restart requests", ""},
      {"Halted", "restart", true, 409,
       ofx + "RunStategy Halted does not support manual restart requests", ""},
      {"Manual", "start", false, 202, "", "requests=[Start]"},
      {"Manual", "start", true, 409, ofx + "VM is already running", ""},
      {"Manual", "stop", false, 409, ofx + "VM is not running", ""},
      {"Manual", "stop", true, 202, "", "requests=[Stop]"},
      {"Manual", "restart", false, 409, ofx + "VM is not running: Halted", ""},
      {"Manual", "restart", true, 202, "", "requests=[Stop,Start]"},
      {"RerunOnFailure", "start", false, 202, "", "requests=[Start]"},
      {"RerunOnFailure", "start", true, 409, ofx + "VM is already running", ""},
      {"RerunOnFailure", "stop", false, 202, "", "runStrategy=Halted"},
      {"RerunOnFailure", "stop", true, 202, "", "runStrategy=Halted"},
      {"RerunOnFailure", "restart", false, 409, ofx + "VM is not running: Halted", ""},
      {"RerunOnFailure", "restart", true, 202, "", "requests=[Stop,Start]"},
      {"Once", "start", false, 409, ofx + "Once does not support manual start requests", ""},
      {"Once", "start", true, 409, ofx + "VM is already running", ""},
      {"Once", "stop", false, 202, "", "runStrategy=Halted"},
      {"Once", "stop", true, 202, "", "runStrategy=Halted"},
      {"Once", "restart", false, 409,
       ofx + "RunStategy Once does not support manual restart requests", ""},
      {"Once", "restart", true, 409,
       ofx + "RunStategy Once does not support manual restart requests", ""},
      // The deprecated spec.running.
      {"running:false", "start", false, 202, "", "running=true"},
      {"running:true", "stop", true, 202, "", "running=false"},
      {"running:true", "restart", true, 202, "", "requests=[Stop,Start]"},
      {"running:false", "restart", false, 409,
       ofx + "RunStategy Halted does not support manual restart requests", ""},
  };
  for (const auto& row : rows) {
    for (const std::string body : {"", "{}"}) {
      DYNAMIC_SECTION(row.strategy << " " << row.op << (row.vmi ? " with VMI" : " without VMI")
                                   << " body '" << body << "'") {
        Env env;
        Json before = env.CreateVm("vm", row.strategy);
        std::string uid;
        if (row.vmi) uid = env.CreateVmi("vm", "Running")["metadata"]["uid"];
        before = env.Vm("vm");
        Reply r = env.Put("virtualmachines", "vm", row.op, body);
        INFO(r.body);
        REQUIRE(r.status == row.code);
        Json after = env.Vm("vm");
        if (row.code != 202) {
          CHECK(r.json["kind"] == "Status");
          CHECK(r.json["apiVersion"] == "v1");
          CHECK(r.json["message"] == row.message);
          CHECK(r.json["code"] == row.code);
          CHECK(r.json["reason"] == "Conflict");
          CHECK(r.json["details"] ==
                Json{{"name", "vm"}, {"group", "kubevirt.io"}, {"kind", "virtualmachine"}});
          CHECK(after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]);
          continue;
        }
        CHECK(r.body.empty());
        const std::string& e = row.effect;
        if (e.rfind("runStrategy=", 0) == 0) {
          CHECK(after["spec"]["runStrategy"] == e.substr(12));
          CHECK(after["metadata"]["generation"] == before["metadata"]["generation"].get<int>() + 1);
          CHECK(Requests(after).is_null());
        } else if (e.rfind("running=", 0) == 0) {
          CHECK(after["spec"]["running"] == (e == "running=true"));
          CHECK_FALSE(after["spec"].contains("runStrategy"));
          CHECK(after["metadata"]["generation"] == before["metadata"]["generation"].get<int>() + 1);
        } else {
          // Status writes leave the generation alone.
          CHECK(after["metadata"]["generation"] == before["metadata"]["generation"]);
          CHECK(after["spec"] == before["spec"]);
          if (e == "requests=[Start]") {
            CHECK(Requests(after) == Json::array({{{"action", "Start"}}}));
          } else if (e == "requests=[Stop]") {
            CHECK(Requests(after) == Json::array({{{"action", "Stop"}, {"uid", uid}}}));
          } else {
            CHECK(Requests(after) == StopStart(uid));
          }
        }
      }
    }
  }
}

TEST_CASE("VM subresources: dryRun validates and changes nothing", "[subresources][vm]") {
  Env env;
  env.CreateVm("halted", "Halted");
  env.CreateVm("manual", "Manual");
  env.CreateVm("always", "Always");
  env.CreateVmi("always", "Running");
  const Json halted = env.Vm("halted"), manual = env.Vm("manual"), always = env.Vm("always");
  const Json vmi = env.Vmi("always");
  const std::string dry = R"({"dryRun":["All"]})";
  CHECK(env.Put("virtualmachines", "halted", "start", dry).status == 202);
  CHECK(env.Put("virtualmachines", "manual", "start", dry).status == 202);
  CHECK(env.Put("virtualmachines", "always", "stop", R"({"dryRun":["All"],"gracePeriod":0})")
            .status == 202);
  CHECK(env.Put("virtualmachines", "always", "restart",
                R"({"dryRun":["All"],"gracePeriodSeconds":0})")
            .status == 202);
  CHECK(env.Vm("halted") == halted);
  CHECK(env.Vm("manual") == manual);
  CHECK(env.Vm("always") == always);
  CHECK(env.Vmi("always") == vmi);
  // Validation still answers.
  CHECK(env.Put("virtualmachines", "always", "start", dry).status == 409);
  CHECK(env.Put("virtualmachines", "halted", "start", R"({"dryRun":["Some"]})").status == 400);
}

TEST_CASE("VM subresources: bodies, paths, methods, 404", "[subresources][vm]") {
  Env env;
  env.CreateVm("vm", "Halted");

  auto missing = env.Put("virtualmachines", "nope", "start");
  CHECK(missing.status == 404);
  CHECK(missing.json["message"] == "virtualmachine.kubevirt.io \"nope\" not found");
  CHECK(missing.json["reason"] == "NotFound");
  CHECK(missing.json["details"]["kind"] == "virtualmachine");
  CHECK(env.Put("virtualmachines", "nope", "stop").json["message"] ==
        "virtualmachine.kubevirt.io \"nope\" not found");
  CHECK(env.Put("virtualmachines", "nope", "restart").status == 404);
  CHECK(env.Put("virtualmachines", "nope", "migrate").status == 404);

  auto bad = env.Put("virtualmachines", "vm", "start", "{nope");
  CHECK(bad.status == 400);
  CHECK(bad.json["reason"] == "BadRequest");
  CHECK(bad.json["message"].get<std::string>().rfind(
            "Can not unmarshal Request body to struct, error: ", 0) == 0);
  auto typed = env.Put("virtualmachines", "vm", "stop", R"({"gracePeriod":"soon"})");
  CHECK(typed.status == 400);
  CHECK(typed.json["message"] ==
        "Can not unmarshal Request body to struct, error: json: cannot unmarshal string into Go "
        "struct field StopOptions.gracePeriod of type int64");

  auto get = env.Sub("GET", kSr + "virtualmachines/vm/start");
  REQUIRE(get);
  CHECK(get->status == 405);
  CHECK(get->json["reason"] == "MethodNotAllowed");
  CHECK(env.Sub("POST", kSr + "virtualmachines/vm/stop")->status == 405);

  // v1alpha3 is served too.
  auto old = env.Sub("PUT",
                     "/apis/subresources.kubevirt.io/v1alpha3/namespaces/default/"
                     "virtualmachines/vm/start",
                     "");
  REQUIRE(old);
  CHECK(old->status == 202);
  CHECK(env.Vm("vm")["spec"]["runStrategy"] == "Always");

  // Other paths are someone else's.
  // (console, vnc and portforward are served here too: see the [ws] tests.)
  CHECK_FALSE(env.Sub("PUT", kSr + "virtualmachines/vm/memorydump"));
  CHECK_FALSE(env.Sub("PUT", kSr + "virtualmachineinstances/vm/start"));
  CHECK_FALSE(env.Sub("GET", "/apis/subresources.kubevirt.io/v1/version"));
  CHECK_FALSE(env.Sub("GET", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines/vm"));
  CHECK_FALSE(env.Sub("PUT",
                      "/apis/subresources.kubevirt.io/v2/namespaces/default/"
                      "virtualmachines/vm/start"));
}

TEST_CASE("start: paused, restart of a finished VMI, failures, pending requests",
          "[subresources][vm]") {
  Env env;
  // Halted + paused: a Start request with data {paused: "true"}, runStrategy untouched.
  env.CreateVm("h", "Halted");
  CHECK(env.Put("virtualmachines", "h", "start", R"({"paused":true})").status == 202);
  Json h = env.Vm("h");
  CHECK(h["spec"]["runStrategy"] == "Halted");
  CHECK(Requests(h) == Json::array({{{"action", "Start"}, {"data", {{"paused", "true"}}}}}));

  // Manual with a finished VMI: Stop (its uid) then Start.
  env.CreateVm("m", "Manual");
  std::string uid = env.CreateVmi("m", "Succeeded")["metadata"]["uid"];
  CHECK(env.Put("virtualmachines", "m", "start").status == 202);
  CHECK(Requests(env.Vm("m")) == StopStart(uid));

  // A pending request refuses another start (KubeVirt answers 500 here).
  auto pending = env.Put("virtualmachines", "m", "start");
  CHECK(pending.status == 500);
  CHECK(pending.json["message"] ==
        "Internal error occurred: unable to complete request: stop/start already underway");
  // ... but a single Stop replaces it.
  env.CreateVm("m2", "Manual");
  std::string uid2 = env.CreateVmi("m2", "Running")["metadata"]["uid"];
  env.SetVmStatus("m2", {{"stateChangeRequests", Json::array({{{"action", "Start"}}})},
                         {"startFailure", {{"retryAfterTimestamp", "2025-01-01T00:00:00Z"}}}});
  CHECK(env.Put("virtualmachines", "m2", "stop").status == 202);
  Json m2 = env.Vm("m2");
  CHECK(Requests(m2) == Json::array({{{"action", "Stop"}, {"uid", uid2}}}));
  CHECK_FALSE(m2["status"].contains("startFailure"));

  // RerunOnFailure: Succeeded restarts, Failed is refused.
  env.CreateVm("r", "RerunOnFailure");
  std::string ruid = env.CreateVmi("r", "Succeeded")["metadata"]["uid"];
  CHECK(env.Put("virtualmachines", "r", "start").status == 202);
  CHECK(Requests(env.Vm("r")) == StopStart(ruid));
  env.CreateVm("f", "RerunOnFailure");
  env.CreateVmi("f", "Failed");
  auto failed = env.Put("virtualmachines", "f", "start");
  CHECK(failed.status == 409);
  CHECK(failed.json["message"] ==
        "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"f\": RerunOnFailure does "
        "not support starting VM from failed state");

  // A Pending VMI counts as running; an Unknown one does not.
  env.CreateVm("p", "Manual");
  env.CreateVmi("p", "Pending");
  CHECK(env.Put("virtualmachines", "p", "start").status == 409);
  env.CreateVm("u", "Halted");
  env.CreateVmi("u", "Unknown");
  CHECK(env.Put("virtualmachines", "u", "start").status == 202);
}

TEST_CASE("stop --force --grace-period and restart --force", "[subresources][vm]") {
  Env env;
  env.CreateVm("a", "Always");
  env.CreateVmi("a", "Running");
  CHECK(env.Put("virtualmachines", "a", "stop", R"({"gracePeriod":5})").status == 202);
  CHECK(env.Vmi("a")["spec"]["terminationGracePeriodSeconds"] == 5);
  CHECK(env.Vm("a")["spec"]["runStrategy"] == "Halted");

  // Halted with a running VMI: only a shorter grace period stops it (a Stop request).
  env.CreateVm("h", "Halted");
  std::string uid = env.CreateVmi("h", "Running", Json::array(),
                                  {{"terminationGracePeriodSeconds", 30}})["metadata"]["uid"];
  const int64_t grace = env.Vmi("h")["spec"].value("terminationGracePeriodSeconds", 0);
  REQUIRE(grace > 1);
  auto longer =
      env.Put("virtualmachines", "h", "stop", R"({"gracePeriod":)" + std::to_string(grace) + "}");
  CHECK(longer.status == 409);
  CHECK(env.Put("virtualmachines", "h", "stop", R"({"gracePeriod":1})").status == 202);
  CHECK(env.Vmi("h")["spec"]["terminationGracePeriodSeconds"] == 1);
  CHECK(Requests(env.Vm("h")) == Json::array({{{"action", "Stop"}, {"uid", uid}}}));

  // restart: only gracePeriodSeconds 0; it makes the VMI stop without grace.
  env.CreateVm("r", "Always");
  std::string ruid = env.CreateVmi("r", "Running")["metadata"]["uid"];
  auto positive = env.Put("virtualmachines", "r", "restart", R"({"gracePeriodSeconds":3})");
  CHECK(positive.status == 400);
  CHECK(positive.json["message"] == "For force restart, only gracePeriod=0 is supported for now");
  CHECK(env.Put("virtualmachines", "r", "restart", R"({"gracePeriodSeconds":-1})").status == 400);
  CHECK(env.Put("virtualmachines", "r", "restart", R"({"gracePeriodSeconds":0})").status == 202);
  CHECK(env.Vmi("r")["spec"]["terminationGracePeriodSeconds"] == 0);
  CHECK(Requests(env.Vm("r")) == StopStart(ruid));
}

TEST_CASE("migrate: 404s, then 409: no live migration on one host", "[subresources][vm]") {
  Env env;
  env.CreateVm("vm", "Always");
  auto no_vmi = env.Put("virtualmachines", "vm", "migrate");
  CHECK(no_vmi.status == 404);
  CHECK(no_vmi.json["message"] == "virtualmachineinstance.kubevirt.io \"vm\" not found");
  env.CreateVmi("vm", "Running");
  auto r = env.Put("virtualmachines", "vm", "migrate", "");
  CHECK(r.status == 409);
  CHECK(r.json["reason"] == "Conflict");
  CHECK(r.json["message"].get<std::string>().find("live migration is not possible") !=
        std::string::npos);
  env.CreateVm("s", "Always");
  env.CreateVmi("s", "Scheduling");
  CHECK(env.Put("virtualmachines", "s", "migrate").json["message"] ==
        "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"s\": VM is not running");
}

TEST_CASE("VMI pause/unpause/softreboot/reset", "[subresources][vmi]") {
  Env env;
  const std::string ofx = "Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io \"";
  auto missing = env.Put("virtualmachineinstances", "nope", "pause");
  CHECK(missing.status == 404);
  CHECK(missing.json["message"] == "virtualmachineinstance.kubevirt.io \"nope\" not found");
  CHECK(missing.json["details"]["kind"] == "virtualmachineinstance");

  env.CreateVmi("pending", "Pending");
  auto not_running = env.Put("virtualmachineinstances", "pending", "pause");
  CHECK(not_running.status == 409);
  CHECK(not_running.json["message"] == ofx + "pending\": VM is not running");
  CHECK(env.Put("virtualmachineinstances", "pending", "unpause").json["message"] ==
        ofx + "pending\": VMI is not paused");
  CHECK(env.Put("virtualmachineinstances", "pending", "softreboot").status == 409);
  CHECK(env.Put("virtualmachineinstances", "pending", "reset").json["message"] ==
        ofx + "pending\": VMI is not running");

  env.CreateVmi("run", "Running");
  CHECK(env.Put("virtualmachineinstances", "run", "unpause").json["message"] ==
        ofx + "run\": VMI is not paused");
  // dryRun: validated, no runtime call.
  auto dry = env.Put("virtualmachineinstances", "run", "pause", R"({"dryRun":["All"]})");
  CHECK(dry.status == 200);
  CHECK(env.runtime().calls().empty());
  auto pause = env.Put("virtualmachineinstances", "run", "pause", "");
  CHECK(pause.status == 200);
  CHECK(pause.body.empty());
  CHECK(env.Put("virtualmachineinstances", "run", "softreboot", "").status == 200);
  CHECK(env.Put("virtualmachineinstances", "run", "reset", "").status == 200);
  CHECK(env.runtime().calls() ==
        std::vector<std::string>{"pause:run", "softreboot:run", "reset:run"});
  CHECK(env.Sub("GET", kSr + "virtualmachineinstances/run/pause")->status == 405);

  const Json paused_cond = Json::array({{{"type", "Paused"}, {"status", "True"}}});
  env.CreateVmi("paused", "Running", paused_cond);
  CHECK(env.Put("virtualmachineinstances", "paused", "pause").json["message"] ==
        ofx + "paused\": VMI is already paused");
  CHECK(env.Put("virtualmachineinstances", "paused", "softreboot").json["message"] ==
        ofx + "paused\": VMI is paused");
  CHECK(env.Put("virtualmachineinstances", "paused", "unpause", R"({"dryRun":["All"]})").status ==
        200);
  CHECK(env.Put("virtualmachineinstances", "paused", "unpause").status == 200);
  CHECK(env.runtime().calls().back() == "unpause:paused");

  // Pausing a VMI with a liveness probe is forbidden.
  env.CreateVmi("probe", "Running", Json::array(),
                {{"livenessProbe", {{"tcpSocket", {{"port", 22}}}}}});
  auto probe = env.Put("virtualmachineinstances", "probe", "pause");
  CHECK(probe.status == 403);
  CHECK(probe.json["reason"] == "Forbidden");
  CHECK(probe.json["message"] ==
        "virtualmachineinstance.kubevirt.io \"probe\" is forbidden: Pausing VMIs with "
        "LivenessProbe is currently not supported");

  // Runtime errors map: kConflict 409, kNotFound 404, kUnavailable 503, others 500.
  env.runtime().fail = Error{Code::kConflict, "domain is shutting down"};
  auto c = env.Put("virtualmachineinstances", "run", "reset");
  CHECK(c.status == 409);
  CHECK(c.json["message"] == ofx + "run\": domain is shutting down");
  env.runtime().fail = Error{Code::kNotFound, "no domain"};
  CHECK(env.Put("virtualmachineinstances", "run", "reset").status == 404);
  env.runtime().fail = Error{Code::kUnavailable, "libvirt is down"};
  CHECK(env.Put("virtualmachineinstances", "run", "reset").status == 503);
  env.runtime().fail = Error{Code::kInternal, "boom"};
  CHECK(env.Put("virtualmachineinstances", "run", "reset").status == 500);
}

TEST_CASE("guest agent queries", "[subresources][vmi]") {
  Env env;
  const std::string ofx = "Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io \"";
  CHECK(env.Sub("GET", kSr + "virtualmachineinstances/nope/guestosinfo")->status == 404);
  env.CreateVmi("pending", "Pending");
  auto pending = env.Sub("GET", kSr + "virtualmachineinstances/pending/guestosinfo");
  CHECK(pending->status == 409);
  CHECK(pending->json["message"] == ofx + "pending\": VMI is not running");
  env.CreateVmi("noagent", "Running",
                Json::array({{{"type", "AgentConnected"}, {"status", "False"}}}));
  auto noagent = env.Sub("GET", kSr + "virtualmachineinstances/noagent/userlist");
  CHECK(noagent->status == 409);
  CHECK(noagent->json["message"] == ofx + "noagent\": VMI does not have guest agent connected");
  CHECK(env.runtime().calls().empty());

  env.CreateVmi("agent", "Running",
                Json::array({{{"type", "AgentConnected"}, {"status", "True"}}}));
  for (const std::string kind : {"guestosinfo", "userlist", "filesystemlist"}) {
    auto r = env.Sub("GET", kSr + "virtualmachineinstances/agent/" + kind, "");
    REQUIRE(r);
    CHECK(r->status == 200);
    CHECK(r->json["kind"] == kind);
  }
  CHECK(env.Sub("PUT", kSr + "virtualmachineinstances/agent/guestosinfo")->status == 405);
}

TEST_CASE("no runtime: host actions answer 503", "[subresources][vmi]") {
  TempDir dir;
  store::Options so;
  so.dir = dir.path() / "state";
  auto store = std::move(*store::Store::Open(so));
  MachineryOptions mo;
  mo.run_garbage_collector = false;
  auto machinery = std::move(*Machinery::Create(*store, {kubevirt::KubevirtV1({})}, mo));
  Subresources sub(machinery->registry(), nullptr);
  machinery::WriteOptions o;
  const auto& vmis = *machinery->registry().ByKind("kubevirt.io", "VirtualMachineInstance");
  REQUIRE(machinery->registry().Create(
      vmis, "default",
      Json::parse(R"({"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance",)"
                  R"("metadata":{"name":"v"},"spec":{"domain":{"devices":{},)"
                  R"("resources":{"requests":{"memory":"64Mi"}}}}})"),
      o));
  o.admit = false;
  REQUIRE(machinery->registry().Mutate(
      vmis, "default", "v", false,
      [](Json& v) -> Status {
        v["status"]["phase"] = "Running";
        return Ok();
      },
      o));
  HttpRequest req;
  req.method = "PUT";
  req.path = kSr + "virtualmachineinstances/v/pause";
  auto r = sub.Serve(req);
  REQUIRE(r);
  CHECK(r->status == 503);
  machinery.reset();
  store->Close();
}

// virtctl v1.0 addvolume: bus scsi, serial = volume name.
std::string AddBody(const std::string& v) {
  return Json{
      {"name", v},
      {"disk", {{"name", v}, {"disk", {{"bus", "scsi"}}}, {"serial", v}}},
      {"volumeSource", {{"persistentVolumeClaim", {{"claimName", v}, {"hotpluggable", true}}}}}}
      .dump();
}

TEST_CASE("addvolume/removevolume on a VM queue volume requests", "[subresources][volumes]") {
  Env env;
  const std::string ofx = "Operation cannot be fulfilled on virtualmachine.kubevirt.io \"vm\": ";
  CHECK(env.Put("virtualmachines", "vm", "addvolume", AddBody("data")).status == 404);
  env.CreateVm("vm", "Always");
  auto add = env.Put("virtualmachines", "vm", "addvolume", AddBody("data"));
  INFO(add.body);
  REQUIRE(add.status == 202);
  CHECK(add.body.empty());
  Json reqs = env.Vm("vm")["status"]["volumeRequests"];
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0]["addVolumeOptions"]["name"] == "data");
  CHECK(reqs[0]["addVolumeOptions"]["disk"]["name"] == "data");
  CHECK(reqs[0]["addVolumeOptions"]["volumeSource"]["persistentVolumeClaim"]["hotpluggable"] ==
        true);
  auto dup = env.Put("virtualmachines", "vm", "addvolume", AddBody("data"));
  CHECK(dup.status == 409);
  CHECK(dup.json["message"] == ofx + "add volume request for volume [data] already exists");
  // A remove withdraws the pending add and queues itself.
  auto rm = env.Put("virtualmachines", "vm", "removevolume", R"({"name":"data"})");
  REQUIRE(rm.status == 202);
  reqs = env.Vm("vm")["status"]["volumeRequests"];
  REQUIRE(reqs.size() == 1);
  CHECK(reqs[0] == Json{{"removeVolumeOptions", {{"name", "data"}}}});
  CHECK(env.Put("virtualmachines", "vm", "removevolume", R"({"name":"data"})").json["message"] ==
        ofx +
            "a remove volume request for volume [data] already exists and is still being "
            "processed");
  CHECK(env.Put("virtualmachines", "vm", "addvolume", AddBody("data")).json["message"] ==
        ofx +
            "unable to add volume since a remove volume request for volume [data] already "
            "exists and is still being processed");
  // Only a hot-plugged volume of the template can be removed.
  auto none = env.Put("virtualmachines", "vm", "removevolume", R"({"name":"other"})");
  CHECK(none.status == 409);
  CHECK(none.json["message"] == ofx + "Unable to remove volume [other] because it does not exist");
}

TEST_CASE("addvolume/removevolume: bodies KubeVirt refuses, and what edgevirt cannot plug",
          "[subresources][volumes]") {
  Env env;
  env.CreateVm("vm", "Always");
  auto put = [&](const std::string& body) {
    return env.Put("virtualmachines", "vm", "addvolume", body);
  };
  CHECK(put("").json["message"] == "AddVolumeOptions requires name to be set");
  CHECK(put(R"({"name":"x"})").json["message"] == "AddVolumeOptions requires disk to not be nil");
  CHECK(put(R"({"name":"x","disk":{}})").json["message"] ==
        "AddVolumeOptions requires VolumeSource to not be nil");
  CHECK(put("[1]").status == 400);
  CHECK(env.Put("virtualmachines", "vm", "removevolume", "{}").json["message"] ==
        "RemoveVolumeOptions requires name to be set");
  auto dv = put(R"({"name":"x","disk":{"disk":{}},"volumeSource":{"dataVolume":{"name":"x"}}})");
  CHECK(dv.status == 422);
  auto sata = put(
      R"({"name":"x","disk":{"disk":{"bus":"sata"}},"volumeSource":{"persistentVolumeClaim":{"claimName":"x"}}})");
  CHECK(sata.status == 422);
  INFO(sata.body);
  CHECK(sata.body.find("does not use a scsi or virtio bus") != std::string::npos);
  auto noclaim =
      put(R"({"name":"x","disk":{"disk":{}},"volumeSource":{"persistentVolumeClaim":{}}})");
  CHECK(noclaim.status == 422);
  CHECK_FALSE(
      (env.Vm("vm").contains("status") && env.Vm("vm")["status"].contains("volumeRequests")));
  // dryRun validates and writes nothing.
  Json body = Json::parse(AddBody("y"));
  body["dryRun"] = {"All"};
  CHECK(put(body.dump()).status == 202);
  Json vm = env.Vm("vm");
  CHECK_FALSE((vm.contains("status") && vm["status"].contains("volumeRequests")));
}

TEST_CASE("addvolume/removevolume on a VMI patch its spec", "[subresources][volumes]") {
  Env env;
  const std::string ofx = "Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io \"";
  env.CreateVmi("pending", "Pending");
  auto not_running = env.Put("virtualmachineinstances", "pending", "addvolume", AddBody("d"));
  CHECK(not_running.status == 409);
  CHECK(not_running.json["message"] == ofx + "pending\": VMI is not running");
  env.CreateVmi("run", "Running");
  REQUIRE(env.Put("virtualmachineinstances", "run", "addvolume", AddBody("d")).status == 202);
  Json vmi = env.Vmi("run");
  REQUIRE(vmi["spec"]["volumes"].size() == 1);
  CHECK(
      vmi["spec"]["volumes"][0] ==
      Json::parse(R"({"name":"d","persistentVolumeClaim":{"claimName":"d","hotpluggable":true}})"));
  CHECK(vmi["spec"]["domain"]["devices"]["disks"][0]["serial"] == "d");
  CHECK(env.Put("virtualmachineinstances", "run", "addvolume", AddBody("d")).json["message"] ==
        ofx + "run\": Unable to add volume [d] because it already exists");
  CHECK(env.Put("virtualmachineinstances", "run", "removevolume", R"({"name":"zz"})")
            .json["message"] ==
        ofx + "run\": Unable to remove volume [zz] because it does not exist");
  REQUIRE(env.Put("virtualmachineinstances", "run", "removevolume", R"({"name":"d"})").status ==
          202);
  vmi = env.Vmi("run");
  CHECK(vmi["spec"]["volumes"].empty());
  CHECK(vmi["spec"]["domain"]["devices"]["disks"].empty());
}

TEST_CASE("ApplyVolumeRequest adds once and removes both halves", "[subresources][volumes]") {
  Json spec = Json::object();
  Json add = {{"addVolumeOptions",
               {{"name", "v"},
                {"disk", {{"disk", {{"bus", "scsi"}}}}},
                {"volumeSource", {{"persistentVolumeClaim", {{"claimName", "c"}}}}}}}};
  ApplyVolumeRequest(spec, add);
  ApplyVolumeRequest(spec, add);
  REQUIRE(spec["volumes"].size() == 1);
  CHECK(spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == "c");
  REQUIRE(spec["domain"]["devices"]["disks"].size() == 1);
  CHECK(spec["domain"]["devices"]["disks"][0]["name"] == "v");
  CHECK(IsHotplugVolume(Json{{"persistentVolumeClaim", {{"hotpluggable", true}}}}));
  CHECK_FALSE(IsHotplugVolume(spec["volumes"][0]));
  ApplyVolumeRequest(spec, {{"removeVolumeOptions", {{"name", "v"}}}});
  CHECK(spec["volumes"].empty());
  CHECK(spec["domain"]["devices"]["disks"].empty());
}

}  // namespace
}  // namespace edgevirt::api::subresources

// ---------------------------------------------------------------------------------------------
// console, vnc, vnc/screenshot, portforward

namespace edgevirt::api::subresources {
namespace {

TEST_CASE("streams: 404, 400 not running, 409 paused port-forward, bad ports",
          "[subresources][ws]") {
  Env env;
  auto status = [&](const std::string& path) {
    auto r = env.Upgrade(kSr + path);
    REQUIRE(r);
    INFO(path << " " << r->body);
    if (r->websocket) r->websocket->Close();
    return r->websocket ? 101 : r->status;
  };
  auto message = [&](const std::string& path) {
    auto r = env.Upgrade(kSr + path);
    REQUIRE(r);
    return Json::parse(r->body, nullptr, false).value("message", "");
  };

  CHECK(status("virtualmachineinstances/nope/console") == 404);
  CHECK(message("virtualmachineinstances/nope/console") ==
        "virtualmachineinstance.kubevirt.io \"nope\" not found");
  CHECK(status("virtualmachineinstances/nope/vnc") == 404);
  CHECK(status("virtualmachineinstances/nope/portforward/22") == 404);
  CHECK(status("virtualmachines/nope/portforward/22") == 404);
  CHECK(message("virtualmachines/nope/portforward/22") ==
        "virtualmachine.kubevirt.io \"nope\" not found");

  env.CreateVmi("pending", "Pending");
  // virtctl console retries while it gets 400.
  CHECK(status("virtualmachineinstances/pending/console") == 400);
  CHECK(message("virtualmachineinstances/pending/console") ==
        "Unable to connect to VM because phase is Pending instead of Running");
  CHECK(status("virtualmachineinstances/pending/vnc") == 400);
  CHECK(status("virtualmachineinstances/pending/portforward/22") == 400);
  env.CreateVm("onlyvm", "Halted");
  CHECK(status("virtualmachines/onlyvm/portforward/22") == 404);  // the VM has no VMI

  env.CreateVmi("paused", "Running", Json::array({{{"type", "Paused"}, {"status", "True"}}}));
  CHECK(status("virtualmachineinstances/paused/portforward/22") == 409);
  CHECK(message("virtualmachineinstances/paused/portforward/22") ==
        "Operation cannot be fulfilled on virtualmachineinstance.kubevirt.io \"paused\": VMI is "
        "paused");
  CHECK(status("virtualmachineinstances/paused/console") == 101);  // console works when paused

  env.CreateVmi("vm1", "Running");
  for (std::string bad : {"0", "65536", "-1", "ssh", "", "22x"}) {
    CHECK(status("virtualmachineinstances/vm1/portforward/" + bad) == 400);
  }
  CHECK(status("virtualmachineinstances/vm1/portforward/22/sctp") == 400);
  CHECK_FALSE(env.Upgrade(kSr + "virtualmachineinstances/vm1/portforward/22/tcp/x"));
  CHECK_FALSE(env.Upgrade(kSr + "virtualmachineinstances/vm1/vnc/other"));
  CHECK_FALSE(env.Upgrade(kSr + "virtualmachineinstances/vm1/console/x"));
  CHECK(env.runtime().calls().size() == 1);  // only the paused VMI's console was opened
}

TEST_CASE("streams: OpenStream gets the kind, port and protocol; its errors map to codes",
          "[subresources][ws]") {
  Env env;
  env.CreateVm("vm1", "Always");
  env.CreateVmi("vm1", "Running");

  auto open = [&](const std::string& path) {
    auto r = env.Upgrade(path);
    REQUIRE(r);
    REQUIRE(r->websocket);
    CHECK(r->websocket_options.subprotocol == "plain.kubevirt.io");
    auto opts = r->websocket_options;
    r->websocket->Close();
    return opts;
  };
  const auto console = open(kSr + "virtualmachineinstances/vm1/console");
  CHECK(console.read_timeout.count() == 0);
  CHECK(console.send_queue_bytes == 64 * 1024);  // a console queues little (back-pressure)
  CHECK(open(kSr + "virtualmachineinstances/vm1/vnc").send_queue_bytes ==
        WebSocketOptions{}.send_queue_bytes);
  const auto pf = open(kSr + "virtualmachineinstances/vm1/portforward/22");
  CHECK(pf.read_timeout == std::chrono::seconds(60));
  CHECK(pf.send_queue_bytes == WebSocketOptions{}.send_queue_bytes);
  open(kSr + "virtualmachines/vm1/portforward/8080/udp");
  open(
      "/apis/subresources.kubevirt.io/v1alpha3/namespaces/default/virtualmachineinstances/vm1/"
      "portforward/65535/tcp");
  CHECK(env.runtime().calls() ==
        std::vector<std::string>{"console:0::vm1", "vnc:0::vm1", "portforward:22:tcp:vm1",
                                 "portforward:8080:udp:vm1", "portforward:65535:tcp:vm1"});

  // A plain GET does not open (and so does not take the console from a connected client).
  auto plain = env.Sub("GET", kSr + "virtualmachineinstances/vm1/console");
  REQUIRE(plain);
  CHECK(plain->status == 400);
  CHECK(env.Sub("PUT", kSr + "virtualmachineinstances/vm1/console")->status == 405);
  CHECK(env.runtime().calls().size() == 5);

  struct Case {
    Code code;
    int status;
  };
  for (auto [code, want] :
       {Case{Code::kUnavailable, 400}, Case{Code::kNotFound, 404}, Case{Code::kConflict, 409},
        Case{Code::kInternal, 500}, Case{Code::kUnsupported, 500}}) {
    env.runtime().fail = MakeError(code, "device says no");
    auto r = env.Upgrade(kSr + "virtualmachineinstances/vm1/console");
    REQUIRE(r);
    CHECK_FALSE(r->websocket);
    CHECK(r->status == want);
    Json j = Json::parse(r->body);
    CHECK(j["kind"] == "Status");
    CHECK(j["code"] == want);
  }
}

TEST_CASE("vnc/screenshot answers image/png", "[subresources][ws]") {
  Env env;
  env.CreateVmi("vm1", "Running");
  auto r = env.Raw("GET", kSr + "virtualmachineinstances/vm1/vnc/screenshot", "");
  REQUIRE(r);
  CHECK(r->status == 200);
  CHECK(r->body.substr(1, 3) == "PNG");
  CHECK(r->headers ==
        std::vector<std::pair<std::string, std::string>>{{"Content-Type", "image/png"}});
  env.runtime().fail = MakeError(Code::kUnavailable, "no display");
  CHECK(env.Raw("GET", kSr + "virtualmachineinstances/vm1/vnc/screenshot", "")->status == 400);
  CHECK(env.Raw("GET", kSr + "virtualmachineinstances/nope/vnc/screenshot", "")->status == 404);
}

TEST_CASE("streams over the real HTTP server with a WebSocket client", "[subresources][ws]") {
  Env env;
  env.CreateVmi("vm1", "Running");
  env.CreateVmi("paused", "Running", Json::array({{{"type", "Paused"}, {"status", "True"}}}));
  ServerOptions o;
  o.listen.push_back(*ListenAddress::Parse("http://127.0.0.1:0"));
  auto server = HttpServer::Start(o, [&](const HttpRequest& r) -> HttpResponse {
    auto answer = env.sub().Serve(r);
    return answer ? std::move(*answer) : HttpResponse::StatusError(404, "NotFound", "no");
  });
  REQUIRE(server);
  const std::string addr = (*server)->BoundAddresses().front();

  edgevirt::testing::WebSocketClient console;
  REQUIRE(console.Connect(addr, kSr + "virtualmachineinstances/vm1/console"));
  CHECK(console.subprotocol() == "plain.kubevirt.io");
  REQUIRE(console.SendBinary("uname\r"));
  CHECK(console.ReadUntil("uname\r") == "uname\r");  // the fake device echoes

  edgevirt::testing::WebSocketClient pf;
  CHECK_FALSE(pf.Connect(addr, kSr + "virtualmachineinstances/paused/portforward/22"));
  CHECK(pf.status() == 409);
  auto j = nlohmann::json::parse(pf.body());
  CHECK(j["reason"] == "Conflict");
  CHECK(j["code"] == 409);

  edgevirt::testing::WebSocketClient missing;
  CHECK_FALSE(missing.Connect(addr, kSr + "virtualmachineinstances/nope/vnc"));
  CHECK(missing.status() == 404);
}

}  // namespace
}  // namespace edgevirt::api::subresources
