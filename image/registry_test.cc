// Unit tests of the registry client's pure parts and of the content store (hermetic: no
// network, temp dirs only).
#include <fcntl.h>
#include <sys/stat.h>

#include <ctime>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "image/auth.h"
#include "image/content.h"
#include "image/index.h"
#include "image/manifest.h"
#include "image/reference.h"
#include "image/registry.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::image {
namespace {

using nlohmann::json;
const std::string kHexA(64, 'a');
const std::string kDigA = "sha256:" + kHexA;
const std::string kDigB = "sha256:" + std::string(64, 'b');
const std::string kDigC = "sha256:" + std::string(64, 'c');

TEST_CASE("ParseReference: Docker Hub defaults") {
  auto r = ParseReference("busybox");
  REQUIRE(r);
  CHECK(r->registry == "registry-1.docker.io");
  CHECK(r->repository == "library/busybox");
  CHECK(r->tag == "latest");
  CHECK(r->tag_defaulted);
  CHECK(r->String() == "registry-1.docker.io/library/busybox:latest");
  auto d = ParseReference("docker.io/kubevirt/fedora:39");
  REQUIRE(d);
  CHECK(d->registry == "registry-1.docker.io");
  CHECK(d->repository == "kubevirt/fedora");
  CHECK(d->tag == "39");
  CHECK_FALSE(d->tag_defaulted);
  CHECK(ParseReference("index.docker.io/alpine")->repository == "library/alpine");
}

TEST_CASE("ParseReference: registries with ports, tags and digests") {
  auto r = ParseReference("127.0.0.1:5000/kv/disk:v1@" + kDigA);
  REQUIRE(r);
  CHECK(r->registry == "127.0.0.1:5000");
  CHECK(r->repository == "kv/disk");
  CHECK(r->tag == "v1");
  CHECK(r->digest == kDigA);
  CHECK(r->String() == "127.0.0.1:5000/kv/disk:v1@" + kDigA);
  auto d = ParseReference("localhost/a/b/c@" + kDigA);
  REQUIRE(d);
  CHECK(d->registry == "localhost");
  CHECK(d->repository == "a/b/c");
  CHECK(d->tag.empty());
  CHECK_FALSE(d->tag_defaulted);
  CHECK(d->String() == "localhost/a/b/c@" + kDigA);
  auto q = ParseReference("quay.io/containerdisks/fedora:latest");
  REQUIRE(q);
  CHECK(q->registry == "quay.io");
  // "foo/bar" without a dot or port: a Docker Hub repository, not a registry.
  CHECK(ParseReference("foo/bar")->registry == "registry-1.docker.io");
  CHECK(ParseReference("foo/bar")->repository == "foo/bar");
  CHECK(ParseReference("Quay.IO/x")->registry == "quay.io");
}

TEST_CASE("ParseReference: refusals") {
  for (std::string bad : std::vector<std::string>{
           "", "UPPER/case", "a//b", "reg.io/", "x:", "x@sha256:abc",
           "x@sha512:" + std::string(128, 'a'), "x@sha256:" + std::string(64, 'A'), "-x", "x-",
           "a..b", "x:" + std::string(129, 't'), "x:-bad", "host:99999999/x", "a/b c"}) {
    INFO(bad);
    auto r = ParseReference(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Code::kInvalid);
    CHECK(r.error().message.find("invalid reference") != std::string::npos);
  }
  CHECK(ParseReference("a__b/c-d.e_f---g"));
}

TEST_CASE("NormaliseRegistry and IsValidDigest") {
  CHECK(NormaliseRegistry("docker.io") == "registry-1.docker.io");
  CHECK(NormaliseRegistry("Index.Docker.IO") == "registry-1.docker.io");
  CHECK(NormaliseRegistry("127.0.0.1:5000") == "127.0.0.1:5000");
  CHECK(IsValidDigest(kDigA));
  CHECK_FALSE(IsValidDigest("sha256:" + std::string(63, 'a')));
  CHECK_FALSE(IsValidDigest("sha256:../../../../etc/passwd" + std::string(40, 'a')));
  CHECK_FALSE(IsValidDigest("sha384:" + kHexA));
}

TEST_CASE("ParseWwwAuthenticate") {
  auto chs =
      ParseWwwAuthenticate(R"(Bearer realm="http://127.0.0.1:5058/token",service="test-registry",)"
                           R"(scope="repository:kv/disk:pull,push",error="insufficient_scope")");
  REQUIRE(chs.size() == 1);
  CHECK(chs[0].scheme == "bearer");
  CHECK(chs[0].params["realm"] == "http://127.0.0.1:5058/token");
  CHECK(chs[0].params["service"] == "test-registry");
  CHECK(chs[0].params["scope"] == "repository:kv/disk:pull,push");
  CHECK(chs[0].params["error"] == "insufficient_scope");
  auto two = ParseWwwAuthenticate(R"(Basic realm="a \"quoted\" realm", Bearer realm=x,service=y)");
  REQUIRE(two.size() == 2);
  CHECK(two[0].scheme == "basic");
  CHECK(two[0].params["realm"] == "a \"quoted\" realm");
  CHECK(two[1].scheme == "bearer");
  CHECK(two[1].params["realm"] == "x");
  CHECK(two[1].params["service"] == "y");
  CHECK(ParseWwwAuthenticate("").empty());
}

TEST_CASE("ParseContentRange and ParseRetryAfter") {
  ContentRange cr;
  REQUIRE(ParseContentRange("bytes 100-552/553", &cr));
  CHECK(cr.start == 100);
  CHECK(cr.end == 552);
  CHECK(cr.total == 553);
  REQUIRE(ParseContentRange("bytes 0-9/*", &cr));
  CHECK(cr.total == -1);
  for (const char* bad : {"", "bytes", "bytes 5-4/10", "bytes 0-10/10", "items 0-1/2", "bytes -1/2",
                          "bytes 1-/2", "bytes a-b/c", "bytes 0-1"}) {
    INFO(bad);
    CHECK_FALSE(ParseContentRange(bad, &cr));
  }
  CHECK(ParseRetryAfter("3", 0) == 3);
  CHECK(ParseRetryAfter(" 120 ", 0) == 120);
  CHECK(ParseRetryAfter("Thu, 01 Jan 1970 00:01:40 GMT", 40) == 60);
  CHECK(ParseRetryAfter("soon", 0) == -1);
}

// Found by image_parse_fuzz: a reference starting with '/' made ParseReference call front() on
// an empty host component (UB; abort under _GLIBCXX_ASSERTIONS).
TEST_CASE("ParseReference: leading slash and non-ASCII ports (fuzz regressions)") {
  for (std::string bad :
       std::vector<std::string>{"/\x12"
                                "0",
                                "/x", "/", "//a", "a:\xb9/x", "[::1]:\xb9/x", "host:5\xff/x"}) {
    INFO(bad);
    auto r = ParseReference(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Code::kInvalid);
  }
}

// A Content-Range total above INT64_MAX would wrap to a negative ContentRange::total.
TEST_CASE("ParseContentRange: totals beyond int64 are refused (fuzz regression)") {
  ContentRange cr;
  CHECK_FALSE(ParseContentRange("bytes 0-1/9999999999999999999", &cr));
  CHECK_FALSE(ParseContentRange("bytes 0-1/9223372036854775808", &cr));
  REQUIRE(ParseContentRange("bytes 0-1/9223372036854775807", &cr));
  CHECK(cr.total == INT64_MAX);
  CHECK(ParseRetryAfter("\xb9\xb9", 0) == -1);
}

TEST_CASE("ParseDockerConfig") {
  std::string cfg = json{{"auths",
                          {{"https://index.docker.io/v1/", {{"auth", Base64Encode("bob:pw:x")}}},
                           {"127.0.0.1:5000", {{"username", "alice"}, {"password", "secret"}}},
                           {"https://quay.io", {{"identitytoken", "refresh"}}}}}}
                        .dump();
  auto k = ParseDockerConfig(cfg);
  REQUIRE(k);
  CHECK(k->at("registry-1.docker.io") == Credential{"bob", "pw:x", ""});
  CHECK(k->at("127.0.0.1:5000") == Credential{"alice", "secret", ""});
  CHECK(k->at("quay.io").identity_token == "refresh");
  CHECK(ParseDockerConfig("{}")->empty());
  for (std::string bad :
       std::vector<std::string>{"nope", "[]", R"({"auths": 1})", R"({"auths": {"h": {}}})",
                                R"({"auths": {"h": {"auth": "!!!"}}})",
                                R"({"auths": {"h": {"auth": "bm9jb2xvbg=="}}})"}) {
    INFO(bad);
    auto r = ParseDockerConfig(bad);
    REQUIRE_FALSE(r);
    CHECK(r.error().code == Code::kInvalid);
  }
  // extra (imagePullSecrets) wins over the auth file.
  Keychain file = {{"127.0.0.1:5000", {"file", "f", ""}}};
  Keychain extra = {{"https://127.0.0.1:5000", {"secret", "s", ""}}};
  CHECK(FindCredential(extra, file, "127.0.0.1:5000")->username == "secret");
  CHECK(FindCredential({}, file, "127.0.0.1:5000")->username == "file");
  CHECK(FindCredential({}, file, "other:1") == nullptr);
}

std::string ManifestJson(const std::string& media_type, const std::string& layer_type,
                         json extra_layer = json()) {
  json layer = {{"mediaType", layer_type}, {"digest", kDigB}, {"size", 10}};
  if (!extra_layer.is_null()) layer.update(extra_layer);
  json m = {
      {"schemaVersion", 2},
      {"config",
       {{"mediaType", "application/vnd.oci.image.config.v1+json"}, {"digest", kDigA}, {"size", 3}}},
      {"layers", json::array({layer})}};
  if (!media_type.empty()) m["mediaType"] = media_type;
  return m.dump();
}

TEST_CASE("ParseManifest: OCI and Docker schema 2") {
  std::string body =
      ManifestJson(std::string(kOciManifest), "application/vnd.oci.image.layer.v1.tar+gzip");
  auto m = ParseManifest(body, "application/vnd.oci.image.manifest.v1+json; charset=utf-8",
                         Sha256Digest(body));
  REQUIRE(m);
  CHECK(m->digest == Sha256Digest(body));
  CHECK(m->media_type == kOciManifest);
  CHECK(m->config.digest == kDigA);
  REQUIRE(m->layers.size() == 1);
  CHECK(m->layers[0].size == 10);
  CHECK(m->body == body);
  std::string docker = ManifestJson(std::string(kDockerManifest),
                                    "application/vnd.docker.image.rootfs.diff.tar.gzip");
  CHECK(ParseManifest(docker, kDockerManifest, ""));
  // No mediaType in the body (allowed by OCI): the Content-Type decides.
  std::string bare = ManifestJson("", "application/vnd.oci.image.layer.v1.tar+zstd");
  auto b = ParseManifest(bare, "", "");
  REQUIRE(b);
  CHECK(b->media_type == kOciManifest);
  CHECK(ParseManifest(ManifestJson("", "application/vnd.oci.image.layer.v1.tar"), "", ""));
}

TEST_CASE("ParseManifest: refusals") {
  std::string body =
      ManifestJson(std::string(kOciManifest), "application/vnd.oci.image.layer.v1.tar+gzip");
  auto wrong_digest = ParseManifest(body, kOciManifest, kDigC);
  REQUIRE_FALSE(wrong_digest);
  CHECK(wrong_digest.error().message.find("digest mismatch") != std::string::npos);
  auto disagree = ParseManifest(body, kDockerManifest, "");
  REQUIRE_FALSE(disagree);
  CHECK(disagree.error().message.find("disagrees") != std::string::npos);
  std::string schema1 = R"({"schemaVersion":1,"name":"x","tag":"y","fsLayers":[]})";
  auto s1 = ParseManifest(schema1, "application/vnd.docker.distribution.manifest.v1+prettyjws", "");
  REQUIRE_FALSE(s1);
  CHECK(s1.error().message.find("schema 1") != std::string::npos);
  CHECK(ParseManifest(schema1, "", "").error().message.find("schema 1") != std::string::npos);
  auto foreign =
      ParseManifest(ManifestJson(std::string(kDockerManifest),
                                 "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                                 json{{"urls", {"https://example.com/layer"}}}),
                    kDockerManifest, "");
  REQUIRE_FALSE(foreign);
  CHECK(foreign.error().message.find("foreign") != std::string::npos);
  auto urls = ParseManifest(
      ManifestJson(std::string(kOciManifest), "application/vnd.oci.image.layer.v1.tar+gzip",
                   json{{"urls", {"http://169.254.169.254/"}}}),
      kOciManifest, "");
  CHECK_FALSE(urls);
  auto nondist =
      ParseManifest(ManifestJson(std::string(kOciManifest),
                                 "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
                    kOciManifest, "");
  CHECK_FALSE(nondist);
  auto unknown =
      ParseManifest(ManifestJson(std::string(kOciManifest), "text/plain"), kOciManifest, "");
  REQUIRE_FALSE(unknown);
  CHECK(unknown.error().message.find("unsupported layer media type") != std::string::npos);
  auto bad_digest = ParseManifest(
      ManifestJson(std::string(kOciManifest), "application/vnd.oci.image.layer.v1.tar",
                   json{{"digest", "sha256:../../etc"}}),
      kOciManifest, "");
  CHECK_FALSE(bad_digest);
  auto big = ParseManifest(std::string(kMaxManifestBytes + 1, ' '), kOciManifest, "");
  REQUIRE_FALSE(big);
  CHECK(big.error().code == Code::kTooLarge);
  CHECK_FALSE(ParseManifest("not json", kOciManifest, ""));
  CHECK_FALSE(ParseManifest(R"({"schemaVersion":2,"manifests":[]})", kOciIndex, ""));
}

std::string IndexJson() {
  auto entry = [](const std::string& digest, const std::string& arch, const std::string& variant,
                  const std::string& mt = std::string(kOciManifest)) {
    json p = {{"os", "linux"}, {"architecture", arch}};
    if (!variant.empty()) p["variant"] = variant;
    return json{{"mediaType", mt}, {"digest", digest}, {"size", 100}, {"platform", p}};
  };
  json idx = {{"schemaVersion", 2},
              {"mediaType", kOciIndex},
              {"manifests",
               {entry(kDigA, "arm", "v7"), entry(kDigB, "arm64", "v8"), entry(kDigC, "amd64", ""),
                entry("sha256:" + std::string(64, 'd'), "amd64", "", "application/x-unknown"),
                entry("sha256:" + std::string(64, 'e'), "arm64", "")}}};
  return idx.dump();
}

TEST_CASE("ParseIndex and SelectPlatform") {
  auto entries = ParseIndex(IndexJson());
  REQUIRE(entries);
  CHECK(entries->size() == 4);  // the unknown media type is skipped
  CHECK(SelectPlatform(*entries, "linux/amd64")->digest == kDigC);
  CHECK(SelectPlatform(*entries, "linux/arm64")->digest == kDigB);  // first of v8 / none
  CHECK(SelectPlatform(*entries, "linux/arm64/v8")->digest == kDigB);
  CHECK(SelectPlatform(*entries, "linux/arm/v7")->digest == kDigA);
  CHECK(SelectPlatform(*entries, "linux/arm")->digest == kDigA);  // only a v7: fallback
  CHECK(SelectPlatform(*entries, "linux/x86_64")->digest == kDigC);
  auto none = SelectPlatform(*entries, "linux/s390x");
  REQUIRE_FALSE(none);
  CHECK(none.error().code == Code::kNotFound);
  CHECK(none.error().message.find("linux/arm64/v8") != std::string::npos);
  CHECK(SelectPlatform(*entries, "linux").error().code == Code::kInvalid);
  // The kNotFound message of a huge index stays short (it ends up in object status).
  std::vector<Descriptor> many(10000, (*entries)[0]);
  for (auto& d : many) d.architecture = std::string(5000, 'x');
  auto bounded = SelectPlatform(many, "linux/s390x");
  REQUIRE_FALSE(bounded);
  CHECK(bounded.error().message.size() < 2000);
  CHECK(bounded.error().message.find(", ...)") != std::string::npos);
  // Empty = the host's platform.
  auto host = SelectPlatform(*entries, "");
  REQUIRE(host);
  CHECK(host->digest == (HostPlatform() == "linux/arm64" ? kDigB : kDigC));
  CHECK_FALSE(ParseIndex(R"({"schemaVersion":2})"));
  CHECK_FALSE(ParseIndex(R"({"schemaVersion":2,"manifests":[{"mediaType":")" +
                         std::string(kOciManifest) + R"(","digest":"sha256:x","size":1}]})"));
  CHECK(IsIndexMediaType(kDockerList));
  CHECK(IsManifestMediaType(kDockerManifest));
  CHECK_FALSE(IsManifestMediaType(kOciIndex));
}

TEST_CASE("Sha256Digest") {
  CHECK(Sha256Digest("") ==
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

std::filesystem::path WriteFile(const testing::TempDir& dir, const std::string& name,
                                const std::string& text) {
  return dir.Write(name, text);
}

TEST_CASE("ContentStore: Add verifies, places read-only, lists, removes") {
  testing::TempDir dir("ev-content");
  auto index = internal::Index::Open(dir / "index");
  REQUIRE(index);
  ContentStore store(dir / "store", index->get());
  std::string data = "hello blob";
  std::string digest = Sha256Digest(data);
  auto file = WriteFile(dir, "f", data);
  auto wrong_size = store.Add(file, digest, data.size() + 1);
  REQUIRE_FALSE(wrong_size);
  CHECK(wrong_size.error().code == Code::kInvalid);
  auto wrong_digest = store.Add(file, kDigA, data.size());
  REQUIRE_FALSE(wrong_digest);
  CHECK(wrong_digest.error().code == Code::kInvalid);
  CHECK_FALSE(store.Has(kDigA));
  CHECK_FALSE(store.Add(file, "sha256:../../x", data.size()));
  REQUIRE(store.Add(file, digest, data.size()));
  CHECK(store.Has(digest));
  CHECK(std::filesystem::exists(file));
  struct stat st;
  REQUIRE(::stat(store.BlobPath(digest).c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0444);
  auto file2 = WriteFile(dir, "g", "other");
  std::string digest2 = Sha256Digest("other");
  REQUIRE(store.Add(file2, digest2, 5, /*move=*/true));
  CHECK_FALSE(std::filesystem::exists(file2));
  auto list = store.List();
  REQUIRE(list);
  CHECK(list->size() == 2);
  REQUIRE(store.Remove(digest));
  CHECK_FALSE(store.Has(digest));
  CHECK(store.Remove(digest));  // not found is fine
  CHECK(store.BlobPath("sha256:nope").empty());
}

TEST_CASE("ContentStore: ingest checkpoints, resumes after a crash, commits") {
  testing::TempDir dir("ev-content");
  auto index = internal::Index::Open(dir / "index");
  REQUIRE(index);
  ContentStore store(dir / "store", index->get());
  std::string data(300000, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>((i * 7919) % 251);
  std::string digest = Sha256Digest(data);
  {
    auto ingest = store.OpenIngest(digest, data.size());
    REQUIRE(ingest);
    REQUIRE(*ingest);
    REQUIRE((*ingest)->Append(data.data(), 100000));
    REQUIRE((*ingest)->Checkpoint());
    CHECK(*store.CommittedOffset(digest) == 100000);
    // Written but never checkpointed: untrusted after a crash.
    REQUIRE((*ingest)->Append(data.data() + 100000, 50000));
    auto over = (*ingest)->Append(data.data(), data.size());
    REQUIRE_FALSE(over);
    CHECK(over.error().code == Code::kInvalid);
    // A second writer of the same blob waits for the lock; with cancel set it gives up.
    std::atomic<bool> cancel{true};
    auto second = store.OpenIngest(digest, data.size(), &cancel);
    REQUIRE_FALSE(second);
    CHECK(second.error().message == "cancelled");
  }  // "crash": the ingest goes without Commit
  // Garbage after the committed offset is truncated on resume.
  { std::ofstream(store.IngestPath(digest), std::ios::app) << "garbage"; }
  auto ingest = store.OpenIngest(digest, data.size());
  REQUIRE(ingest);
  REQUIRE(*ingest);
  CHECK((*ingest)->offset() == 100000);
  CHECK(std::filesystem::file_size(store.IngestPath(digest)) == 100000);
  REQUIRE((*ingest)->Append(data.data() + 100000, data.size() - 100000));
  REQUIRE((*ingest)->Commit());
  CHECK(store.Has(digest));
  CHECK(*store.CommittedOffset(digest) == 0);
  CHECK_FALSE(std::filesystem::exists(store.IngestPath(digest)));
  // Present: OpenIngest returns null.
  auto again = store.OpenIngest(digest, data.size());
  REQUIRE(again);
  CHECK(*again == nullptr);
}

// Appends in pieces that fit no alignment, checkpoints at odd offsets, a crash and a resume at
// an unaligned offset, a short final chunk: the blob must come out byte for byte, through
// O_DIRECT where the file system takes it and through the page cache alone.
TEST_CASE("ContentStore: ingest chunks through O_DIRECT and buffered writes alike") {
  for (bool direct : {true, false}) {
    DYNAMIC_SECTION((direct ? "O_DIRECT" : "buffered")) {
      testing::TempDir dir("ev-content");
      auto index = internal::Index::Open(dir / "index");
      REQUIRE(index);
      ContentStore store(dir / "store", index->get());
      if (!direct) store.DisableDirectIoForTest();
      const size_t size = 3 * Ingest::kChunkBytes + 5000 + 123;
      std::string data(size, '\0');
      uint64_t x = 88172645463325252ull;
      for (auto& c : data) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c = static_cast<char>(x);
      }
      std::string digest = Sha256Digest(data);
      const size_t crash_at = Ingest::kChunkBytes + 777;
      // Whether this file system takes O_DIRECT writes at our alignment (Linux >= 6.1 says;
      // ext4 answers for regular files only).
      struct statx sx;
      const std::filesystem::path probe = dir.Write("probe", "");
      const bool fs_direct = ::statx(AT_FDCWD, probe.c_str(), 0, STATX_DIOALIGN, &sx) == 0 &&
                             (sx.stx_mask & STATX_DIOALIGN) != 0 && sx.stx_dio_offset_align > 0 &&
                             sx.stx_dio_offset_align <= Ingest::kDirectAlign &&
                             sx.stx_dio_mem_align <= Ingest::kDirectAlign;
      {
        auto ingest = store.OpenIngest(digest, size);
        REQUIRE(ingest);
        REQUIRE(*ingest);
        CHECK((*ingest)->direct() == (direct && fs_direct));
        size_t at = 0;
        while (at < crash_at) {
          size_t n = std::min<size_t>(12345, crash_at - at);
          REQUIRE((*ingest)->Append(data.data() + at, n));
          at += n;
          REQUIRE((*ingest)->CheckpointEvery(100000));
        }
        REQUIRE((*ingest)->Checkpoint());
        CHECK(*store.CommittedOffset(digest) == crash_at);
        // Accepted but not checkpointed when the process "dies".
        REQUIRE((*ingest)->Append(data.data() + at, 70000));
      }
      auto ingest = store.OpenIngest(digest, size);
      REQUIRE(ingest);
      REQUIRE(*ingest);
      REQUIRE((*ingest)->offset() == crash_at);
      size_t at = crash_at;
      for (size_t n = 1; at < size; n = n * 3 + 1) {
        size_t take = std::min(n % 400000 + 1, size - at);
        REQUIRE((*ingest)->Append(data.data() + at, take));
        at += take;
        REQUIRE((*ingest)->CheckpointEvery(300000));
      }
      // No write was refused (a misaligned O_DIRECT write gets EINVAL and falls back).
      CHECK((*ingest)->direct() == (direct && fs_direct));
      REQUIRE((*ingest)->Commit());
      REQUIRE(store.Has(digest));
      std::ifstream in(store.BlobPath(digest), std::ios::binary);
      std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      CHECK(got.size() == size);
      CHECK(got == data);
    }
  }
}

TEST_CASE("ContentStore: a corrupt ingest is discarded, a reset restarts from zero") {
  testing::TempDir dir("ev-content");
  auto index = internal::Index::Open(dir / "index");
  REQUIRE(index);
  ContentStore store(dir / "store", index->get());
  std::string data = "0123456789";
  std::string digest = Sha256Digest(data);
  auto ingest = store.OpenIngest(digest, data.size());
  REQUIRE(ingest);
  REQUIRE((*ingest)->Append("01234", 5));
  REQUIRE((*ingest)->Checkpoint());
  REQUIRE((*ingest)->Reset());
  CHECK((*ingest)->offset() == 0);
  CHECK(*store.CommittedOffset(digest) == 0);
  REQUIRE((*ingest)->Append("0123X56789", 10));
  auto bad = (*ingest)->Commit();
  REQUIRE_FALSE(bad);
  CHECK(bad.error().code == Code::kInvalid);
  CHECK(bad.error().message.find("digest mismatch") != std::string::npos);
  CHECK_FALSE(store.Has(digest));
  CHECK_FALSE(std::filesystem::exists(store.IngestPath(digest)));
  CHECK(store.List()->empty());
}

TEST_CASE("ContentStore: Ingests lists partials; RemoveIngest spares a live writer") {
  testing::TempDir dir("ev-content");
  auto index = internal::Index::Open(dir / "index");
  REQUIRE(index);
  ContentStore store(dir / "store", index->get());
  std::string data(1000, 'x');
  std::string digest = Sha256Digest(data);
  int64_t now = static_cast<int64_t>(::time(nullptr));
  {
    auto ingest = store.OpenIngest(digest, data.size());
    REQUIRE(ingest);
    REQUIRE((*ingest)->Append(data.data(), 400));
    REQUIRE((*ingest)->Checkpoint());
    auto list = store.Ingests();
    REQUIRE(list);
    REQUIRE(list->size() == 1);
    CHECK((*list)[0].digest == digest);
    CHECK((*list)[0].size == 1000);
    CHECK((*list)[0].offset == 400);
    CHECK((*list)[0].started >= now - 1);
    auto busy = store.RemoveIngest(digest);
    REQUIRE_FALSE(busy);
    CHECK(busy.error().code == Code::kConflict);
    CHECK(std::filesystem::exists(store.IngestPath(digest)));
  }
  // "started" survives a resume.
  int64_t started = (*store.Ingests())[0].started;
  {
    auto ingest = store.OpenIngest(digest, data.size());
    REQUIRE(ingest);
    CHECK((*ingest)->offset() == 400);
    REQUIRE((*ingest)->Append(data.data(), 100));
    REQUIRE((*ingest)->Checkpoint());
  }
  CHECK((*store.Ingests())[0].started == started);
  REQUIRE(store.RemoveIngest(digest));
  CHECK(store.Ingests()->empty());
  CHECK_FALSE(std::filesystem::exists(store.IngestPath(digest)));
  CHECK(store.RemoveIngest(digest));  // nothing left: fine
}

TEST_CASE("ContentStore: an ingest record of another size is ignored") {
  testing::TempDir dir("ev-content");
  auto index = internal::Index::Open(dir / "index");
  REQUIRE(index);
  ContentStore store(dir / "store", index->get());
  REQUIRE((*index)->Put("ingest/" + kHexA, R"({"size":99,"offset":50})"));
  auto ingest = store.OpenIngest(kDigA, 10);
  REQUIRE(ingest);
  CHECK((*ingest)->offset() == 0);
}

TEST_CASE("ClientOptionsFrom copies the transfer settings") {
  Options o;
  o.platform = "linux/arm64";
  o.max_attempts = 3;
  o.checkpoint_bytes = 4096;
  o.registries = {{"127.0.0.1:5000", true, false, ""}};
  auto c = ClientOptionsFrom(o, {{"h", {"u", "p", ""}}});
  CHECK(c.platform == "linux/arm64");
  CHECK(c.max_attempts == 3);
  CHECK(c.checkpoint_bytes == 4096);
  CHECK(c.registries.size() == 1);
  CHECK(c.keychain.count("h") == 1);
  CHECK(c.user_agent == "edgevirt");
}

}  // namespace
}  // namespace edgevirt::image
