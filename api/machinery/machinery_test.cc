// Unit tests of api/machinery through its HTTP handler (Machinery::Serve) on a real store in a
// temp dir: discovery, OpenAPI, CRUD, optimistic concurrency, status, patches, server-side
// apply, deletion with finalizers and propagation, dry run, Tables, events, Status bodies.
#include <thread>

#include "api/machinery/codec.h"
#include "api/machinery/machinery.h"
#include "api/machinery/meta.h"
#include "api/machinery/testing.h"
#include "tests/support/catch.h"

namespace edgevirt::api::machinery {
namespace {

using namespace std::chrono_literals;
using testing::Env;
using testing::WidgetJson;

const std::string kWidgets = "/apis/example.io/v1/namespaces/default/widgets";
const std::string kGadgets = "/apis/example.io/v1/namespaces/default/gadgets";

Json Create(Env& env, const std::string& name, const std::string& extra_spec = "",
            const std::string& extra_meta = "") {
  auto r = env.Call("POST", kWidgets, WidgetJson(name, extra_spec, extra_meta));
  INFO(r.body);
  REQUIRE(r.status == 201);
  return r.json;
}

std::string Rv(const Json& o) { return o["metadata"]["resourceVersion"].get<std::string>(); }

TEST_CASE("discovery documents", "[discovery]") {
  Env env;
  auto apis = env.Call("GET", "/apis");
  REQUIRE(apis.status == 200);
  CHECK(apis.json["kind"] == "APIGroupList");
  bool example = false, subresources = false;
  for (const auto& g : apis.json["groups"]) {
    if (g["name"] == "example.io") {
      example = true;
      CHECK(g["preferredVersion"]["groupVersion"] == "example.io/v1");
    }
    if (g["name"] == "subresources.kubevirt.io") subresources = true;
  }
  CHECK(example);
  CHECK(subresources);

  auto group = env.Call("GET", "/apis/example.io");
  CHECK(group.json["kind"] == "APIGroup");
  CHECK(group.json["versions"][0]["version"] == "v1");

  auto list = env.Call("GET", "/apis/example.io/v1");
  REQUIRE(list.status == 200);
  CHECK(list.json["kind"] == "APIResourceList");
  CHECK(list.json["groupVersion"] == "example.io/v1");
  const Json& res = list.json["resources"];
  REQUIRE(res.size() == 3);  // widgets, widgets/status, gadgets
  CHECK(res[0]["name"] == "widgets");
  CHECK(res[0]["singularName"] == "widget");
  CHECK(res[0]["namespaced"] == true);
  CHECK(res[0]["kind"] == "Widget");
  CHECK(res[0]["shortNames"] == Json::array({"wd"}));
  CHECK(res[0]["categories"] == Json::array({"all"}));
  CHECK(res[1]["name"] == "widgets/status");
  CHECK(res[1]["verbs"] == Json::array({"get", "patch", "update"}));
  CHECK(res[2]["name"] == "gadgets");

  auto core = env.Call("GET", "/api");
  CHECK(core.json["kind"] == "APIVersions");
  CHECK(core.json["versions"] == Json::array({"v1"}));
  auto core_v1 = env.Call("GET", "/api/v1");
  CHECK(core_v1.json["resources"][0]["name"] == "events");
  CHECK(core_v1.json["resources"][0]["shortNames"] == Json::array({"ev"}));

  auto version = env.Call("GET", "/version");
  CHECK(version.json["major"] == "1");
  CHECK(version.json["minor"] == "32");

  auto sr = env.Call("GET", "/apis/subresources.kubevirt.io");
  CHECK(sr.json["preferredVersion"]["groupVersion"] == "subresources.kubevirt.io/v1");
  auto sr_list = env.Call("GET", "/apis/subresources.kubevirt.io/v1");
  bool vnc = false;
  for (const auto& r : sr_list.json["resources"]) {
    if (r["name"] == "virtualmachineinstances/vnc") vnc = true;
  }
  CHECK(vnc);
  auto kv = env.Call("GET", "/apis/subresources.kubevirt.io/v1/version");
  CHECK(kv.json["gitVersion"] == "v1.0.0");
  // virt-api's own routes are somebody else's.
  CHECK(env.Call("PUT",
                 "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachines/x/start")
            .status == -1);
  CHECK(env.Call("POST", "/apis").status == 405);
  // Unknown group and resource: the apiserver's 404.
  auto missing = env.Call("GET", "/apis/nope.io/v1/namespaces/default/things");
  CHECK(missing.status == 404);
  CHECK(missing.body ==
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
        R"("message":"the server could not find the requested resource","reason":"NotFound",)"
        R"("details":{},"code":404})");
  CHECK(env.Call("GET", "/healthz").status == -1);  // not ours
}

TEST_CASE("discovery: configured KubeVirt version", "[discovery]") {
  MachineryOptions o;
  o.discovery.kubevirt_version = "v1.9.2";
  Env env(o);
  CHECK(env.Call("GET", "/apis/subresources.kubevirt.io/v1/version").json["gitVersion"] ==
        "v1.9.2");
}

TEST_CASE("openapi v3: index and PATCH operations kubectl checks", "[openapi]") {
  Env env;
  auto index = env.Call("GET", "/openapi/v3");
  REQUIRE(index.status == 200);
  std::string url = index.json["paths"]["apis/example.io/v1"]["serverRelativeURL"];
  CHECK(url.rfind("/openapi/v3/apis/example.io/v1?hash=", 0) == 0);
  CHECK(index.json["paths"].contains("api/v1"));

  auto doc = env.Call("GET", url);
  REQUIRE(doc.status == 200);
  const Json& paths = doc.json["paths"];
  const Json& item = paths["/apis/example.io/v1/namespaces/{namespace}/widgets/{name}"];
  REQUIRE(item.contains("patch"));
  const Json& patch = item["patch"];
  CHECK(patch["x-kubernetes-group-version-kind"] ==
        Json({{"group", "example.io"}, {"version", "v1"}, {"kind", "Widget"}}));
  bool field_validation = false;
  for (const auto& p : patch["parameters"]) {
    if (p["name"] == "fieldValidation") field_validation = true;
  }
  CHECK(field_validation);
  const Json& content = patch["requestBody"]["content"];
  CHECK(content.contains("application/json-patch+json"));
  CHECK(content.contains("application/merge-patch+json"));
  CHECK(content.contains("application/apply-patch+yaml"));
  CHECK_FALSE(content.contains("application/strategic-merge-patch+json"));
  for (const char* op : {"get", "put", "delete"}) CHECK(item.contains(op));
  CHECK(paths["/apis/example.io/v1/namespaces/{namespace}/widgets"].contains("post"));
  CHECK(
      paths["/apis/example.io/v1/namespaces/{namespace}/widgets/{name}/status"].contains("patch"));
  CHECK(paths.contains("/apis/example.io/v1/widgets"));
  // Every PATCH op of the kind carries the parameter (kubectl stops at the first it finds).
  for (const auto& [p, ops] : paths.items()) {
    if (!ops.contains("patch")) continue;
    bool has = false;
    for (const auto& prm : ops["patch"]["parameters"])
      has = has || prm["name"] == "fieldValidation";
    CHECK(has);
  }
  CHECK(doc.json["components"]["schemas"].contains("io.example.v1.Widget"));
  CHECK(doc.json["components"]["schemas"].contains("io.k8s.apimachinery.pkg.apis.meta.v1.Patch"));
  auto core = env.Call("GET", "/openapi/v3/api/v1");
  CHECK(core.json["paths"]["/api/v1/namespaces/{namespace}/events/{name}"]["patch"]
                 ["x-kubernetes-group-version-kind"]["kind"] == "Event");
  CHECK(env.Call("GET", "/openapi/v2").status == 404);
}

TEST_CASE("create, get, generateName, defaults and server metadata", "[crud]") {
  Env env;
  Json w = Create(env, "w1");
  CHECK(w["metadata"]["name"] == "w1");
  CHECK(w["metadata"]["namespace"] == "default");
  CHECK(w["metadata"]["generation"] == 1);
  CHECK(w["metadata"]["uid"].get<std::string>().size() == 36);
  CHECK(w["metadata"]["creationTimestamp"].get<std::string>().size() == 20);
  CHECK(w["spec"]["color"] == "blue");  // defaulted by admission
  CHECK(w["metadata"]["managedFields"][0]["manager"] == "unknown");
  CHECK(w["metadata"]["managedFields"][0]["operation"] == "Update");

  auto got = env.Call("GET", kWidgets + "/w1");
  REQUIRE(got.status == 200);
  CHECK(got.json == w);

  auto again = env.Call("POST", kWidgets, WidgetJson("w1"));
  CHECK(again.status == 409);
  CHECK(again.body ==
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
        R"("message":"widgets.example.io \"w1\" already exists","reason":"AlreadyExists",)"
        R"("details":{"name":"w1","group":"example.io","kind":"widgets"},"code":409})");

  auto missing = env.Call("GET", kWidgets + "/nope");
  CHECK(missing.status == 404);
  CHECK(missing.body ==
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
        R"("message":"widgets.example.io \"nope\" not found","reason":"NotFound",)"
        R"("details":{"name":"nope","group":"example.io","kind":"widgets"},"code":404})");

  auto gen = env.Call("POST", kWidgets,
                      R"({"apiVersion":"example.io/v1","kind":"Widget",)"
                      R"("metadata":{"generateName":"web-"},"spec":{}})");
  REQUIRE(gen.status == 201);
  std::string name = gen.json["metadata"]["name"];
  CHECK(name.size() == 9);
  CHECK(name.rfind("web-", 0) == 0);

  // Namespace from the URL; a different one in the body is refused.
  auto other = env.Call("POST", kWidgets, WidgetJson("w2", "", "\"namespace\":\"other\""));
  CHECK(other.status == 400);
  CHECK(other.json["message"] ==
        "the namespace of the provided object does not match the namespace sent on the request");
  // A resourceVersion on create is the apiserver's 500.
  auto rv = env.Call("POST", kWidgets, WidgetJson("w3", "", "\"resourceVersion\":\"5\""));
  CHECK(rv.status == 500);
  CHECK(rv.json["message"] == "resourceVersion should not be set on objects to be created");
  // YAML bodies.
  auto yaml = env.Call("POST", kWidgets,
                       "apiVersion: example.io/v1\nkind: Widget\nmetadata:\n  name: y1\n"
                       "spec:\n  size: 3\n  color: \"007\"\n",
                       "application/yaml");
  REQUIRE(yaml.status == 201);
  CHECK(yaml.json["spec"]["size"] == 3);
  CHECK(yaml.json["spec"]["color"] == "007");
  // Unknown content type.
  auto xml = env.Call("POST", kWidgets, "<widget/>", "application/xml");
  CHECK(xml.status == 415);
  CHECK(xml.json["message"] ==
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json, application/yaml");
  CHECK(env.Call("POST", kWidgets, WidgetJson("w9"), "").status == 415);
  // Malformed JSON.
  CHECK(env.Call("POST", kWidgets, "{\"apiVersion\":").status == 400);
  // Wrong kind / apiVersion.
  auto kind = env.Call("POST", kWidgets,
                       R"({"apiVersion":"example.io/v1","kind":"Gadget","metadata":{"name":"g"}})");
  CHECK(kind.status == 400);
  auto nokind = env.Call("POST", kWidgets, R"({"apiVersion":"example.io/v1","metadata":{}})");
  CHECK(nokind.status == 400);
  CHECK(nokind.json["message"].get<std::string>().rfind("Object 'Kind' is missing in", 0) == 0);
  // POST to the all-namespaces path.
  CHECK(env.Call("POST", "/apis/example.io/v1/widgets", WidgetJson("z")).status == 405);
}

TEST_CASE("metadata validation", "[crud][validation]") {
  Env env;
  auto bad = env.Call("POST", kWidgets, WidgetJson("Bad_Name"));
  REQUIRE(bad.status == 422);
  CHECK(bad.json["reason"] == "Invalid");
  CHECK(bad.json["message"] ==
        "Widget.example.io \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": "
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
        "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
        "regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')");
  CHECK(bad.json["details"]["kind"] == "Widget");
  CHECK(bad.json["details"]["group"] == "example.io");
  CHECK(bad.json["details"]["causes"][0]["field"] == "metadata.name");
  CHECK(bad.json["details"]["causes"][0]["reason"] == "FieldValueInvalid");
  CHECK(bad.json["details"]["causes"][0]["message"].get<std::string>().rfind(
            "Invalid value: \"Bad_Name\": a lowercase", 0) == 0);

  auto noname = env.Call("POST", kWidgets,
                         R"({"apiVersion":"example.io/v1","kind":"Widget","metadata":{},)"
                         R"("spec":{}})");
  CHECK(noname.status == 422);
  CHECK(noname.json["message"] ==
        "Widget.example.io \"\" is invalid: metadata.name: Required value: name or generateName "
        "is required");

  auto labels = env.Call("POST", kWidgets,
                         WidgetJson("l1", "", R"("labels":{"bad key":"x","ok":"bad value!"})"));
  CHECK(labels.status == 422);
  CHECK(labels.json["details"]["causes"].size() == 2);
  std::string msg = labels.json["message"];
  CHECK(msg.rfind("Widget.example.io \"l1\" is invalid: [metadata.labels: Invalid value: \"bad "
                  "key\": name part must consist of",
                  0) == 0);

  std::string big(300 * 1024, 'x');
  auto ann =
      env.Call("POST", kWidgets, WidgetJson("a1", "", "\"annotations\":{\"k\":\"" + big + "\"}"));
  CHECK(ann.status == 422);
  CHECK(ann.json["details"]["causes"][0]["reason"] == "FieldValueTooLong");

  // Schema error and metadata error together: one Invalid with both causes.
  auto both = env.Call("POST", kWidgets,
                       R"({"apiVersion":"example.io/v1","kind":"Widget","metadata":{"name":"X"}})");
  CHECK(both.status == 422);
  CHECK(both.json["details"]["causes"].size() == 2);

  // Webhook-style denial.
  Json nb = Json::parse(WidgetJson("n1"));
  nb["spec"]["size"] = -1;
  auto neg = env.Call("POST", kWidgets, Dump(nb));
  REQUIRE(neg.status == 422);
  CHECK(neg.body ==
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
        R"("message":"admission webhook \"widget-validator.example.io\" denied the request: )"
        R"(spec.size must not be negative","reason":"Invalid","details":{"causes":[{"reason":)"
        R"("FieldValueInvalid","message":"spec.size must not be negative","field":"spec.size"}]},)"
        R"("code":422})");
}

TEST_CASE("fieldValidation Strict, Warn and Ignore", "[crud][validation]") {
  Env env;
  std::string body = WidgetJson("f1", "\"foo\":1,\"bar\":2");
  auto strict = env.Call("POST", kWidgets + "?fieldValidation=Strict", body);
  CHECK(strict.status == 400);
  CHECK(strict.json["reason"] == "BadRequest");
  CHECK(strict.json["message"] ==
        "Widget in version \"v1\" cannot be handled as a Widget: strict decoding error: unknown "
        "field \"spec.bar\", unknown field \"spec.foo\"");
  auto meta =
      env.Call("POST", kWidgets + "?fieldValidation=Strict", WidgetJson("f0", "", "\"nope\":1"));
  CHECK(meta.status == 400);
  CHECK(meta.json["message"].get<std::string>().find("unknown field \"metadata.nope\"") !=
        std::string::npos);

  auto warn = env.Call("POST", kWidgets + "?fieldValidation=Warn", body);
  REQUIRE(warn.status == 201);
  auto warnings = warn.Headers("Warning");
  REQUIRE(warnings.size() == 2);
  CHECK(warnings[0] == "299 - \"unknown field \\\"spec.bar\\\"\"");
  CHECK_FALSE(warn.json["spec"].contains("foo"));

  auto def = env.Call("POST", kWidgets, WidgetJson("f2", "\"foo\":1"));  // default: Warn
  CHECK(def.status == 201);
  CHECK(def.Headers("Warning").size() == 1);

  auto ignore =
      env.Call("POST", kWidgets + "?fieldValidation=Ignore", WidgetJson("f3", "\"foo\":1"));
  CHECK(ignore.status == 201);
  CHECK(ignore.Headers("Warning").empty());
  CHECK(env.Call("POST", kWidgets + "?fieldValidation=Loose", WidgetJson("f4")).status == 400);

  // Admission warnings travel as Warning headers too.
  auto red = env.Call("POST", kWidgets, WidgetJson("r1", "\"color\":\"red\""));
  CHECK(red.Headers("Warning") == std::vector<std::string>{"299 - \"red widgets fade\""});
}

TEST_CASE("list: namespaces, label and field selectors, limit and continue", "[list]") {
  Env env;
  Create(env, "a", "", R"("labels":{"app":"web","tier":"front"})");
  Create(env, "b", "\"color\":\"green\"", R"("labels":{"app":"db"})");
  Create(env, "c", "", R"("labels":{"app":"web"})");
  REQUIRE(
      env.Call("POST", "/apis/example.io/v1/namespaces/other/widgets", WidgetJson("d")).status ==
      201);

  auto names = [](const Env::Reply& r) {
    std::vector<std::string> out;
    for (const auto& i : r.json["items"]) out.push_back(i["metadata"]["name"]);
    return out;
  };
  auto all = env.Call("GET", kWidgets);
  REQUIRE(all.status == 200);
  CHECK(all.json["kind"] == "WidgetList");
  CHECK(all.json["apiVersion"] == "example.io/v1");
  CHECK(!all.json["metadata"]["resourceVersion"].get<std::string>().empty());
  CHECK(all.json["items"][0]["kind"] == "Widget");
  CHECK(names(all) == std::vector<std::string>{"a", "b", "c"});
  CHECK(names(env.Call("GET", "/apis/example.io/v1/widgets")) ==
        std::vector<std::string>{"a", "b", "c", "d"});

  auto sel = [&](const std::string& q) { return names(env.Call("GET", kWidgets + "?" + q)); };
  CHECK(sel("labelSelector=app%3Dweb") == std::vector<std::string>{"a", "c"});
  CHECK(sel("labelSelector=app%3D%3Dweb") == std::vector<std::string>{"a", "c"});
  CHECK(sel("labelSelector=app!%3Dweb") == std::vector<std::string>{"b"});
  CHECK(sel("labelSelector=app%20in%20(db,x)") == std::vector<std::string>{"b"});
  CHECK(sel("labelSelector=app%20notin%20(db)") == std::vector<std::string>{"a", "c"});
  CHECK(sel("labelSelector=tier") == std::vector<std::string>{"a"});
  CHECK(sel("labelSelector=!tier") == std::vector<std::string>{"b", "c"});
  CHECK(sel("labelSelector=app%3Dweb,!tier") == std::vector<std::string>{"c"});
  CHECK(sel("fieldSelector=metadata.name%3Db") == std::vector<std::string>{"b"});
  CHECK(sel("fieldSelector=metadata.name!%3Db") == std::vector<std::string>{"a", "c"});
  CHECK(sel("fieldSelector=metadata.namespace%3Ddefault") ==
        std::vector<std::string>{"a", "b", "c"});
  CHECK(sel("fieldSelector=spec.color%3Dgreen") == std::vector<std::string>{"b"});
  auto bad_field = env.Call("GET", kWidgets + "?fieldSelector=spec.size%3D1");
  CHECK(bad_field.status == 400);
  CHECK(bad_field.json["message"] == "field label not supported: spec.size");
  CHECK(env.Call("GET", kWidgets + "?labelSelector=app%20in%20").status == 400);
  CHECK(env.Call("GET", kWidgets + "?labelSelector=Bad%20Key%3Dx").status == 400);

  // Pages of two with an opaque continue token; every page reports the first page's RV.
  auto p1 = env.Call("GET", kWidgets + "?limit=2");
  CHECK(names(p1) == std::vector<std::string>{"a", "b"});
  std::string token = p1.json["metadata"]["continue"];
  CHECK(!token.empty());
  Create(env, "e");  // a change between pages
  auto p2 = env.Call("GET", kWidgets + "?limit=2&continue=" + token);
  CHECK(names(p2) == std::vector<std::string>{"c", "e"});
  CHECK(p2.json["metadata"]["resourceVersion"] == p1.json["metadata"]["resourceVersion"]);
  CHECK_FALSE(p2.json["metadata"].contains("continue"));
  auto p3 = env.Call("GET", kWidgets + "?limit=1&labelSelector=app%3Dweb");
  CHECK(names(p3) == std::vector<std::string>{"a"});
  auto p4 = env.Call("GET", kWidgets + "?limit=1&labelSelector=app%3Dweb&continue=" +
                                std::string(p3.json["metadata"]["continue"]));
  CHECK(names(p4) == std::vector<std::string>{"c"});
  CHECK_FALSE(p4.json["metadata"].contains("continue"));
  CHECK(env.Call("GET", kWidgets + "?continue=garbage!").status == 400);
}

TEST_CASE("update: optimistic concurrency and the apiserver's messages", "[update]") {
  Env env;
  Json w = Create(env, "u1");
  Json body = w;
  body["spec"]["size"] = 2;
  body["metadata"].erase("resourceVersion");
  auto norv = env.Call("PUT", kWidgets + "/u1", Dump(body));
  REQUIRE(norv.status == 422);
  CHECK(norv.body ==
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
        R"("message":"widgets.example.io \"u1\" is invalid: metadata.resourceVersion: Invalid )"
        R"(value: 0x0: must be specified for an update","reason":"Invalid","details":{"name":)"
        R"("u1","group":"example.io","kind":"widgets","causes":[{"reason":"FieldValueInvalid",)"
        R"("message":"Invalid value: 0x0: must be specified for an update","field":)"
        R"("metadata.resourceVersion"}]},"code":422})");

  body["metadata"]["resourceVersion"] = Rv(w);
  auto ok = env.Call("PUT", kWidgets + "/u1", Dump(body));
  REQUIRE(ok.status == 200);
  CHECK(ok.json["spec"]["size"] == 2);
  CHECK(ok.json["metadata"]["generation"] == 2);
  CHECK(Rv(ok.json) != Rv(w));

  auto stale = env.Call("PUT", kWidgets + "/u1", Dump(body));
  REQUIRE(stale.status == 409);
  CHECK(stale.body ==
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
        R"("message":"Operation cannot be fulfilled on widgets.example.io \"u1\": the object has )"
        R"(been modified; please apply your changes to the latest version and try again",)"
        R"("reason":"Conflict","details":{"name":"u1","group":"example.io","kind":"widgets"},)"
        R"("code":409})");

  Json renamed = ok.json;
  renamed["metadata"]["name"] = "other";
  auto mismatch = env.Call("PUT", kWidgets + "/u1", Dump(renamed));
  CHECK(mismatch.status == 400);
  CHECK(mismatch.json["message"] ==
        "the name of the object (other) does not match the name on the URL (u1)");
  CHECK(env.Call("PUT", kWidgets + "/ghost", WidgetJson("ghost")).status == 404);

  // An unchanged PUT writes nothing.
  auto same = env.Call("PUT", kWidgets + "/u1", Dump(ok.json));
  REQUIRE(same.status == 200);
  CHECK(Rv(same.json) == Rv(ok.json));

  // Labels only: no generation bump.
  Json labels = ok.json;
  labels["metadata"]["labels"] = {{"x", "y"}};
  auto l = env.Call("PUT", kWidgets + "/u1", Dump(labels));
  REQUIRE(l.status == 200);
  CHECK(l.json["metadata"]["generation"] == 2);
  // uid and creationTimestamp are immutable.
  Json uid = l.json;
  uid["metadata"]["uid"] = "00000000-0000-0000-0000-000000000000";
  CHECK(env.Call("PUT", kWidgets + "/u1", Dump(uid)).status == 422);
}

TEST_CASE("status subresource and generation", "[status]") {
  Env env;
  Json w = Create(env, "s1");
  // The main resource ignores status.
  Json main = w;
  main["status"] = {{"phase", "Running"}};
  auto put = env.Call("PUT", kWidgets + "/s1", Dump(main));
  REQUIRE(put.status == 200);
  CHECK_FALSE(put.json.contains("status"));
  CHECK(put.json["metadata"]["generation"] == 1);
  CHECK(Rv(put.json) == Rv(w));  // nothing changed at all
  // Create drops status too.
  auto created = env.Call("POST", kWidgets,
                          R"({"apiVersion":"example.io/v1","kind":"Widget","metadata":)"
                          R"({"name":"s2"},"spec":{},"status":{"phase":"x"}})");
  CHECK_FALSE(created.json.contains("status"));

  // /status changes status only, and never the generation.
  Json st = w;
  st["status"] = {{"phase", "Running"}};
  st["spec"]["size"] = 99;
  st["metadata"]["labels"] = {{"ignored", "yes"}};
  auto sput = env.Call("PUT", kWidgets + "/s1/status", Dump(st));
  REQUIRE(sput.status == 200);
  CHECK(sput.json["status"]["phase"] == "Running");
  CHECK(sput.json["spec"]["size"] == 1);
  CHECK_FALSE(sput.json["metadata"].contains("labels"));
  CHECK(sput.json["metadata"]["generation"] == 1);
  bool status_manager = false;
  for (const auto& m : sput.json["metadata"]["managedFields"]) {
    if (m.value("subresource", "") == "status") status_manager = true;
  }
  CHECK(status_manager);

  auto sget = env.Call("GET", kWidgets + "/s1/status");
  CHECK(sget.json["status"]["phase"] == "Running");
  auto spatch = env.Call("PATCH", kWidgets + "/s1/status", R"({"status":{"phase":"Done"}})",
                         "application/merge-patch+json");
  REQUIRE(spatch.status == 200);
  CHECK(spatch.json["status"]["phase"] == "Done");
  CHECK(spatch.json["metadata"]["generation"] == 1);

  // A spec change bumps it; the status stays.
  auto mpatch = env.Call("PATCH", kWidgets + "/s1", R"({"spec":{"size":5},"status":null})",
                         "application/merge-patch+json");
  REQUIRE(mpatch.status == 200);
  CHECK(mpatch.json["metadata"]["generation"] == 2);
  CHECK(mpatch.json["status"]["phase"] == "Done");

  // Without a status subresource every non-metadata change counts, status included.
  auto g = env.Call("POST", kGadgets,
                    R"({"apiVersion":"example.io/v1","kind":"Gadget","metadata":{"name":"g1"}})");
  REQUIRE(g.status == 201);
  auto gp = env.Call("PATCH", kGadgets + "/g1", R"({"status":{"on":true}})",
                     "application/merge-patch+json");
  CHECK(gp.json["status"]["on"] == true);
  CHECK(gp.json["metadata"]["generation"] == 2);
  CHECK(env.Call("GET", kGadgets + "/g1/status").status == 404);
}

TEST_CASE("merge and JSON patch", "[patch]") {
  Env env;
  Json w = Create(env, "p1", "\"items\":[1,2]", R"("labels":{"a":"1","b":"2"})");
  auto merge = env.Call("PATCH", kWidgets + "/p1",
                        R"({"metadata":{"labels":{"a":null,"c":"3"}},"spec":{"size":4}})",
                        "application/merge-patch+json");
  REQUIRE(merge.status == 200);
  CHECK(merge.json["metadata"]["labels"] == Json({{"b", "2"}, {"c", "3"}}));
  CHECK(merge.json["spec"]["size"] == 4);
  CHECK(merge.json["spec"]["items"] == Json::array({1, 2}));

  auto json = env.Call("PATCH", kWidgets + "/p1",
                       R"([{"op":"test","path":"/spec/size","value":4},)"
                       R"({"op":"replace","path":"/spec/size","value":6},)"
                       R"({"op":"add","path":"/spec/items/-","value":3},)"
                       R"({"op":"remove","path":"/metadata/labels/b"}])",
                       "application/json-patch+json");
  REQUIRE(json.status == 200);
  CHECK(json.json["spec"]["size"] == 6);
  CHECK(json.json["spec"]["items"] == Json::array({1, 2, 3}));
  CHECK(json.json["metadata"]["labels"] == Json({{"c", "3"}}));

  auto failed = env.Call("PATCH", kWidgets + "/p1",
                         R"([{"op":"test","path":"/spec/size","value":4},)"
                         R"({"op":"replace","path":"/spec/size","value":7}])",
                         "application/json-patch+json");
  REQUIRE(failed.status == 422);
  CHECK(failed.body ==
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
        R"("message":"the server rejected our request due to an error in our request",)"
        R"("reason":"Invalid","details":{},"code":422})");
  CHECK(env.Call("GET", kWidgets + "/p1").json["spec"]["size"] == 6);
  CHECK(env.Call("PATCH", kWidgets + "/p1", R"({"op":"add"})", "application/json-patch+json")
            .status == 400);
  CHECK(env.Call("PATCH", kWidgets + "/ghost", "{}", "application/merge-patch+json").status == 404);

  // A resourceVersion in the patch is a precondition.
  auto stale = env.Call("PATCH", kWidgets + "/p1",
                        R"({"metadata":{"resourceVersion":")" + Rv(w) + R"("},"spec":{"size":1}})",
                        "application/merge-patch+json");
  CHECK(stale.status == 409);
  // Strategic merge patch is refused as for custom resources.
  auto smp = env.Call("PATCH", kWidgets + "/p1", R"({"spec":{"size":1}})",
                      "application/strategic-merge-patch+json");
  REQUIRE(smp.status == 415);
  CHECK(smp.body ==
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
        R"("message":"the body of the request was in an unknown format - accepted media types )"
        R"(include: application/json-patch+json, application/merge-patch+json, )"
        R"(application/apply-patch+yaml","reason":"UnsupportedMediaType","code":415})");
  CHECK(env.Call("PATCH", kWidgets + "/p1", "{}", "text/plain").status == 415);
  // force belongs to apply.
  CHECK(
      env.Call("PATCH", kWidgets + "/p1?force=true", "{}", "application/merge-patch+json").status ==
      422);
  // Patching the name is refused.
  CHECK(env.Call("PATCH", kWidgets + "/p1", R"({"metadata":{"name":"zz"}})",
                 "application/merge-patch+json")
            .status == 422);
}

TEST_CASE("server-side apply: create, ownership, conflicts, force", "[apply]") {
  Env env;
  const std::string cfg1 =
      "apiVersion: example.io/v1\nkind: Widget\nmetadata:\n  name: ssa\n  labels:\n    app: x\n"
      "spec:\n  size: 3\n";
  auto missing_manager = env.Call("PATCH", kWidgets + "/ssa", cfg1, "application/apply-patch+yaml");
  CHECK(missing_manager.status == 422);
  CHECK(missing_manager.json["message"] ==
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required "
        "for apply patch");

  auto created =
      env.Call("PATCH", kWidgets + "/ssa?fieldManager=alice", cfg1, "application/apply-patch+yaml");
  REQUIRE(created.status == 201);
  CHECK(created.json["spec"]["size"] == 3);
  CHECK(created.json["spec"]["color"] == "blue");
  const Json& mf = created.json["metadata"]["managedFields"];
  REQUIRE(mf.size() == 1);
  CHECK(mf[0]["manager"] == "alice");
  CHECK(mf[0]["operation"] == "Apply");
  CHECK(mf[0]["fieldsType"] == "FieldsV1");
  CHECK(mf[0]["fieldsV1"] ==
        Json::parse(R"({"f:metadata":{"f:labels":{"f:app":{}}},"f:spec":{"f:size":{}}})"));

  // Bob changes size through an update: he now owns it.
  auto bob = env.Call("PATCH", kWidgets + "/ssa?fieldManager=bob", R"({"spec":{"size":4}})",
                      "application/merge-patch+json");
  REQUIRE(bob.status == 200);

  // Alice re-applies size 3: conflict with bob.
  auto conflict =
      env.Call("PATCH", kWidgets + "/ssa?fieldManager=alice", cfg1, "application/apply-patch+yaml");
  REQUIRE(conflict.status == 409);
  CHECK(conflict.body ==
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
        R"("message":"Apply failed with 1 conflict: conflict with \"bob\" using example.io/v1: )"
        R"(.spec.size","reason":"Conflict","details":{"causes":[{"reason":)"
        R"("FieldManagerConflict","message":"conflict with \"bob\" using example.io/v1",)"
        R"("field":".spec.size"}]},"code":409})");
  CHECK(env.Call("GET", kWidgets + "/ssa").json["spec"]["size"] == 4);

  // The same value is shared ownership, not a conflict.
  auto shared = env.Call("PATCH", kWidgets + "/ssa?fieldManager=carol",
                         R"({"apiVersion":"example.io/v1","kind":"Widget","metadata":{"name":)"
                         R"("ssa"},"spec":{"size":4}})",
                         "application/apply-patch+yaml");
  REQUIRE(shared.status == 200);

  // Force takes it over.
  auto forced = env.Call("PATCH", kWidgets + "/ssa?fieldManager=alice&force=true", cfg1,
                         "application/apply-patch+yaml");
  REQUIRE(forced.status == 200);
  CHECK(forced.json["spec"]["size"] == 3);
  for (const auto& m : forced.json["metadata"]["managedFields"]) {
    if (m["manager"] == "bob" || m["manager"] == "carol") {
      CHECK_FALSE(m["fieldsV1"].contains("f:spec"));
    }
  }
  // Two conflicting fields, grouped by manager.
  env.Call("PATCH", kWidgets + "/ssa?fieldManager=dave",
           R"({"metadata":{"labels":{"app":"y"}},"spec":{"size":9}})",
           "application/merge-patch+json");
  auto two =
      env.Call("PATCH", kWidgets + "/ssa?fieldManager=alice", cfg1, "application/apply-patch+yaml");
  REQUIRE(two.status == 409);
  CHECK(two.json["message"] ==
        "Apply failed with 2 conflicts: conflicts with \"dave\" using example.io/v1:\n"
        "- .metadata.labels.app\n- .spec.size");
  CHECK(two.json["details"]["causes"].size() == 2);

  // A field alice stops applying goes away when nobody else owns it.
  env.Call("PATCH", kWidgets + "/ssa?fieldManager=alice&force=true",
           "apiVersion: example.io/v1\nkind: Widget\nmetadata:\n  name: ssa\nspec:\n  size: 3\n"
           "  items: [1]\n",
           "application/apply-patch+yaml");
  auto dropped = env.Call("PATCH", kWidgets + "/ssa?fieldManager=alice",
                          "apiVersion: example.io/v1\nkind: Widget\nmetadata:\n  name: ssa\n"
                          "spec:\n  size: 3\n",
                          "application/apply-patch+yaml");
  REQUIRE(dropped.status == 200);
  CHECK_FALSE(dropped.json["spec"].contains("items"));
  CHECK(dropped.json["metadata"]["labels"]["app"] == "y");  // dave's, kept

  // Apply ignores status on the main resource; /status apply sets it.
  auto st = env.Call("PATCH", kWidgets + "/ssa/status?fieldManager=ctl",
                     R"({"apiVersion":"example.io/v1","kind":"Widget","metadata":{"name":"ssa"},)"
                     R"("status":{"phase":"Up"}})",
                     "application/apply-patch+yaml");
  REQUIRE(st.status == 200);
  CHECK(st.json["status"]["phase"] == "Up");
  // No-op apply: nothing written.
  auto again = env.Call("PATCH", kWidgets + "/ssa/status?fieldManager=ctl",
                        R"({"apiVersion":"example.io/v1","kind":"Widget","metadata":)"
                        R"({"name":"ssa"},"status":{"phase":"Up"}})",
                        "application/apply-patch+yaml");
  CHECK(Rv(again.json) == Rv(st.json));
  CHECK(env.Call("PATCH", kWidgets + "/nope/status?fieldManager=x",
                 R"({"apiVersion":"example.io/v1","kind":"Widget","status":{}})",
                 "application/apply-patch+yaml")
            .status == 404);
}

TEST_CASE("managedFields for updates: kubectl's client-side apply then server-side apply",
          "[apply]") {
  Env env;
  auto created =
      env.Call("POST", kWidgets + "?fieldManager=kubectl-client-side-apply", WidgetJson("csa"));
  REQUIRE(created.status == 201);
  const Json& mf = created.json["metadata"]["managedFields"][0];
  CHECK(mf["manager"] == "kubectl-client-side-apply");
  CHECK(mf["operation"] == "Update");
  CHECK(mf["apiVersion"] == "example.io/v1");
  CHECK(mf["fieldsV1"]["f:spec"].contains("f:size"));
  auto ssa = env.Call("PATCH", kWidgets + "/csa?fieldManager=kubectl&force=false",
                      R"({"apiVersion":"example.io/v1","kind":"Widget","metadata":{"name":"csa"},)"
                      R"("spec":{"size":2}})",
                      "application/apply-patch+yaml");
  REQUIRE(ssa.status == 409);
  CHECK(ssa.json["message"] ==
        "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using "
        "example.io/v1: .spec.size");
  // Clearing managedFields with [{}] (what kubectl's migration can do) resets ownership.
  auto reset = env.Call("PATCH", kWidgets + "/csa", R"({"metadata":{"managedFields":[{}]}})",
                        "application/merge-patch+json");
  REQUIRE(reset.status == 200);
  CHECK_FALSE(reset.json["metadata"].contains("managedFields"));
}

TEST_CASE("dry run writes nothing", "[dryrun]") {
  Env env;
  const uint64_t rv0 = env.store().CurrentResourceVersion();
  auto c = env.Call("POST", kWidgets + "?dryRun=All", WidgetJson("d1"));
  REQUIRE(c.status == 201);
  CHECK(c.json["metadata"]["name"] == "d1");
  CHECK_FALSE(c.json["metadata"].contains("resourceVersion"));
  CHECK(c.json["metadata"]["uid"].get<std::string>().size() == 36);
  CHECK(env.Call("GET", kWidgets + "/d1").status == 404);
  CHECK(env.store().CurrentResourceVersion() == rv0);
  CHECK(env.Call("POST", kWidgets + "?dryRun=Some", WidgetJson("d1")).status == 422);

  Json w = Create(env, "d2");
  const uint64_t rv1 = env.store().CurrentResourceVersion();
  Json u = w;
  u["spec"]["size"] = 7;
  auto put = env.Call("PUT", kWidgets + "/d2?dryRun=All", Dump(u));
  REQUIRE(put.status == 200);
  CHECK(put.json["spec"]["size"] == 7);
  CHECK(put.json["metadata"]["generation"] == 2);
  auto patch = env.Call("PATCH", kWidgets + "/d2?dryRun=All", R"({"spec":{"size":8}})",
                        "application/merge-patch+json");
  CHECK(patch.json["spec"]["size"] == 8);
  auto apply = env.Call("PATCH", kWidgets + "/d3?dryRun=All&fieldManager=m", WidgetJson("d3"),
                        "application/apply-patch+yaml");
  CHECK(apply.status == 201);
  auto del = env.Call("DELETE", kWidgets + "/d2?dryRun=All");
  CHECK(del.status == 200);
  auto del_body = env.Call("DELETE", kWidgets + "/d2",
                           R"({"kind":"DeleteOptions","apiVersion":"v1","dryRun":["All"]})");
  CHECK(del_body.status == 200);
  CHECK(env.store().CurrentResourceVersion() == rv1);
  CHECK(env.Call("GET", kWidgets + "/d2").json["spec"]["size"] == 1);
  CHECK(env.Call("GET", kWidgets + "/d3").status == 404);
}

TEST_CASE("delete: finalizers, deletionTimestamp, removal with the last finalizer", "[delete]") {
  Env env;
  Json w = Create(env, "f1", "", R"("finalizers":["example.io/hold","example.io/two"])");
  auto del = env.Call("DELETE", kWidgets + "/f1",
                      R"({"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":)"
                      R"("Background","gracePeriodSeconds":30})");
  REQUIRE(del.status == 200);
  CHECK(del.json["metadata"].contains("deletionTimestamp"));
  CHECK(del.json["metadata"]["deletionGracePeriodSeconds"] == 0);
  CHECK(del.json["metadata"]["generation"] == 2);
  const std::string ts = del.json["metadata"]["deletionTimestamp"];
  // Deleting again changes nothing.
  auto again = env.Call("DELETE", kWidgets + "/f1");
  CHECK(again.status == 200);
  CHECK(again.json["metadata"]["deletionTimestamp"] == ts);
  CHECK(Rv(again.json) == Rv(del.json));
  // No new finalizers while deleting.
  auto add =
      env.Call("PATCH", kWidgets + "/f1",
               R"({"metadata":{"finalizers":["example.io/hold","example.io/two","x.io/new"]}})",
               "application/merge-patch+json");
  CHECK(add.status == 422);
  // Removing one keeps it; removing the last deletes it.
  auto one =
      env.Call("PATCH", kWidgets + "/f1", R"({"metadata":{"finalizers":["example.io/two"]}})",
               "application/merge-patch+json");
  REQUIRE(one.status == 200);
  CHECK(env.Call("GET", kWidgets + "/f1").status == 200);
  auto last = env.Call("PATCH", kWidgets + "/f1", R"({"metadata":{"finalizers":null}})",
                       "application/merge-patch+json");
  REQUIRE(last.status == 200);
  CHECK(env.Call("GET", kWidgets + "/f1").status == 404);

  // Without finalizers: gone at once, the response is the object.
  Json g = Create(env, "plain");
  auto now = env.Call("DELETE", kWidgets + "/plain");
  REQUIRE(now.status == 200);
  CHECK(now.json["metadata"]["name"] == "plain");
  CHECK(env.Call("GET", kWidgets + "/plain").status == 404);
  CHECK(env.Call("DELETE", kWidgets + "/plain").status == 404);

  // Preconditions.
  Json p = Create(env, "pre");
  auto uid = env.Call("DELETE", kWidgets + "/pre", R"({"preconditions":{"uid":"nope"}})");
  CHECK(uid.status == 409);
  CHECK(uid.json["message"] ==
        "Operation cannot be fulfilled on widgets.example.io \"pre\": Precondition failed: UID "
        "in precondition: nope, UID in object meta: " +
            p["metadata"]["uid"].get<std::string>());
  CHECK(env.Call("DELETE", kWidgets + "/pre", R"({"preconditions":{"resourceVersion":"1"}})")
            .status == 409);
  CHECK(env.Call("DELETE", kWidgets + "/pre", R"({"propagationPolicy":"Sometimes"})").status ==
        422);
  CHECK(
      env.Call("DELETE", kWidgets + "/pre",
               R"({"preconditions":{"uid":")" + p["metadata"]["uid"].get<std::string>() + R"("}})")
          .status == 200);
}

Json Owned(Env& env, const std::string& kind_path, const std::string& kind, const std::string& name,
           const Json& owner, bool block) {
  Json body = {{"apiVersion", "example.io/v1"},
               {"kind", kind},
               {"metadata",
                {{"name", name},
                 {"ownerReferences", Json::array({{{"apiVersion", "example.io/v1"},
                                                   {"kind", owner["kind"]},
                                                   {"name", owner["metadata"]["name"]},
                                                   {"uid", owner["metadata"]["uid"]},
                                                   {"blockOwnerDeletion", block}}})}}}};
  if (kind == "Widget") body["spec"] = Json::object();
  auto r = env.Call("POST", kind_path, Dump(body));
  INFO(r.body);
  REQUIRE(r.status == 201);
  return r.json;
}

TEST_CASE("garbage collection: Background, Foreground, Orphan", "[delete][gc]") {
  Env env;
  auto* gc = env.machinery().garbage_collector();
  REQUIRE(gc != nullptr);

  SECTION("background deletes dependents after the owner") {
    Json owner = Create(env, "owner");
    Owned(env, kGadgets, "Gadget", "dep1", owner, false);
    Owned(env, kGadgets, "Gadget", "dep2", owner, true);
    auto del = env.Call("DELETE", kWidgets + "/owner", R"({"propagationPolicy":"Background"})");
    REQUIRE(del.status == 200);
    CHECK(env.Call("GET", kWidgets + "/owner").status == 404);
    REQUIRE(gc->WaitIdle(5s));
    CHECK(env.Call("GET", kGadgets + "/dep1").status == 404);
    CHECK(env.Call("GET", kGadgets + "/dep2").status == 404);
  }
  SECTION("a dependent with another live owner only loses the dangling reference") {
    Json a = Create(env, "a");
    Json b = Create(env, "b");
    Json dep = Owned(env, kGadgets, "Gadget", "shared", a, false);
    Json refs = dep["metadata"]["ownerReferences"];
    refs.push_back({{"apiVersion", "example.io/v1"},
                    {"kind", "Widget"},
                    {"name", "b"},
                    {"uid", b["metadata"]["uid"]}});
    auto p = env.Call("PATCH", kGadgets + "/shared",
                      Dump(Json{{"metadata", {{"ownerReferences", refs}}}}),
                      "application/merge-patch+json");
    REQUIRE(p.status == 200);
    REQUIRE(env.Call("DELETE", kWidgets + "/a").status == 200);
    REQUIRE(gc->WaitIdle(5s));
    auto left = env.Call("GET", kGadgets + "/shared");
    REQUIRE(left.status == 200);
    REQUIRE(left.json["metadata"]["ownerReferences"].size() == 1);
    CHECK(left.json["metadata"]["ownerReferences"][0]["name"] == "b");
  }
  SECTION("foreground keeps the owner until blocking dependents are gone") {
    Json owner = Create(env, "fg");
    Json dep = Owned(env, kWidgets, "Widget", "fg-dep", owner, true);
    // The dependent has a finalizer of its own: the owner must wait for it.
    REQUIRE(env.Call("PATCH", kWidgets + "/fg-dep",
                     R"({"metadata":{"finalizers":["example.io/slow"]}})",
                     "application/merge-patch+json")
                .status == 200);
    auto del = env.Call("DELETE", kWidgets + "/fg", R"({"propagationPolicy":"Foreground"})");
    REQUIRE(del.status == 200);
    CHECK(del.json["metadata"]["finalizers"] == Json::array({"foregroundDeletion"}));
    CHECK(del.json["metadata"].contains("deletionTimestamp"));
    REQUIRE(gc->WaitIdle(5s));
    auto dep_now = env.Call("GET", kWidgets + "/fg-dep");
    REQUIRE(dep_now.status == 200);
    CHECK(dep_now.json["metadata"].contains("deletionTimestamp"));
    CHECK(env.Call("GET", kWidgets + "/fg").status == 200);  // still waiting
    // The dependent's own finalizer goes: it is deleted, then the owner.
    Json left = Json::array();
    for (const auto& f : dep_now.json["metadata"]["finalizers"]) {
      if (f != "example.io/slow") left.push_back(f);
    }
    REQUIRE(env.Call("PATCH", kWidgets + "/fg-dep",
                     Dump(Json{{"metadata", {{"finalizers", left}}}}),
                     "application/merge-patch+json")
                .status == 200);
    for (int i = 0; i < 50 && env.Call("GET", kWidgets + "/fg").status != 404; ++i) {
      REQUIRE(gc->WaitIdle(5s));
      std::this_thread::sleep_for(20ms);
    }
    CHECK(env.Call("GET", kWidgets + "/fg-dep").status == 404);
    CHECK(env.Call("GET", kWidgets + "/fg").status == 404);
  }
  SECTION("foreground without dependents") {
    Create(env, "lonely");
    REQUIRE(
        env.Call("DELETE", kWidgets + "/lonely", R"({"propagationPolicy":"Foreground"})").status ==
        200);
    for (int i = 0; i < 50 && env.Call("GET", kWidgets + "/lonely").status != 404; ++i) {
      REQUIRE(gc->WaitIdle(5s));
    }
    CHECK(env.Call("GET", kWidgets + "/lonely").status == 404);
  }
  SECTION("orphan removes the ownerReference and keeps the dependent") {
    Json owner = Create(env, "orph");
    Owned(env, kGadgets, "Gadget", "kept", owner, true);
    auto del = env.Call("DELETE", kWidgets + "/orph", R"({"propagationPolicy":"Orphan"})");
    REQUIRE(del.status == 200);
    CHECK(del.json["metadata"]["finalizers"] == Json::array({"orphan"}));
    for (int i = 0; i < 50 && env.Call("GET", kWidgets + "/orph").status != 404; ++i) {
      REQUIRE(gc->WaitIdle(5s));
    }
    CHECK(env.Call("GET", kWidgets + "/orph").status == 404);
    auto kept = env.Call("GET", kGadgets + "/kept");
    REQUIRE(kept.status == 200);
    CHECK_FALSE(kept.json["metadata"].contains("ownerReferences"));
    // orphanDependents=false answers 202 while the deletion is pending.
    Json o2 = Create(env, "o2", "", R"("finalizers":["example.io/hold"])");
    CHECK(env.Call("DELETE", kWidgets + "/o2", R"({"orphanDependents":false})").status == 202);
  }
}

TEST_CASE("deletecollection", "[delete]") {
  Env env;
  Create(env, "k1", "", R"("labels":{"del":"yes"})");
  Create(env, "k2", "", R"("labels":{"del":"yes"})");
  Create(env, "k3");
  auto r = env.Call("DELETE", kWidgets + "?labelSelector=del%3Dyes");
  REQUIRE(r.status == 200);
  CHECK(r.json["kind"] == "WidgetList");
  CHECK(r.json["items"].size() == 2);
  auto left = env.Call("GET", kWidgets);
  REQUIRE(left.json["items"].size() == 1);
  CHECK(left.json["items"][0]["metadata"]["name"] == "k3");
}

TEST_CASE("Table output and ages", "[table]") {
  Env env;
  Create(env, "t1", "\"size\":2", R"("labels":{"app":"web"})");
  const std::string accept =
      "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;"
      "g=meta.k8s.io,application/json";
  auto t = env.Call("GET", kWidgets + "?limit=500", "", "", {{"accept", accept}});
  REQUIRE(t.status == 200);
  CHECK(t.Header("Content-Type") == "application/json;as=Table;v=v1;g=meta.k8s.io");
  CHECK(t.json["kind"] == "Table");
  CHECK(t.json["apiVersion"] == "meta.k8s.io/v1");
  CHECK(!t.json["metadata"]["resourceVersion"].get<std::string>().empty());
  const Json& cols = t.json["columnDefinitions"];
  REQUIRE(cols.size() == 5);
  CHECK(cols[0]["name"] == "Name");
  CHECK(cols[0]["format"] == "name");
  CHECK(cols[1]["name"] == "Age");
  CHECK(cols[1]["type"] == "date");
  CHECK(cols[2]["name"] == "Size");
  CHECK(cols[4]["priority"] == 1);
  const Json& row = t.json["rows"][0];
  CHECK(row["cells"][0] == "t1");
  CHECK(row["cells"][1].get<std::string>().back() == 's');  // "0s", "1s"
  CHECK(row["cells"][2] == 2);
  CHECK(row["cells"][3] == "blue");
  CHECK(row["cells"][4].is_null());
  CHECK(row["object"]["kind"] == "PartialObjectMetadata");
  CHECK(row["object"]["apiVersion"] == "meta.k8s.io/v1");
  CHECK(row["object"]["metadata"]["labels"]["app"] == "web");
  CHECK_FALSE(row["object"].contains("spec"));

  auto full = env.Call("GET", kWidgets + "/t1?includeObject=Object", "", "", {{"accept", accept}});
  CHECK(full.json["rows"][0]["object"]["spec"]["size"] == 2);
  auto beta = env.Call("GET", kWidgets + "/t1", "", "",
                       {{"accept", "application/json;as=Table;v=v1beta1;g=meta.k8s.io"}});
  CHECK(beta.json["apiVersion"] == "meta.k8s.io/v1beta1");
  auto plain = env.Call("GET", kWidgets + "/t1", "", "",
                        {{"accept", "application/vnd.kubernetes.protobuf,application/json"}});
  CHECK(plain.json["kind"] == "Widget");
  auto partial = env.Call("GET", kWidgets, "", "",
                          {{"accept",
                            "application/json;as=PartialObjectMetadataList;v=v1;g="
                            "meta.k8s.io"}});
  CHECK(partial.json["kind"] == "PartialObjectMetadataList");
  CHECK(partial.json["items"][0]["metadata"]["name"] == "t1");

  // Human durations, as the apiserver renders them.
  using std::chrono::hours;
  using std::chrono::minutes;
  using std::chrono::seconds;
  CHECK(HumanDuration(seconds(0)) == "0s");
  CHECK(HumanDuration(seconds(-1)) == "0s");
  CHECK(HumanDuration(seconds(-5)) == "<invalid>");
  CHECK(HumanDuration(seconds(119)) == "119s");
  CHECK(HumanDuration(seconds(150)) == "2m30s");
  CHECK(HumanDuration(minutes(5)) == "5m");
  CHECK(HumanDuration(minutes(90)) == "90m");
  CHECK(HumanDuration(hours(3) + minutes(5)) == "3h5m");
  CHECK(HumanDuration(hours(10)) == "10h");
  CHECK(HumanDuration(hours(51)) == "2d3h");
  CHECK(HumanDuration(hours(24 * 30)) == "30d");
  CHECK(HumanDuration(hours(24 * 365 * 3 + 24 * 5)) == "3y5d");
  CHECK(HumanAge("", WallClock::now()) == "<unknown>");
  CHECK(HumanAge("garbage", WallClock::now()) == "<invalid>");
}

TEST_CASE("events: served under /api/v1, field selectors, recorder aggregation", "[events]") {
  Env env;
  Json w = Create(env, "ev1");
  auto recorder = env.machinery().NewEventRecorder({"widget-controller", "host1"});
  ObjectReference ref = ReferenceTo(w);
  recorder->Record(ref, EventType::kNormal, "Started", "widget started");
  recorder->Record(ref, EventType::kNormal, "Started", "widget started");
  recorder->Record(ref, EventType::kWarning, "Broken", "widget broke");
  recorder->Flush();

  const std::string events = "/api/v1/namespaces/default/events";
  const std::string selector =
      "?fieldSelector=involvedObject.name%3Dev1,involvedObject.namespace%3Ddefault,"
      "involvedObject.kind%3DWidget,involvedObject.uid%3D" +
      w["metadata"]["uid"].get<std::string>();
  auto list = env.Call("GET", events + selector);
  REQUIRE(list.status == 200);
  CHECK(list.json["kind"] == "EventList");
  REQUIRE(list.json["items"].size() == 2);
  Json started, broken;
  for (const auto& e : list.json["items"]) {
    if (e["reason"] == "Started") started = e;
    if (e["reason"] == "Broken") broken = e;
  }
  CHECK(started["count"] == 2);
  CHECK(started["type"] == "Normal");
  CHECK(started["source"]["component"] == "widget-controller");
  CHECK(started["involvedObject"]["kind"] == "Widget");
  CHECK(started["metadata"]["name"].get<std::string>().rfind("ev1.", 0) == 0);
  CHECK(broken["type"] == "Warning");
  CHECK(
      env.Call("GET", events + "?fieldSelector=involvedObject.name%3Dother").json["items"].empty());
  CHECK(env.Call("GET", events + "?fieldSelector=type%3DWarning").json["items"].size() == 1);
  CHECK(env.Call("GET", events + "?fieldSelector=bogus%3D1").status == 400);

  auto table =
      env.Call("GET", events, "", "", {{"accept", "application/json;as=Table;v=v1;g=meta.k8s.io"}});
  REQUIRE(table.status == 200);
  CHECK(table.json["columnDefinitions"][0]["name"] == "Last Seen");
  CHECK(table.json["columnDefinitions"][9]["name"] == "Name");
  bool aggregated = false;
  for (const auto& row : table.json["rows"]) {
    std::string last_seen = row["cells"][0];
    if (last_seen.find("(x2 over") != std::string::npos) aggregated = true;
    CHECK(row["cells"][3] == "widget/ev1");
  }
  CHECK(aggregated);

  // Create through the API too (kubectl create -f event.yaml).
  auto created =
      env.Call("POST", events,
               R"({"apiVersion":"v1","kind":"Event","metadata":{"name":"manual"},)"
               R"("involvedObject":{"kind":"Widget","name":"ev1","namespace":"default"},)"
               R"("reason":"Manual","message":"hi","type":"Normal"})");
  REQUIRE(created.status == 201);
  auto wrong_ns = env.Call("POST", events,
                           R"({"apiVersion":"v1","kind":"Event","metadata":{"name":"x"},)"
                           R"("involvedObject":{"kind":"Widget","name":"ev1","namespace":"o"}})");
  CHECK(wrong_ns.status == 422);
}

TEST_CASE("events expire after the TTL", "[events][gc]") {
  MachineryOptions o;
  o.gc.event_ttl = 1s;
  o.gc.sweep_interval = 200ms;
  Env env(o);
  Json w = Create(env, "old");
  auto recorder = env.machinery().NewEventRecorder({"c"});
  recorder->Record(ReferenceTo(w), EventType::kNormal, "R", "m");
  recorder->Flush();
  const std::string events = "/api/v1/namespaces/default/events";
  REQUIRE(env.Call("GET", events).json["items"].size() == 1);
  bool gone = false;
  for (int i = 0; i < 60 && !gone; ++i) {
    std::this_thread::sleep_for(100ms);
    gone = env.Call("GET", events).json["items"].empty();
  }
  CHECK(gone);
}

TEST_CASE("registry: in-process Mutate for controllers", "[registry]") {
  Env env;
  Create(env, "m1");
  WriteOptions wo;
  wo.admit = false;
  wo.field_manager = "controller";
  auto r = env.registry().Mutate(
      env.widget(), "default", "m1", true,
      [](Json& o) {
        o["status"] = {{"phase", "Ready"}};
        return Ok();
      },
      wo);
  REQUIRE(r.ok());
  auto got = env.Call("GET", kWidgets + "/m1");
  CHECK(got.json["status"]["phase"] == "Ready");
  CHECK(got.json["metadata"]["generation"] == 1);
  auto missing = env.registry().Mutate(
      env.widget(), "default", "nope", false, [](Json&) { return Ok(); }, wo);
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().code == 404);
  CHECK(missing.error().ToError().code == Code::kNotFound);
}

TEST_CASE("error mapping covers every code", "[errors]") {
  ResourceType rt = testing::WidgetType();
  CHECK(FromError({Code::kNotFound, "x"}, &rt, "n").code == 404);
  CHECK(FromError({Code::kAlreadyExists, "x"}, &rt, "n").reason == "AlreadyExists");
  CHECK(FromError({Code::kConflict, "x"}, &rt, "n").reason == "Conflict");
  CHECK(FromError({Code::kGone, "x"}, &rt, "n").code == 410);
  CHECK(FromError({Code::kGone, "x"}, &rt, "n").reason == "Expired");
  CHECK(FromError({Code::kInvalid, "x"}, &rt, "n").code == 400);
  CHECK(FromError({Code::kTooLarge, "x"}, &rt, "n").code == 413);
  CHECK(FromError({Code::kUnsupported, "x"}, &rt, "n").code == 405);
  CHECK(FromError({Code::kPermission, "x"}, &rt, "n").code == 403);
  CHECK(FromError({Code::kUnavailable, "x"}, &rt, "n").code == 503);
  CHECK(FromError({Code::kTimeout, "x"}, &rt, "n").code == 504);
  ApiError internal = FromError({Code::kInternal, "boom"}, &rt, "n");
  CHECK(internal.ToJson() ==
        R"({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",)"
        R"("message":"Internal error occurred: boom","reason":"InternalError","details":)"
        R"({"causes":[{"message":"boom"}]},"code":500})");
}

TEST_CASE("storage layout renders without parsing", "[codec]") {
  Json o = Json::parse(R"({"kind":"Widget","apiVersion":"example.io/v1","spec":{"a":1},)"
                       R"("metadata":{"name":"x","uid":"u","resourceVersion":"9","labels":{}}})");
  std::string data = EncodeForStore(o);
  CHECK(data ==
        R"({"apiVersion":"example.io/v1","kind":"Widget","metadata":{"labels":{},"name":"x"},)"
        R"("spec":{"a":1}})");
  store::Record r;
  r.data = data;
  r.uid = "abc";
  r.resource_version = 42;
  r.generation = 3;
  r.creation_timestamp = "2025-01-02T03:04:05Z";
  std::string rendered = Render(r);
  CHECK(rendered ==
        R"({"apiVersion":"example.io/v1","kind":"Widget","metadata":{"creationTimestamp":)"
        R"("2025-01-02T03:04:05Z","generation":3,"resourceVersion":"42","uid":"abc","labels":{},)"
        R"("name":"x"},"spec":{"a":1}})");
  CHECK(Json::parse(rendered) == *DecodeRecord(r));
  r.data = R"({"kind":"Widget","metadata":{}})";  // not our layout: parsed instead
  CHECK(Json::parse(Render(r))["metadata"]["uid"] == "abc");
}

}  // namespace
}  // namespace edgevirt::api::machinery
