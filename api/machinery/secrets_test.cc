// core/v1 Secret through the machinery: what `kubectl create secret generic` and
// `kubectl get secret` send and expect, and kube-apiserver's decoding and validation answers.
#include "api/machinery/secrets.h"

#include "api/machinery/machinery.h"
#include "api/machinery/protobuf.h"
#include "api/machinery/testing.h"
#include "tests/support/catch.h"

namespace edgevirt::api::machinery {
namespace {

using testing::Env;

const std::string kSecrets = "/api/v1/namespaces/default/secrets";

std::string SecretJson(const std::string& name, const std::string& rest) {
  return R"({"apiVersion":"v1","kind":"Secret","metadata":{"name":")" + name + "\"}" +
         (rest.empty() ? "" : "," + rest) + "}";
}

TEST_CASE("base64 as Go's StdEncoding", "[secrets]") {
  CHECK(Base64Encode("") == "");
  CHECK(Base64Encode("a") == "YQ==");
  CHECK(Base64Encode("ab") == "YWI=");
  CHECK(Base64Encode("abc") == "YWJj");
  CHECK(*Base64Decode("YWJj") == "abc");
  CHECK(*Base64Decode("YWI=") == "ab");
  CHECK(*Base64Decode("YQ==") == "a");
  CHECK(*Base64Decode("YW\nJj\r\n") == "abc");
  CHECK(*Base64Decode("") == "");
  CHECK(Base64Decode("!!!!").error().message == "illegal base64 data at input byte 0");
  CHECK(Base64Decode("YWJ").error().message == "illegal base64 data at input byte 0");
  CHECK(Base64Decode("YWJjY").error().message == "illegal base64 data at input byte 4");
  CHECK(Base64Decode("YQ=").error().message == "illegal base64 data at input byte 3");
  CHECK(Base64Decode("YQ==YQ==").error().message == "illegal base64 data at input byte 4");
  CHECK(Base64Decode("Y===").error().message == "illegal base64 data at input byte 1");
}

TEST_CASE("secrets: discovery, kubectl create secret generic, get, table", "[secrets]") {
  Env env;
  auto core = env.Call("GET", "/api/v1");
  REQUIRE(core.status == 200);
  Json secrets;
  for (const auto& r : core.json["resources"]) {
    if (r["name"] == "secrets") secrets = r;
  }
  REQUIRE(secrets.is_object());
  CHECK(secrets["kind"] == "Secret");
  CHECK(secrets["namespaced"] == true);
  CHECK_FALSE(secrets.contains("shortNames"));

  // OpenAPI: kubectl's server-side field validation looks for the path and the schema.
  auto doc = env.Call("GET", "/openapi/v3/api/v1");
  REQUIRE(doc.status == 200);
  CHECK(doc.json["paths"].contains("/api/v1/namespaces/{namespace}/secrets"));
  CHECK(doc.json["components"]["schemas"]["io.k8s.api.core.v1.Secret"]
                ["x-kubernetes-group-version-kind"][0]["kind"] == "Secret");
  CHECK(doc.json["components"]["schemas"].contains("io.k8s.api.core.v1.Event"));

  // kubectl create secret generic x --from-literal=a=b
  auto created = env.Call("POST", kSecrets + "?fieldManager=kubectl-create&fieldValidation=Strict",
                          R"({"kind":"Secret","apiVersion":"v1","metadata":{"name":"x",)"
                          R"("creationTimestamp":null},"data":{"a":"Yg=="},"type":"Opaque"})");
  INFO(created.body);
  REQUIRE(created.status == 201);
  CHECK(created.json["data"]["a"] == "Yg==");
  CHECK(created.json["type"] == "Opaque");

  // stringData is merged (and wins), never stored; type defaults to Opaque.
  auto merged = env.Call("POST", kSecrets,
                         SecretJson("y", R"("data":{"a":"eA==","b":"eQ=="},)"
                                         R"("stringData":{"a":"hello"})"));
  INFO(merged.body);
  REQUIRE(merged.status == 201);
  CHECK(merged.json["data"] == Json{{"a", "aGVsbG8="}, {"b", "eQ=="}});
  CHECK_FALSE(merged.json.contains("stringData"));
  CHECK(merged.json["type"] == "Opaque");
  CHECK(env.Call("GET", kSecrets + "/y").json["data"]["a"] == "aGVsbG8=");

  // kubectl get secret: NAME TYPE DATA AGE.
  auto table = env.Call("GET", kSecrets, "", "",
                        {{"accept", "application/json;as=Table;v=v1;g=meta.k8s.io"}});
  REQUIRE(table.status == 200);
  std::vector<std::string> cols;
  for (const auto& c : table.json["columnDefinitions"]) cols.push_back(c["name"]);
  CHECK(cols == std::vector<std::string>{"Name", "Type", "Data", "Age"});
  CHECK(table.json["columnDefinitions"][0]["format"] == "name");
  REQUIRE(table.json["rows"].size() == 2);
  CHECK(table.json["rows"][0]["cells"][0] == "x");
  CHECK(table.json["rows"][0]["cells"][1] == "Opaque");
  CHECK(table.json["rows"][1]["cells"][2] == "2");
  CHECK(table.json["rows"][1]["cells"][3].is_string());

  // The "type" field selector (kubectl get secret --field-selector type=Opaque).
  CHECK(env.Call("GET", kSecrets + "?fieldSelector=type%3DOpaque").json["items"].size() == 2);
  CHECK(env.Call("GET", kSecrets + "?fieldSelector=type%3Dother").json["items"].empty());
}

TEST_CASE("secrets: decoding and validation errors", "[secrets]") {
  Env env;
  // Invalid base64: the apiserver's decoder refuses the body (400), as for any type error.
  auto b64 = env.Call("POST", kSecrets, SecretJson("s", R"("data":{"a":"b"})"));
  CHECK(b64.status == 400);
  CHECK(b64.json["reason"] == "BadRequest");
  CHECK(b64.json["message"] ==
        "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at input "
        "byte 0");
  auto typed = env.Call("POST", kSecrets, SecretJson("s", R"("data":{"a":5})"));
  CHECK(typed.status == 400);

  // Keys must be config keys: 422 with field data[<key>].
  auto key = env.Call("POST", kSecrets, SecretJson("s", R"("stringData":{"a b":"x"})"));
  REQUIRE(key.status == 422);
  CHECK(key.json["details"]["kind"] == "Secret");
  CHECK(key.json["details"]["causes"][0]["field"] == "data[a b]");
  CHECK(key.json["message"] ==
        "Secret \"s\" is invalid: data[a b]: Invalid value: \"a b\": a valid config key must "
        "consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  "
        "or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')");
  CHECK(env.Call("POST", kSecrets, SecretJson("s", R"("stringData":{"..x":"x"})")).status == 422);

  // kubernetes.io/dockerconfigjson needs .dockerconfigjson holding JSON.
  auto missing =
      env.Call("POST", kSecrets, SecretJson("d", R"("type":"kubernetes.io/dockerconfigjson")"));
  REQUIRE(missing.status == 422);
  CHECK(missing.json["details"]["causes"][0]["field"] == "data[.dockerconfigjson]");
  CHECK(missing.json["details"]["causes"][0]["reason"] == "FieldValueRequired");
  auto bad_json = env.Call("POST", kSecrets,
                           SecretJson("d", R"("type":"kubernetes.io/dockerconfigjson",)"
                                           R"("stringData":{".dockerconfigjson":"{nope"})"));
  REQUIRE(bad_json.status == 422);
  CHECK(bad_json.json["details"]["causes"][0]["field"] == "data[.dockerconfigjson]");
  CHECK(bad_json.json["message"].get<std::string>().find("<secret contents redacted>") !=
        std::string::npos);
  CHECK(env.Call("POST", kSecrets,
                 SecretJson("d", R"("type":"kubernetes.io/dockerconfigjson",)"
                                 R"("stringData":{".dockerconfigjson":"{\"auths\":{}}"})"))
            .status == 201);

  // Unknown fields under Strict.
  auto strict =
      env.Call("POST", kSecrets + "?fieldValidation=Strict", SecretJson("u", R"("spec":{})"));
  CHECK(strict.status == 400);
  CHECK(strict.json["message"] ==
        "Secret in version \"v1\" cannot be handled as a Secret: strict decoding error: unknown "
        "field \"spec\"");
}

TEST_CASE("secrets: updates, type and immutable", "[secrets]") {
  Env env;
  REQUIRE(env.Call("POST", kSecrets, SecretJson("m", R"("data":{"a":"eA=="})")).status == 201);
  // A mutable secret changes freely (merge patch with stringData too).
  auto patched = env.Call("PATCH", kSecrets + "/m", R"({"stringData":{"b":"y"}})",
                          "application/merge-patch+json");
  INFO(patched.body);
  REQUIRE(patched.status == 200);
  CHECK(patched.json["data"] == Json{{"a", "eA=="}, {"b", "eQ=="}});
  CHECK_FALSE(patched.json.contains("stringData"));
  // type is immutable.
  auto type =
      env.Call("PATCH", kSecrets + "/m", R"({"type":"other"})", "application/merge-patch+json");
  CHECK(type.status == 422);
  CHECK(type.json["details"]["causes"][0]["field"] == "type");

  REQUIRE(
      env.Call("PATCH", kSecrets + "/m", R"({"immutable":true})", "application/merge-patch+json")
          .status == 200);
  auto data = env.Call("PATCH", kSecrets + "/m", R"({"data":{"a":"eg=="}})",
                       "application/merge-patch+json");
  REQUIRE(data.status == 422);
  CHECK(data.json["message"] ==
        "Secret \"m\" is invalid: data: Forbidden: field is immutable when `immutable` is set");
  auto string_data = env.Call("PATCH", kSecrets + "/m", R"({"stringData":{"c":"z"}})",
                              "application/merge-patch+json");
  CHECK(string_data.status == 422);
  auto unset =
      env.Call("PATCH", kSecrets + "/m", R"({"immutable":false})", "application/merge-patch+json");
  CHECK(unset.status == 422);
  CHECK(unset.json["details"]["causes"][0]["field"] == "immutable");
  // Metadata still changes.
  CHECK(env.Call("PATCH", kSecrets + "/m", R"({"metadata":{"labels":{"l":"v"}}})",
                 "application/merge-patch+json")
            .status == 200);
}

// Protobuf wire-format builders, for the bodies kubectl's typed clients send.
std::string Varint(uint64_t v) {
  std::string out;
  do {
    uint8_t b = v & 0x7f;
    v >>= 7;
    out.push_back(static_cast<char>(v ? (b | 0x80) : b));
  } while (v);
  return out;
}
std::string Bytes(uint32_t field, const std::string& data) {
  return Varint(uint64_t(field) << 3 | 2) + Varint(data.size()) + data;
}
std::string Bool(uint32_t field, bool v) { return Varint(uint64_t(field) << 3) + Varint(v); }
std::string Entry(uint32_t field, const std::string& k, const std::string& v) {
  return Bytes(field, Bytes(1, k) + Bytes(2, v));
}
std::string Envelope(const std::string& api_version, const std::string& kind,
                     const std::string& raw) {
  return std::string("k8s\0", 4) + Bytes(1, Bytes(1, api_version) + Bytes(2, kind)) +
         Bytes(2, raw) + Bytes(3, "") + Bytes(4, "");
}

TEST_CASE("secrets: the protobuf body of kubectl create secret", "[secrets]") {
  // metadata{name, namespace, labels}, data{a: "\x00\xffb"}, stringData{s: "t"}, type,
  // immutable, and an unknown field (skipped, as protobuf decoders do).
  const std::string meta = Bytes(1, "pb") + Bytes(3, "default") + Entry(11, "app", "x") +
                           Bytes(8, Varint(8) + Varint(5));  // creationTimestamp{seconds: 5}
  const std::string secret = Bytes(1, meta) +
                             Entry(2, "a",
                                   std::string("\0\xff"
                                               "b",
                                               3)) +
                             Entry(4, "s", "t") + Bytes(3, "Opaque") + Bool(5, false) +
                             Bytes(99, "future");
  auto decoded = ParseProtobufBody(Envelope("v1", "Secret", secret));
  REQUIRE(decoded);
  CHECK((*decoded)["kind"] == "Secret");
  CHECK((*decoded)["metadata"]["name"] == "pb");
  CHECK((*decoded)["metadata"]["labels"]["app"] == "x");
  CHECK((*decoded)["data"]["a"] == "AP9i");
  CHECK((*decoded)["stringData"]["s"] == "t");
  CHECK((*decoded)["immutable"] == false);

  Env env;
  auto r = env.Call("POST", kSecrets, Envelope("v1", "Secret", secret),
                    "application/vnd.kubernetes.protobuf");
  INFO(r.body);
  REQUIRE(r.status == 201);
  CHECK(r.json["data"]["a"] == "AP9i");
  CHECK(r.json["data"]["s"] == "dA==");  // stringData merged into data
  CHECK(env.Call("GET", kSecrets + "/pb").status == 200);

  // Another kind in protobuf: 415 as before; bytes that are not protobuf: 400.
  r = env.Call("POST", kSecrets, Envelope("v1", "ConfigMap", Bytes(1, Bytes(1, "cm"))),
               "application/vnd.kubernetes.protobuf");
  CHECK(r.status == 415);
  r = env.Call("POST", kSecrets, std::string("k8s\0\x0a\xff", 6),
               "application/vnd.kubernetes.protobuf");
  CHECK(r.status == 400);
  r = env.Call("POST", kSecrets, "{}", "application/vnd.kubernetes.protobuf");
  CHECK(r.status == 400);
}

TEST_CASE("secrets: protobuf decoding survives arbitrary bytes", "[secrets]") {
  // Mutations of a valid body and random bytes behind the envelope prefix: every input either
  // decodes or fails with an error, nothing reads out of bounds (the ASan pass runs this too).
  const std::string valid =
      Envelope("v1", "Secret",
               Bytes(1, Bytes(1, "pb") + Entry(11, "a", "b")) + Entry(2, "k", "v") + Bool(5, true));
  REQUIRE(ParseProtobufBody(valid));
  uint64_t state = 0x9e3779b97f4a7c15ull;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  int decoded = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string body = valid;
    if (i % 2 == 0) {
      for (int n = 0; n < 1 + i % 4; ++n) body[4 + next() % (body.size() - 4)] = char(next());
      if (i % 6 == 0) body.resize(4 + next() % (body.size() - 4));
    } else {
      body.resize(4 + next() % 64);
      for (size_t j = 4; j < body.size(); ++j) body[j] = char(next());
    }
    auto r = ParseProtobufBody(body);
    if (r) ++decoded;
  }
  CHECK(decoded > 0);
}

}  // namespace
}  // namespace edgevirt::api::machinery
