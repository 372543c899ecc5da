// image/layout: OCI image layouts made by tests/fixtures/containerdisk/make-containerdisk.sh,
// skopeo and umoci, OCI archives (tar of a layout), and hostile archives.
#include "image/layout.h"

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <set>

#include "common/exec.h"
#include "image/disk.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::image {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

const std::string kFixtures = EDGEVIRT_SOURCE_DIR "/tests/fixtures/containerdisk";

std::string Run(const std::vector<std::string>& argv) {
  auto r = ExecChecked(argv);
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r.has_value());
  return r->stdout_text;
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::set<std::string> Tree(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    out.insert(fs::relative(e.path(), dir).string());
  }
  return out;
}

const LayoutEntry* FindRef(const Layout& layout, const std::string& ref) {
  for (const auto& e : layout.entries()) {
    if (e.ref_name == ref) return &e;
  }
  return nullptr;
}

// The layers of the manifest tagged `ref`, every blob verified.
std::vector<Layer> LayersOf(const Layout& layout, const std::string& ref) {
  const LayoutEntry* e = FindRef(layout, ref);
  REQUIRE(e != nullptr);
  auto text = layout.ReadBlob(e->digest, 4 << 20);
  REQUIRE(text.has_value());
  auto manifest = nlohmann::json::parse(*text);
  std::vector<Layer> layers;
  for (const auto& l : manifest["layers"]) {
    std::string digest = l["digest"];
    auto size = layout.VerifyBlob(digest);
    REQUIRE(size.has_value());
    CHECK(*size == l["size"].get<uint64_t>());
    layers.push_back(Layer{layout.BlobPath(digest), l["mediaType"], digest});
  }
  return layers;
}

void MakeDisk(const fs::path& path) {
  Run({"qemu-img", "create", "-q", "-f", "qcow2", path.string(), "16M"});
}

TEST_CASE("Layout opens a layout made by the packer script and reads verified blobs") {
  TempDir t("ev-layout");
  fs::create_directories(t / "src");
  MakeDisk(t / "src" / "disk.qcow2");
  std::string digest = Run({kFixtures + "/make-containerdisk.sh",
                            (t / "src" / "disk.qcow2").string(), t.Path("oci"), "v1"});
  digest = digest.substr(0, digest.find('\n'));
  Run({kFixtures + "/make-containerdisk.sh", (t / "src" / "disk.qcow2").string(), t.Path("oci"),
       "v1-zstd", "zstd"});

  auto layout = Layout::Open(t / "oci", t / "scratch");
  INFO((layout ? "" : layout.error().message));
  REQUIRE(layout.has_value());
  CHECK_FALSE(fs::exists(t / "scratch"));  // a directory is used in place
  REQUIRE(layout->entries().size() == 2);
  const LayoutEntry& e = layout->entries()[0];
  CHECK(e.ref_name == "v1");
  CHECK(e.digest == digest);
  CHECK(e.media_type == "application/vnd.oci.image.manifest.v1+json");
  CHECK(e.size == fs::file_size(layout->BlobPath(e.digest)));
  CHECK(layout->entries()[1].ref_name == "v1-zstd");

  for (const char* ref : {"v1", "v1-zstd"}) {
    auto layers = LayersOf(*layout, ref);
    REQUIRE(layers.size() == 1);
    fs::path out = t / (std::string("disk-") + ref);
    auto size = ExtractContainerDisk(layers, "", out);
    INFO((size ? "" : size.error().message));
    REQUIRE(size.has_value());
    CHECK(ReadAll(out) == ReadAll(t / "src" / "disk.qcow2"));
  }

  // Digests are validated before they become paths.
  CHECK(layout->BlobPath("sha256:../../etc/passwd").empty());
  CHECK(layout->BlobPath("sha512:" + std::string(128, 'a')).empty());
  CHECK(layout->BlobPath("sha256:" + std::string(64, 'A')).empty());
  CHECK(layout->ReadBlob("sha256:../x", 100).error().code == Code::kInvalid);
  CHECK(layout->ReadBlob("sha256:" + std::string(64, 'a'), 100).error().code == Code::kNotFound);
  CHECK(layout->ReadBlob(e.digest, 10).error().code == Code::kTooLarge);

  // A corrupt blob is refused.
  { std::ofstream(layout->BlobPath(e.digest), std::ios::binary | std::ios::app) << " "; }
  auto corrupt = layout->ReadBlob(e.digest, 1 << 20);
  REQUIRE_FALSE(corrupt.has_value());
  CHECK(corrupt.error().code == Code::kInvalid);
  CHECK(corrupt.error().message.find("does not match its digest") != std::string::npos);
  CHECK_FALSE(layout->VerifyBlob(e.digest).has_value());
}

TEST_CASE("Layout opens a layout written by skopeo and one by umoci insert") {
  TempDir t("ev-layout");
  fs::create_directories(t / "src");
  MakeDisk(t / "src" / "disk.qcow2");
  Run({kFixtures + "/make-containerdisk.sh", (t / "src" / "disk.qcow2").string(), t.Path("src-oci"),
       "v1"});

  SECTION("skopeo copy oci: to oci:") {
    Run({"skopeo", "--insecure-policy", "copy", "-q", "oci:" + t.Path("src-oci") + ":v1",
         "oci:" + t.Path("dst") + ":v2"});
    auto layout = Layout::Open(t / "dst", {});
    INFO((layout ? "" : layout.error().message));
    REQUIRE(layout.has_value());
    REQUIRE(layout->entries().size() == 1);
    CHECK(layout->entries()[0].ref_name == "v2");
    auto layers = LayersOf(*layout, "v2");
    REQUIRE(ExtractContainerDisk(layers, "", t / "disk").has_value());
    CHECK(ReadAll(t / "disk") == ReadAll(t / "src" / "disk.qcow2"));
  }
  SECTION("umoci insert (a layer without the tar footer)") {
    Run({"umoci", "init", "--layout", t.Path("u")});
    Run({"umoci", "new", "--image", t.Path("u") + ":v1"});
    Run({"umoci", "insert", "--image", t.Path("u") + ":v1", (t / "src" / "disk.qcow2").string(),
         "/disk/disk.qcow2"});
    auto layout = Layout::Open(t / "u", {});
    REQUIRE(layout.has_value());
    auto layers = LayersOf(*layout, "v1");
    auto size = ExtractContainerDisk(layers, "", t / "disk");
    INFO((size ? "" : size.error().message));
    REQUIRE(size.has_value());
    CHECK(ReadAll(t / "disk") == ReadAll(t / "src" / "disk.qcow2"));
  }
}

TEST_CASE("Layout opens OCI archives and refuses hostile ones") {
  TempDir t("ev-layout");
  fs::create_directories(t / "src");
  MakeDisk(t / "src" / "disk.qcow2");
  Run({kFixtures + "/make-containerdisk.sh", (t / "src" / "disk.qcow2").string(), t.Path("oci"),
       "v1"});

  SECTION("tar and tar.gz of a layout") {
    Run({"tar", "-C", t.Path("oci"), "-cf", t.Path("x.tar"), "."});
    Run({"gzip", "-n", "-k", t.Path("x.tar")});
    for (const char* archive : {"x.tar", "x.tar.gz"}) {
      fs::path scratch = t / (std::string("scratch-") + archive);
      auto layout = Layout::Open(t / archive, scratch);
      INFO(archive << (layout ? "" : ": " + layout.error().message));
      REQUIRE(layout.has_value());
      CHECK(layout->root() == scratch);
      REQUIRE(layout->entries().size() == 1);
      auto layers = LayersOf(*layout, "v1");
      REQUIRE(ExtractContainerDisk(layers, "", scratch / "disk").has_value());
      CHECK(ReadAll(scratch / "disk") == ReadAll(t / "src" / "disk.qcow2"));
    }
  }
  SECTION("not a layout") {
    fs::create_directories(t / "empty");
    CHECK(Layout::Open(t / "empty", {}).error().code == Code::kNotFound);
    t.Write("empty/oci-layout", "{\"imageLayoutVersion\":\"2.0.0\"}");
    CHECK(Layout::Open(t / "empty", {}).error().code == Code::kInvalid);
    t.Write("empty/oci-layout", "{\"imageLayoutVersion\":\"1.0.0\"}");
    t.Write("empty/index.json",
            "{\"schemaVersion\":2,\"manifests\":[{\"mediaType\":\"x\","
            "\"digest\":\"sha256:../../x\",\"size\":1}]}");
    auto bad = Layout::Open(t / "empty", {});
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().message.find("bad digest") != std::string::npos);
    t.Write("junk.tar", std::string(3000, 'j'));
    CHECK(Layout::Open(t / "junk.tar", t / "scratch-junk").error().code == Code::kInvalid);
    CHECK(Layout::Open(t / "nope", t / "s").error().code == Code::kNotFound);
  }
  SECTION("hostile archives") {
    for (const std::string c : {"archive-dotdot", "archive-absolute", "archive-symlink"}) {
      fs::path work = t / ("w-" + c);
      fs::create_directories(work / "scratch");
      fs::path archive = t / (c + ".tar");
      Run({"python3", kFixtures + "/make-hostile-tar.py", c, archive.string()});
      auto before = Tree(work);
      auto layout = Layout::Open(archive, work / "scratch");
      REQUIRE_FALSE(layout.has_value());
      INFO(c << ": " << layout.error().message);
      CHECK(layout.error().code == Code::kInvalid);
      CHECK(layout.error().message.find(c == "archive-symlink" ? "links are not allowed"
                                        : c == "archive-dotdot"
                                            ? "\"..\" component"
                                            : "absolute path") != std::string::npos);
      // Only what the archive held before the bad entry, and only inside scratch/.
      for (const auto& p : Tree(work)) {
        if (!before.contains(p)) CHECK(p.starts_with("scratch/"));
      }
      CHECK_FALSE(fs::exists(work / "evil"));
      CHECK_FALSE(fs::exists(t / "evil"));
      CHECK_FALSE(fs::exists("/evil"));
    }
  }
}

}  // namespace
}  // namespace edgevirt::image
