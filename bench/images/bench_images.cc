// bench_images: pull throughput of one incompressible layer from a loopback registry, edgevirt's
// registry client against curl(1) of the same blob URL and `skopeo copy` of the same image
// into an OCI directory, in the same run; plus the peak RSS growth of our puller. Prints one
// JSON object on stdout; progress goes to stderr.
//
//   bench_images [--size BYTES|NM|NG] [--dir DIR] [--keep] [--buffered]
//
// --buffered: the puller writes through the page cache only (no O_DIRECT), as it does where
// the file system refuses O_DIRECT; for comparing the two write paths on one machine.
//
// The layer is a gzip stream of stored (uncompressed) deflate blocks of random bytes: valid
// gzip that nothing can shrink, so skopeo copies it as is. The registry is Debian's
// docker-registry (tests/fixtures/registry/start-registry.sh) on 127.0.0.1, plain HTTP.
// curl writes to the page cache only; "curl_then_sync" adds sync(1) of the file, the durability
// our puller pays (every blob is fdatasync()ed before it enters blobs/).
// Our puller runs in a forked child that resets its VmHWM (/proc/self/clear_refs 5) before
// the pull, so the reported growth is the pull's own.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/exec.h"
#include "image/content.h"
#include "image/index.h"
#include "image/manifest.h"
#include "image/reference.h"
#include "image/registry.h"
#include "tests/support/net.h"

extern char** environ;

namespace edgevirt::bench {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;
using Clock = std::chrono::steady_clock;

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "bench_images: %s\n", message.c_str());
  std::exit(1);
}

struct Flags {
  uint64_t size = uint64_t{4} << 30;
  std::string dir;
  bool keep = false;
  bool buffered = false;
};

uint64_t ParseSize(const std::string& s) {
  char* end = nullptr;
  uint64_t v = std::strtoull(s.c_str(), &end, 10);
  std::string unit = end;
  if (unit == "K" || unit == "k")
    v <<= 10;
  else if (unit == "M" || unit == "m")
    v <<= 20;
  else if (unit == "G" || unit == "g")
    v <<= 30;
  else if (!unit.empty())
    Die("bad size " + s);
  if (v < (1u << 20)) Die("size must be at least 1M");
  return v;
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die("missing value for " + a);
      return argv[++i];
    };
    if (a == "--size")
      f.size = ParseSize(value());
    else if (a == "--dir")
      f.dir = value();
    else if (a == "--keep")
      f.keep = true;
    else if (a == "--buffered")
      f.buffered = true;
    else
      Die("usage: bench_images [--size BYTES|NM|NG] [--dir DIR] [--keep] [--buffered]");
  }
  return f;
}

ExecResult MustRun(const std::vector<std::string>& argv, std::chrono::seconds timeout) {
  auto r = ExecChecked(argv, ExecOptions{.timeout = timeout});
  if (!r) Die(r.error().ToString());
  return *r;
}

void WriteFile(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary);
  out << s;
  if (!out) Die("write " + p.string());
}

// Writes a gzip member of stored deflate blocks holding `size` random bytes; returns the
// uncompressed CRC-free digest inputs: (compressed path written).
uint64_t WriteIncompressibleGzip(const fs::path& path, uint64_t payload) {
  std::ofstream out(path, std::ios::binary);
  const unsigned char header[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff};
  out.write(reinterpret_cast<const char*>(header), sizeof header);
  std::mt19937_64 rng(42);
  std::vector<uint64_t> words(65535 / 8 + 1);
  uLong crc = crc32(0, nullptr, 0);
  uint64_t left = payload, written = sizeof header;
  while (left > 0) {
    uint16_t n = static_cast<uint16_t>(std::min<uint64_t>(left, 65535));
    for (auto& w : words) w = rng();
    const char* data = reinterpret_cast<const char*>(words.data());
    unsigned char bh[5] = {static_cast<unsigned char>(left == n ? 1 : 0),
                           static_cast<unsigned char>(n & 0xff), static_cast<unsigned char>(n >> 8),
                           static_cast<unsigned char>(~n & 0xff),
                           static_cast<unsigned char>((~n >> 8) & 0xff)};
    out.write(reinterpret_cast<const char*>(bh), 5);
    out.write(data, n);
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data), n);
    left -= n;
    written += 5 + n;
  }
  uint32_t isize = static_cast<uint32_t>(payload & 0xffffffffu);
  uint32_t c = static_cast<uint32_t>(crc);
  unsigned char trailer[8] = {
      static_cast<unsigned char>(c),           static_cast<unsigned char>(c >> 8),
      static_cast<unsigned char>(c >> 16),     static_cast<unsigned char>(c >> 24),
      static_cast<unsigned char>(isize),       static_cast<unsigned char>(isize >> 8),
      static_cast<unsigned char>(isize >> 16), static_cast<unsigned char>(isize >> 24)};
  out.write(reinterpret_cast<const char*>(trailer), 8);
  if (!out) Die("write " + path.string());
  return written + 8;
}

std::string FileDigest(const fs::path& p) {
  auto r = MustRun({"sha256sum", p.string()}, std::chrono::seconds(3600));
  return "sha256:" + r.stdout_text.substr(0, 64);
}

std::string OciBlob(const fs::path& oci, const std::string& content) {
  std::string d = image::Sha256Digest(content);
  WriteFile(oci / "blobs" / "sha256" / d.substr(7), content);
  return d;
}

long VmHwmKib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

// User + system CPU seconds of `who` (RUSAGE_SELF: every thread of this process;
// RUSAGE_CHILDREN: the children waited for so far).
double CpuSeconds(int who) {
  struct rusage ru;
  ::getrusage(who, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

ordered_json Figure(uint64_t bytes, double seconds) {
  return ordered_json{{"seconds", seconds},
                      {"mib_per_s", static_cast<double>(bytes) / (1 << 20) / seconds}};
}

int Main(int argc, char** argv) {
  Flags flags = ParseFlags(argc, argv);
  fs::path work = flags.dir.empty() ? fs::path("/var/tmp") : fs::path(flags.dir);
  std::string tmpl = (work / "bench-images-XXXXXX").string();
  if (::mkdtemp(tmpl.data()) == nullptr) Die("mkdtemp under " + work.string());
  work = tmpl;
  const std::string fixtures = std::string(EDGEVIRT_SOURCE_DIR) + "/tests/fixtures/registry";

  // Registry.
  int port = testing::FreeLoopbackPort();
  if (port < 0) Die("no free port");
  std::string host = "127.0.0.1:" + std::to_string(port);
  pid_t registry = -1;
  {
    std::string script = fixtures + "/start-registry.sh", dir = (work / "registry").string(),
                p = std::to_string(port), mode = "none", log = (work / "registry.log").string();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    char* args[] = {script.data(), dir.data(), p.data(), mode.data(), nullptr};
    if (posix_spawn(&registry, script.c_str(), &fa, nullptr, args, environ) != 0)
      Die("spawn registry");
    posix_spawn_file_actions_destroy(&fa);
    for (int i = 0; i < 200 && !testing::LoopbackPortOpen(port); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    if (!testing::LoopbackPortOpen(port)) Die("registry did not start");
  }
  auto cleanup = [&] {
    ::kill(registry, SIGTERM);
    ::waitpid(registry, nullptr, 0);
    if (!flags.keep) {
      std::error_code ec;
      fs::remove_all(work, ec);
    }
  };

  // Image: one incompressible gzip layer, pushed with skopeo.
  std::fprintf(stderr, "bench_images: making a %llu-byte layer\n",
               static_cast<unsigned long long>(flags.size));
  fs::path oci = work / "src";
  fs::create_directories(oci / "blobs" / "sha256");
  fs::path layer_tmp = work / "layer.gz";
  uint64_t layer_size = WriteIncompressibleGzip(layer_tmp, flags.size);
  std::string layer = FileDigest(layer_tmp);
  fs::rename(layer_tmp, oci / "blobs" / "sha256" / layer.substr(7));
  WriteFile(oci / "oci-layout", R"({"imageLayoutVersion":"1.0.0"})");
  std::string config = OciBlob(
      oci,
      R"({"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}})");
  std::string manifest_body = ordered_json{
      {"schemaVersion", 2},
      {"mediaType", image::kOciManifest},
      {"config",
       {{"mediaType", "application/vnd.oci.image.config.v1+json"},
        {"digest", config},
        {"size", fs::file_size(oci / "blobs" / "sha256" / config.substr(7))}}},
      {"layers",
       {{{"mediaType", "application/vnd.oci.image.layer.v1.tar+gzip"},
         {"digest", layer},
         {"size", layer_size}}}}}.dump();
  std::string manifest = OciBlob(oci, manifest_body);
  WriteFile(oci / "index.json",
            ordered_json{{"schemaVersion", 2},
                         {"manifests",
                          {{{"mediaType", image::kOciManifest},
                            {"digest", manifest},
                            {"size", manifest_body.size()},
                            {"annotations", {{"org.opencontainers.image.ref.name", "v1"}}}}}}}
                .dump());
  std::fprintf(stderr, "bench_images: pushing\n");
  MustRun({"skopeo", "copy", "-q", "--dest-tls-verify=false", "oci:" + oci.string() + ":v1",
           "docker://" + host + "/bench/disk:v1"},
          std::chrono::seconds(3600));
  fs::remove_all(oci);

  // curl of the blob URL (also warms the registry's page cache for the runs after it).
  std::string blob_url = "http://" + host + "/v2/bench/disk/blobs/" + layer;
  fs::path curl_out = work / "curl.out";
  const double children_cpu = CpuSeconds(RUSAGE_CHILDREN);
  auto t0 = Clock::now();
  MustRun({"curl", "-sSf", "-o", curl_out.string(), blob_url}, std::chrono::seconds(3600));
  double curl_s = Seconds(t0, Clock::now());
  const double curl_cpu = CpuSeconds(RUSAGE_CHILDREN) - children_cpu;
  if (fs::file_size(curl_out) != layer_size) Die("curl got a short blob");
  fs::remove(curl_out);
  // The same, made durable like our blobs (curl, then sync(1) of the file): our puller
  // fdatasyncs every blob before it enters blobs/, plain curl leaves it in the page cache.
  t0 = Clock::now();
  MustRun({"curl", "-sSf", "-o", curl_out.string(), blob_url}, std::chrono::seconds(3600));
  MustRun({"sync", curl_out.string()}, std::chrono::seconds(3600));
  double curl_sync_s = Seconds(t0, Clock::now());
  fs::remove(curl_out);

  // edgevirt, in a child.
  std::fprintf(stderr, "bench_images: edgevirt pull\n");
  int fds[2];
  if (::pipe(fds) != 0) Die("pipe");
  pid_t child = ::fork();
  if (child == 0) {
    ::close(fds[0]);
    std::ofstream("/proc/self/clear_refs") << "5";
    long before = VmHwmKib();
    fs::path store_dir = work / "edgevirt";
    auto index = image::internal::Index::Open(store_dir / "index");
    if (!index) ::_exit(2);
    image::ContentStore store(store_dir, index->get());
    if (flags.buffered) store.DisableDirectIoForTest();
    image::ClientOptions o;
    o.registries.push_back(image::RegistryHost{host, true, false, ""});
    image::RegistryClient client(o);
    auto ref = image::ParseReference(host + "/bench/disk:v1");
    auto start = Clock::now();
    const double cpu_start = CpuSeconds(RUSAGE_SELF);
    auto m = client.Resolve(*ref, {});
    std::string err;
    if (!m) {
      err = m.error().ToString();
    } else {
      Status st = client.FetchBlob(*ref, m->layers[0], store, {}, nullptr, nullptr);
      if (!st) err = st.error().ToString();
    }
    double secs = Seconds(start, Clock::now());
    bool ok = err.empty() && store.Has(layer);
    std::string out = ordered_json{
        {"ok", ok},
        {"error", err},
        {"seconds", secs},
        {"cpu_seconds", CpuSeconds(RUSAGE_SELF) - cpu_start},
        {"hwm_before_kib", before},
        {"hwm_after_kib",
         VmHwmKib()}}.dump();
    (void)::write(fds[1], out.data(), out.size());
    ::_exit(ok ? 0 : 1);
  }
  ::close(fds[1]);
  std::string child_out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buf, sizeof buf)) > 0) child_out.append(buf, static_cast<size_t>(n));
  ::close(fds[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  auto ours = nlohmann::json::parse(child_out, nullptr, false);
  if (ours.is_discarded() || !ours["ok"].get<bool>()) {
    cleanup();
    Die("edgevirt pull failed: " + child_out);
  }
  // The pulled blob is verified by FetchBlob; check it independently too.
  if (FileDigest(work / "edgevirt" / "blobs" / "sha256" / layer.substr(7)) != layer) {
    cleanup();
    Die("edgevirt blob digest mismatch");
  }
  fs::remove_all(work / "edgevirt");

  // skopeo copy into an OCI directory.
  std::fprintf(stderr, "bench_images: skopeo copy\n");
  t0 = Clock::now();
  MustRun({"skopeo", "copy", "-q", "--src-tls-verify=false", "docker://" + host + "/bench/disk:v1",
           "oci:" + (work / "skopeo").string() + ":v1"},
          std::chrono::seconds(3600));
  double skopeo_s = Seconds(t0, Clock::now());
  if (!fs::exists(work / "skopeo" / "blobs" / "sha256" / layer.substr(7))) {
    cleanup();
    Die("skopeo did not store the layer as is");
  }
  cleanup();

  double ours_s = ours["seconds"].get<double>();
  long growth = ours["hwm_after_kib"].get<long>() - ours["hwm_before_kib"].get<long>();
  double vs_curl = curl_s / ours_s, vs_skopeo = skopeo_s / ours_s;
  ordered_json out = {{"bench", "images"},
                      {"layer_bytes", layer_size},
                      {"puller_o_direct_allowed", !flags.buffered},
                      {"edgevirt", Figure(layer_size, ours_s)},
                      {"curl", Figure(layer_size, curl_s)},
                      {"curl_then_sync", Figure(layer_size, curl_sync_s)},
                      {"skopeo", Figure(layer_size, skopeo_s)},
                      {"ratio_vs_curl", vs_curl},
                      {"ratio_vs_curl_then_sync", curl_sync_s / ours_s},
                      {"ratio_vs_skopeo", vs_skopeo},
                      {"edgevirt_rss_growth_kib", growth},
                      {"targets",
                       {{"ratio_vs_curl_ge_0_9", vs_curl >= 0.9},
                        {"ratio_vs_skopeo_ge_1_5", vs_skopeo >= 1.5},
                        {"rss_growth_lt_32_mib", growth < 32 * 1024}}}};
  out["edgevirt"]["rss_growth_kib"] = growth;
  // CPU time per MiB (user + system of the process, all threads; kernel writeback done later
  // by flusher threads is not in curl's): steadier than throughput on a shared machine.
  const double mib = static_cast<double>(layer_size) / (1 << 20);
  out["edgevirt"]["cpu_ms_per_mib"] = ours["cpu_seconds"].get<double>() * 1000 / mib;
  out["curl"]["cpu_ms_per_mib"] = curl_cpu * 1000 / mib;
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace edgevirt::bench

int main(int argc, char** argv) { return edgevirt::bench::Main(argc, argv); }
