// image::Cache without a network: images imported from OCI layouts and archives made by
// tests/fixtures/containerdisk/make-containerdisk.sh, looked up by reference and digest, used
// and released, pruned within a budget (least recently used first, never an image in use), and
// the leftovers of crashes (a disk directory without a record, a stale partial download)
// collected. Pulls from a registry are in tests/integration (image_registry_integration_test,
// vm_containerdisk_test).
#include <sys/stat.h>
#include <utime.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/exec.h"
#include "image/content.h"
#include "image/image.h"
#include "image/index.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::image {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

const std::string kPacker =
    EDGEVIRT_SOURCE_DIR "/tests/fixtures/containerdisk/make-containerdisk.sh";

std::string Run(const std::vector<std::string>& argv) {
  auto r = ExecChecked(argv);
  INFO((r ? std::string() : r.error().message));
  REQUIRE(r.has_value());
  return r->stdout_text;
}

// An OCI layout holding a containerDisk of a fresh `format` disk of `mib` MiB, its blob data
// made distinct by `seed`; the ref.name annotation is `ref`.
fs::path MakeLayout(const TempDir& tmp, const std::string& name, const std::string& format, int mib,
                    const std::string& ref) {
  const fs::path disk = tmp / (name + "." + format);
  Run({"/usr/bin/qemu-img", "create", "-q", "-f", format, disk.string(),
       std::to_string(mib) + "M"});
  // Different content per image: a few bytes of its name at 1 MiB.
  {
    std::fstream f(disk, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(format == "raw" ? (1 << 20) : 0x200000 - 64);
    f << name;
  }
  const fs::path layout = tmp / ("oci-" + name);
  Run({"/bin/bash", kPacker, disk.string(), layout.string(), ref, "gzip"});
  return layout;
}

// Whether `reference` is in the cache.
bool Found(Cache& cache, const std::string& reference) {
  auto r = cache.Lookup(reference, "");
  REQUIRE(r.has_value());
  return r->has_value();
}

Options CacheOptions(const TempDir& tmp) {
  Options o;
  o.dir = tmp / "cache";
  return o;
}

TEST_CASE("imported images are found by reference and digest, with their disk read-only") {
  TempDir tmp("ev-cache");
  auto cache = Cache::Open(CacheOptions(tmp));
  REQUIRE(cache.has_value());
  auto imported = (*cache)->Import(MakeLayout(tmp, "a", "qcow2", 8, "edge.example/kv/a:v1"));
  INFO((imported ? "" : imported.error().message));
  REQUIRE(imported.has_value());
  REQUIRE(imported->size() == 1);
  const Image& img = (*imported)[0];
  CHECK(img.format == "qcow2");
  CHECK(img.virtual_size == 8u << 20);
  CHECK(img.references == std::vector<std::string>{"edge.example/kv/a:v1"});
  struct stat st {};
  REQUIRE(::stat(img.disk_path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0444);

  auto by_ref = (*cache)->Lookup("edge.example/kv/a:v1", "");
  REQUIRE(by_ref.has_value());
  REQUIRE(by_ref->has_value());
  CHECK((*by_ref)->manifest_digest == img.manifest_digest);
  auto by_digest = (*cache)->Lookup("anything.example/x@" + img.manifest_digest, "");
  REQUIRE(by_digest.has_value());
  REQUIRE(by_digest->has_value());
  CHECK((*by_digest)->disk_path == img.disk_path);
  CHECK_FALSE(Found(**cache, "edge.example/kv/a:v2"));
  // A bare-tag annotation names nothing: the image is still found by digest.
  auto bare = (*cache)->Import(MakeLayout(tmp, "b", "raw", 4, "v1"));
  REQUIRE(bare.has_value());
  CHECK((*bare)[0].references.empty());
  CHECK(Found(**cache, "x/y@" + (*bare)[0].manifest_digest));
  // Importing the same layout again changes nothing.
  auto again = (*cache)->Import(tmp / "oci-a");
  REQUIRE(again.has_value());
  CHECK((*again)[0].disk_path == img.disk_path);
  CHECK((*cache)->List()->size() == 2);

  // A second process (here: a second Cache on the same directory) sees the same index.
  auto other = Cache::Open(CacheOptions(tmp));
  REQUIRE(other.has_value());
  CHECK(Found(**other, "edge.example/kv/a:v1"));

  // An archive of a layout imports the same way.
  const fs::path archive = tmp / "c.tar";
  MakeLayout(tmp, "c", "qcow2", 4, "edge.example/kv/c:v1");
  Run({"/usr/bin/tar", "-C", (tmp / "oci-c").string(), "-cf", archive.string(), "."});
  auto from_archive = (*cache)->Import(archive);
  INFO((from_archive ? "" : from_archive.error().message));
  REQUIRE(from_archive.has_value());
  CHECK((*from_archive)[0].references == std::vector<std::string>{"edge.example/kv/c:v1"});
  CHECK(fs::is_empty(tmp / "cache" / "tmp"));  // the archive's scratch copy is gone
}

TEST_CASE("prune keeps images in use and removes the least recently used down to the budget") {
  TempDir tmp("ev-cache");
  auto opened = Cache::Open(CacheOptions(tmp));
  REQUIRE(opened.has_value());
  Cache& cache = **opened;
  std::map<std::string, Image> images;
  for (const std::string name : {"old", "mid", "new", "used"}) {
    auto r = cache.Import(MakeLayout(tmp, name, "raw", 4, "edge.example/kv/" + name + ":v1"));
    REQUIRE(r.has_value());
    images[name] = (*r)[0];
  }
  // Use order: old, mid, new; "used" is held by a VMI.
  REQUIRE(cache.Use("vmi-1", images["used"].manifest_digest).has_value());
  for (const std::string name : {"old", "mid", "new"}) {
    REQUIRE(cache.Use("tmp-" + name, images[name].manifest_digest).has_value());
    REQUIRE(cache.Release("tmp-" + name).has_value());
    std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // last_used in seconds
  }
  auto list = cache.List();
  REQUIRE(list.has_value());
  uint64_t total = 0;
  for (const auto& i : *list) {
    total += i.disk_bytes;
    CHECK(i.users == (i.manifest_digest == images["used"].manifest_digest
                          ? std::vector<std::string>{"vmi-1"}
                          : std::vector<std::string>{}));
  }
  // A budget one byte short of everything: only the least recently used one goes.
  auto report = cache.Prune(total - 1);
  REQUIRE(report.has_value());
  CHECK(report->removed == std::vector<std::string>{images["old"].manifest_digest});
  CHECK_FALSE(fs::exists(fs::path(images["old"].disk_path).parent_path()));
  CHECK_FALSE(Found(cache, "edge.example/kv/old:v1"));
  // Budget 0: every unused image, never the used one; its blobs stay, the others' go.
  report = cache.Prune(0);
  REQUIRE(report.has_value());
  CHECK(report->removed.size() == 2);
  list = cache.List();
  REQUIRE(list->size() == 1);
  CHECK((*list)[0].manifest_digest == images["used"].manifest_digest);
  size_t blobs = 0;
  for (const auto& e : fs::directory_iterator(tmp / "cache" / "blobs" / "sha256")) {
    (void)e;
    ++blobs;
  }
  CHECK(blobs == 1);  // the used image's one layer
  // Released, it goes too.
  REQUIRE(cache.Release("vmi-1").has_value());
  REQUIRE(cache.Prune(0)->removed.size() == 1);
  CHECK(fs::is_empty(tmp / "cache" / "disks"));
  CHECK(fs::is_empty(tmp / "cache" / "blobs" / "sha256"));
  // Using an image that is gone is an error, not a silent record.
  CHECK(cache.Use("vmi-2", images["used"].manifest_digest).error().code == Code::kNotFound);
}

TEST_CASE("prune collects what a crash left: disk directories without a record, stale ingests") {
  TempDir tmp("ev-cache");
  auto opened = Cache::Open(CacheOptions(tmp));
  REQUIRE(opened.has_value());
  Cache& cache = **opened;
  const fs::path disks = tmp / "cache" / "disks";
  const std::string orphan_young = std::string(64, 'a');
  const std::string orphan_old = std::string(64, 'b');
  for (const auto& id : {orphan_young, orphan_old}) {
    fs::create_directories(disks / id);
    std::ofstream(disks / id / "disk.tmp-1-0") << "partial";
  }
  // Two hours old: past the grace a running pull gets.
  const time_t two_hours_ago = ::time(nullptr) - 7200;
  utimbuf times{two_hours_ago, two_hours_ago};
  REQUIRE(::utime((disks / orphan_old).c_str(), &times) == 0);
  // The scratch copy of an import that was killed, and one in progress.
  const fs::path scratch = tmp / "cache" / "tmp";
  fs::create_directories(scratch / "import-old" / "blobs");
  fs::create_directories(scratch / "import-now");
  REQUIRE(::utime((scratch / "import-old").c_str(), &times) == 0);

  // A partial download recorded two days ago, and one from now.
  {
    auto index = internal::Index::Open(tmp / "cache" / "index");
    REQUIRE(index.has_value());
    ContentStore store(tmp / "cache", index->get());
    const std::string stale = "sha256:" + std::string(64, 'c');
    const std::string fresh = "sha256:" + std::string(64, 'd');
    for (const auto& d : {stale, fresh}) {
      auto ingest = store.OpenIngest(d, 1 << 20);
      REQUIRE(ingest.has_value());
      REQUIRE(*ingest);
    }
    REQUIRE(
        (*index)
            ->Put("ingest/" + std::string(64, 'c'),
                  nlohmann::json{
                      {"size", 1 << 20}, {"offset", 0}, {"started", ::time(nullptr) - 2 * 86400}}
                      .dump())
            .has_value());
  }
  REQUIRE(cache.Prune(0).has_value());
  CHECK(fs::exists(disks / orphan_young));
  CHECK_FALSE(fs::exists(disks / orphan_old));
  CHECK_FALSE(fs::exists(scratch / "import-old"));
  CHECK(fs::exists(scratch / "import-now"));
  auto index = internal::Index::Open(tmp / "cache" / "index");
  REQUIRE(index.has_value());
  ContentStore store(tmp / "cache", index->get());
  auto ingests = store.Ingests();
  REQUIRE(ingests.has_value());
  REQUIRE(ingests->size() == 1);
  CHECK((*ingests)[0].digest == "sha256:" + std::string(64, 'd'));
}

TEST_CASE("a layout whose disk is not a valid containerDisk is refused and leaves nothing") {
  TempDir tmp("ev-cache");
  auto opened = Cache::Open(CacheOptions(tmp));
  REQUIRE(opened.has_value());
  const fs::path evil = tmp / "evil.qcow2";
  Run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/hostname", "-u",
       evil.string(), "16M"});
  const fs::path layout = tmp / "oci-evil";
  Run({"/bin/bash", kPacker, evil.string(), layout.string(), "edge.example/kv/evil:v1", "gzip"});
  auto r = (*opened)->Import(layout);
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == Code::kInvalid);
  CHECK_THAT(r.error().message, Catch::Contains("backing file"));
  CHECK((*opened)->List()->empty());
  for (const auto& e : fs::recursive_directory_iterator(tmp / "cache" / "disks")) {
    FAIL("left behind: " << e.path());
  }
}

}  // namespace
}  // namespace edgevirt::image
