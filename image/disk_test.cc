// image/disk: extraction of containerDisk layers (well-formed and hostile), disk validation and
// overlays. Fixtures are built in a temp dir with GNU tar, gzip, zstd, qemu-img and
// tests/fixtures/containerdisk/make-hostile-tar.py.
#include "image/disk.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <random>
#include <set>

#include "common/exec.h"
#include "image/image.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::image {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

const std::string kFixtures = EDGEVIRT_SOURCE_DIR "/tests/fixtures/containerdisk";
constexpr uint64_t kMiB = 1 << 20;

void Run(const std::vector<std::string>& argv) {
  auto r = ExecChecked(argv);
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r.has_value());
}

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// An 8 MiB raw disk, zero but for a few marked regions.
void MakeRaw(const fs::path& path, uint64_t size = 8 * kMiB) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  REQUIRE(fd >= 0);
  std::mt19937 rng(42);
  std::string noise(64 * 1024, '\0');
  for (auto& c : noise) c = static_cast<char>(rng());
  REQUIRE(::pwrite(fd, "edgevirt raw disk", 17, 0) == 17);
  REQUIRE(::pwrite(fd, noise.data(), noise.size(), 3 * kMiB + 100) ==
          static_cast<ssize_t>(noise.size()));
  REQUIRE(::pwrite(fd, "end", 3, static_cast<off_t>(size - 3)) == 3);
  REQUIRE(::ftruncate(fd, static_cast<off_t>(size)) == 0);
  ::close(fd);
}

void MakeQcow2(const fs::path& path, const std::string& size = "16M") {
  Run({"qemu-img", "create", "-q", "-f", "qcow2", path.string(), size});
}

// A layer holding root/disk/<name of disk>: GNU tar, then the compression, as
// make-containerdisk.sh does. Returns the Layer.
Layer MakeLayer(const TempDir& t, const fs::path& disk, const std::string& compress,
                const std::string& tag, std::vector<std::string> tar_flags = {}) {
  fs::path root = t / ("root-" + tag);
  fs::create_directories(root / "disk");
  Run({"cp", "--sparse=always", disk.string(), (root / "disk" / disk.filename()).string()});
  fs::path tar = t / ("layer-" + tag + ".tar");
  std::vector<std::string> argv = {"tar",         "--sort=name",     "--owner=107",
                                   "--group=107", "--numeric-owner", "--mtime=@0"};
  argv.insert(argv.end(), tar_flags.begin(), tar_flags.end());
  argv.insert(argv.end(), {"-C", root.string(), "-cf", tar.string(), "disk"});
  Run(argv);
  if (compress == "gzip") {
    Run({"gzip", "-n", tar.string()});
    return Layer{tar.string() + ".gz", std::string(kMediaTypeOciLayerGzip), "sha256:gz-" + tag};
  }
  if (compress == "zstd") {
    Run({"zstd", "-q", "--rm", tar.string()});
    return Layer{tar.string() + ".zst", std::string(kMediaTypeOciLayerZstd), "sha256:zst-" + tag};
  }
  return Layer{tar, std::string(kMediaTypeOciLayer), "sha256:tar-" + tag};
}

Layer Hostile(const TempDir& t, const std::string& c, const fs::path& disk = {}) {
  fs::path out = t / ("hostile-" + c + ".tar");
  std::vector<std::string> argv = {"python3", kFixtures + "/make-hostile-tar.py", c, out.string()};
  if (!disk.empty()) argv.push_back(disk.string());
  Run(argv);
  return Layer{out, std::string(kMediaTypeOciLayer), "sha256:" + c};
}

// Every path under `dir`, for "nothing else was written" checks.
std::set<std::string> Tree(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    out.insert(fs::relative(e.path(), dir).string());
  }
  return out;
}

TEST_CASE("ExtractContainerDisk writes raw and qcow2 disks from tar, gzip and zstd layers") {
  TempDir t("ev-disk");
  fs::create_directories(t / "src");
  fs::create_directories(t / "out");
  fs::path raw = t / "src" / "disk.img";
  MakeRaw(raw);
  fs::path qcow = t / "src" / "disk.qcow2";
  MakeQcow2(qcow);

  for (const std::string compress : {"none", "gzip", "zstd"}) {
    for (const fs::path& disk : {raw, qcow}) {
      DYNAMIC_SECTION(compress << " " << disk.filename().string()) {
        Layer layer = MakeLayer(t, disk, compress, compress + disk.extension().string());
        fs::path out = t / "out" / "disk";
        auto size = ExtractContainerDisk({layer}, "", out);
        INFO((size ? "" : size.error().message));
        REQUIRE(size.has_value());
        CHECK(*size == fs::file_size(disk));
        CHECK(ReadAll(out) == ReadAll(disk));
        struct stat st {};
        REQUIRE(::stat(out.c_str(), &st) == 0);
        CHECK((st.st_mode & 07777) == 0444);
        CHECK_FALSE(fs::exists(t / "out" / "disk.tmp"));
        if (disk == raw) {
          // Sparse: 8 MiB with ~64 KiB of data.
          CHECK(static_cast<uint64_t>(st.st_blocks) * 512 < 1 * kMiB);
        }
        fs::remove(out);
      }
    }
  }
}

TEST_CASE("ExtractContainerDisk reads GNU sparse entries and replaces a stale .tmp") {
  TempDir t("ev-disk");
  fs::create_directories(t / "src");
  fs::path raw = t / "src" / "disk.img";
  MakeRaw(raw, 32 * kMiB);
  Layer layer = MakeLayer(t, raw, "gzip", "sparse", {"--sparse"});
  t.Write("disk.tmp", "stale");
  auto size = ExtractContainerDisk({layer}, "", t / "disk");
  INFO((size ? "" : size.error().message));
  REQUIRE(size.has_value());
  CHECK(*size == 32 * kMiB);
  CHECK(ReadAll(t / "disk") == ReadAll(raw));
  CHECK_FALSE(fs::exists(t / "disk.tmp"));
}

TEST_CASE("ExtractContainerDisk applies layers in order with whiteouts") {
  TempDir t("ev-disk");
  fs::create_directories(t / "src");
  fs::path old_disk = t / "src" / "old.qcow2";
  MakeQcow2(old_disk);
  fs::path raw = t / "src" / "new.img";
  MakeRaw(raw);
  Layer lower = MakeLayer(t, old_disk, "gzip", "lower");

  SECTION("a whiteout removes the lower disk and the upper layer adds another") {
    Layer wh = Hostile(t, "whiteout", old_disk);
    Layer upper = MakeLayer(t, raw, "gzip", "upper");
    auto size = ExtractContainerDisk({lower, wh, upper}, "", t / "disk");
    INFO((size ? "" : size.error().message));
    REQUIRE(size.has_value());
    CHECK(ReadAll(t / "disk") == ReadAll(raw));
    // Without the whiteout both files are there.
    auto two = ExtractContainerDisk({lower, upper}, "", t / "disk2");
    REQUIRE_FALSE(two.has_value());
    CHECK(two.error().message.find("more than one file found under /disk") != std::string::npos);
    CHECK_FALSE(fs::exists(t / "disk2"));
  }
  SECTION("an opaque whiteout hides the lower directory's content") {
    Layer opq = Hostile(t, "opaque", raw);
    auto size = ExtractContainerDisk({lower, opq}, "", t / "disk");
    INFO((size ? "" : size.error().message));
    REQUIRE(size.has_value());
    CHECK(ReadAll(t / "disk") == ReadAll(raw));
  }
  SECTION("a whiteout alone leaves no disk") {
    Layer wh = Hostile(t, "whiteout", old_disk);
    auto r = ExtractContainerDisk({lower, wh}, "", t / "disk");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message == "no file found under /disk");
  }
  SECTION("a later layer replaces the disk file of the same name") {
    fs::create_directories(t / "src2");
    fs::path same = t / "src2" / "old.qcow2";
    MakeRaw(same);
    Layer upper = MakeLayer(t, same, "zstd", "same");
    auto size = ExtractContainerDisk({lower, upper}, "", t / "disk");
    REQUIRE(size.has_value());
    CHECK(ReadAll(t / "disk") == ReadAll(same));
  }
}

TEST_CASE("ExtractContainerDisk accepts a layer without the tar footer (umoci 0.4.7 insert)") {
  TempDir t("ev-disk");
  fs::create_directories(t / "src");
  fs::path raw = t / "src" / "disk.img";
  MakeRaw(raw, 1 * kMiB + 1000);  // not a multiple of 512: the entry padding is missing too
  Layer layer = Hostile(t, "nofooter", raw);
  REQUIRE(fs::file_size(layer.blob) == 1024 + fs::file_size(raw));
  auto size = ExtractContainerDisk({layer}, "", t / "disk");
  INFO((size ? "" : size.error().message));
  REQUIRE(size.has_value());
  CHECK(ReadAll(t / "disk") == ReadAll(raw));

  Run({"gzip", "-n", "-k", layer.blob.string()});
  Layer gz{layer.blob.string() + ".gz", std::string(kMediaTypeDockerLayerGzip), "sha256:gz"};
  REQUIRE(ExtractContainerDisk({gz}, "", t / "disk-gz").has_value());
  CHECK(ReadAll(t / "disk-gz") == ReadAll(raw));

  // But a layer that ends inside the disk's data is refused, not padded with zeros.
  Layer cut = Hostile(t, "truncated", raw);
  auto r = ExtractContainerDisk({cut}, "", t / "disk-cut");
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().message.find("truncated") != std::string::npos);
  CHECK_FALSE(fs::exists(t / "disk-cut"));
  CHECK_FALSE(fs::exists(t / "disk-cut.tmp"));
}

TEST_CASE("ExtractContainerDisk finds the disk at path_in_image") {
  TempDir t("ev-disk");
  fs::path root = t / "root";
  fs::create_directories(root / "custom");
  fs::create_directories(root / "disk");
  MakeRaw(root / "custom" / "disk.img");
  t.Write("root/disk/decoy", "x");
  Run({"tar", "-C", root.string(), "-cf", (t / "l.tar").string(), "."});  // "./custom/..." names
  Layer layer{t / "l.tar", std::string(kMediaTypeOciLayer), "sha256:custom"};

  for (const char* p : {"custom/disk.img", "/custom/disk.img", "./custom//disk.img"}) {
    fs::remove(t / "disk");
    auto size = ExtractContainerDisk({layer}, p, t / "disk");
    INFO(p << (size ? "" : ": " + size.error().message));
    REQUIRE(size.has_value());
    CHECK(ReadAll(t / "disk") == ReadAll(root / "custom" / "disk.img"));
  }
  for (const char* p : {"../custom/disk.img", "custom/../../etc/shadow", "/"}) {
    auto r = ExtractContainerDisk({layer}, p, t / "bad");
    INFO(p);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Code::kInvalid);
  }
  auto missing = ExtractContainerDisk({layer}, "custom/nope.img", t / "bad");
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().message == "no file found at /custom/nope.img");
  auto dir = ExtractContainerDisk({layer}, "custom", t / "bad");
  REQUIRE_FALSE(dir.has_value());
  CHECK(dir.error().message.find("is a directory") != std::string::npos);
  CHECK_FALSE(fs::exists(t / "bad"));
}

TEST_CASE("ExtractContainerDisk refuses hostile and invalid layers and writes nothing") {
  TempDir t("ev-disk");
  fs::create_directories(t / "out");
  fs::path raw = t / "disk.img";
  MakeRaw(raw, 64 * 1024);

  struct Case {
    std::string name;
    std::string message;  // a part of the error
  };
  const std::vector<Case> cases = {
      {"dotdot", "\"..\" component in \"../evil\""},
      {"absolute", "absolute path \"/evil\""},
      {"symlink-disk", "disk /disk/x is a symlink (-> \"/etc/shadow\") (layer 1"},
      {"symlink-dir", "entry \"disk/passwd\" is below symlink \"disk\" -> \"/etc\""},
      {"symlink-escape", "symlink \"lib\" -> \"../../../etc\" resolves outside the image"},
      {"hardlink-out", "hardlink \"disk/x\" -> \"../../etc/shadow\": target outside the image"},
      {"hardlink-abs", "hardlink \"disk/x\" -> \"/etc/shadow\": target outside the image"},
      {"device", "disk /disk/null is a character device"},
      {"fifo", "disk /disk/pipe is a fifo"},
      {"empty", "no file found under /disk"},
      {"two", "more than one file found under /disk: only one disk is allowed"},
  };
  for (const auto& c : cases) {
    DYNAMIC_SECTION(c.name) {
      Layer layer = Hostile(t, c.name, raw);
      auto before = Tree(t.path());
      fs::path out = t / "out" / "disk";
      auto r = ExtractContainerDisk({layer}, "", out);
      REQUIRE_FALSE(r.has_value());
      INFO(r.error().message);
      CHECK(r.error().code == Code::kInvalid);
      CHECK(r.error().message.find(c.message) != std::string::npos);
      if (c.name != "empty" && c.name != "two") {  // KubeVirt's messages, about the whole image
        CHECK(r.error().message.find("sha256:" + c.name) != std::string::npos);  // the layer
      }
      CHECK_FALSE(fs::exists(out));
      CHECK(fs::is_empty(t / "out"));
      CHECK(Tree(t.path()) == before);
      CHECK_FALSE(fs::exists(t.path().parent_path() / "evil"));
      CHECK_FALSE(fs::exists("/evil"));
    }
  }

  SECTION("a hardlink, even to a file inside the image, cannot be the disk") {
    Layer layer = Hostile(t, "hardlink-in", raw);
    auto r = ExtractContainerDisk({layer}, "", t / "out" / "disk");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message ==
          "disk /disk/disk.img is a hardlink (to \"data/real.img\") (layer 1 "
          "(sha256:hardlink-in)): a link cannot be the disk");
    CHECK(fs::is_empty(t / "out"));
  }
  SECTION("non-ASCII names elsewhere in the image are fine (pax UTF-8 and raw bytes)") {
    Layer layer = Hostile(t, "unicode", raw);
    auto size = ExtractContainerDisk({layer}, "", t / "out" / "disk");
    INFO((size ? "" : size.error().message));
    REQUIRE(size.has_value());
    CHECK(ReadAll(t / "out" / "disk") == ReadAll(raw));
  }
  SECTION("an unknown media type") {
    Layer layer = Hostile(t, "empty");
    layer.media_type = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    auto r = ExtractContainerDisk({layer}, "", t / "out" / "disk");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message.find("unsupported layer media type") != std::string::npos);
    CHECK(fs::is_empty(t / "out"));
  }
  SECTION("a blob that is not what its media type says") {
    Layer layer = Hostile(t, "two", raw);
    layer.media_type = std::string(kMediaTypeOciLayerGzip);
    auto r = ExtractContainerDisk({layer}, "", t / "out" / "disk");
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Code::kInvalid);
    Layer garbage{t.Write("garbage", std::string(5000, 'x')), std::string(kMediaTypeOciLayer),
                  "sha256:garbage"};
    auto g = ExtractContainerDisk({garbage}, "", t / "out" / "disk");
    REQUIRE_FALSE(g.has_value());
    CHECK(g.error().code == Code::kInvalid);
    CHECK(fs::is_empty(t / "out"));
  }
  SECTION("no layers") {
    CHECK_FALSE(ExtractContainerDisk({}, "", t / "out" / "disk").has_value());
  }
}

TEST_CASE("ValidateDisk accepts only standalone qcow2 and raw disks under the size cap") {
  TempDir t("ev-disk");
  MakeQcow2(t / "ok.qcow2", "16M");
  MakeRaw(t / "ok.img");

  auto q = ValidateDisk(t / "ok.qcow2", 1ull << 30);
  INFO((q ? "" : q.error().message));
  REQUIRE(q.has_value());
  CHECK(q->format == "qcow2");
  CHECK(q->virtual_size == 16 * kMiB);
  CHECK(q->allocated_bytes > 0);

  auto r = ValidateDisk(t / "ok.img", 1ull << 30);
  REQUIRE(r.has_value());
  CHECK(r->format == "raw");
  CHECK(r->virtual_size == 8 * kMiB);

  auto cap = ValidateDisk(t / "ok.qcow2", 8 * kMiB);
  REQUIRE_FALSE(cap.has_value());
  CHECK(cap.error().code == Code::kInvalid);
  CHECK(cap.error().message.find("exceeds the limit") != std::string::npos);

  Run({"qemu-img", "create", "-q", "-f", "qcow2", "-b", (t / "ok.img").string(), "-F", "raw",
       (t / "backed.qcow2").string()});
  auto b = ValidateDisk(t / "backed.qcow2", 1ull << 30);
  REQUIRE_FALSE(b.has_value());
  CHECK(b.error().message.find("backing file") != std::string::npos);

  Run({"qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file=" + (t / "data.raw").string(),
       (t / "datafile.qcow2").string(), "16M"});
  auto d = ValidateDisk(t / "datafile.qcow2", 1ull << 30);
  REQUIRE_FALSE(d.has_value());
  CHECK(d.error().message.find("external data file") != std::string::npos);

  Run({"qemu-img", "create", "-q", "-f", "vmdk", (t / "disk.vmdk").string(), "16M"});
  auto v = ValidateDisk(t / "disk.vmdk", 1ull << 30);
  REQUIRE_FALSE(v.has_value());
  CHECK(v.error().message.find("disk format vmdk is not allowed (only qcow2 or raw)") !=
        std::string::npos);

  // A qcow2 magic followed by garbage: qemu-img cannot read it.
  std::string junk = "QFI\xfb";
  junk += std::string("\0\0\0\x03", 4) + std::string(8, '\0') + std::string(2000, '\xff');
  t.Write("junk.qcow2", junk);
  auto j = ValidateDisk(t / "junk.qcow2", 1ull << 30);
  REQUIRE_FALSE(j.has_value());
  CHECK(j.error().code == Code::kInvalid);

  t.Write("empty.img", "");
  CHECK_FALSE(ValidateDisk(t / "empty.img", 1ull << 30).has_value());
  CHECK_FALSE(ValidateDisk(t / "missing.img", 1ull << 30).has_value());
}

TEST_CASE("CreateOverlay makes a 0600 qcow2 naming its base and the base's format") {
  TempDir t("ev-disk");
  MakeRaw(t / "base.img");
  Image image;
  image.disk_path = (t / "base.img").string();
  image.format = "raw";
  REQUIRE(CreateOverlay(image, t / "overlay.qcow2").has_value());
  struct stat st {};
  REQUIRE(::stat((t / "overlay.qcow2").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  auto info = ExecChecked({"qemu-img", "info", "--output", "json", (t / "overlay.qcow2").string()});
  REQUIRE(info.has_value());
  auto j = nlohmann::json::parse(info->stdout_text);
  CHECK(j["format"] == "qcow2");
  CHECK(j["backing-filename"] == (t / "base.img").string());
  CHECK(j["backing-filename-format"] == "raw");
  CHECK(j["virtual-size"] == 8 * kMiB);

  auto again = CreateOverlay(image, t / "overlay.qcow2");
  REQUIRE_FALSE(again.has_value());
  CHECK(again.error().code == Code::kAlreadyExists);
  image.format = "vmdk";
  CHECK(CreateOverlay(image, t / "o2.qcow2").error().code == Code::kInvalid);
  CHECK_FALSE(fs::exists(t / "o2.qcow2"));
}

}  // namespace
}  // namespace edgevirt::image
