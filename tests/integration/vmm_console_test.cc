// The serial console stream and screenshots of vmm::Hypervisor against the real parts:
// libvirt's QEMU driver embedded in this process (a fresh root), QEMU under TCG, and the
// project's test guest (a root shell on ttyS0). One boot:
//   - the console (a pty chardev: libvirt 9.0 opens no other kind) is opened while the domain
//     is still paused, so the whole boot is read through it (EDGE-GUEST-BOOTED);
//   - `echo $((6*7))` typed into the shell answers 42;
//   - back-pressure: on_data refuses while the guest prints `seq 1 N`; nothing more arrives
//     while paused, and after Resume every number arrives once, in order;
//   - a second console session takes the console over: the first gets on_end with libvirt's
//     reason, the second works;
//   - QEMU's VNC socket (what daemon/streams relays) speaks RFB 3.8 with None auth and sends a
//     framebuffer update of the same 720x400 screen;
//   - a screenshot is a PNG of the guest's VGA screen: signature, IHDR size, the IDAT
//     decompressed by python3's zlib to exactly height * (1 + 3 * width) bytes.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

#include "common/exec.h"
#include "common/fd.h"
#include "tests/support/catch.h"
#include "tests/support/qemu.h"
#include "vmm/vmm.h"

namespace edgevirt::vmm {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

constexpr auto kBootTimeout = 300s;
constexpr auto kShellTimeout = 60s;
constexpr char kDomain[] = "consolevm";
constexpr int kSeqCount = 20000;

void Log(const std::string& line) { std::fprintf(stderr, "[vmm_console_test] %s\n", line.c_str()); }

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

#define REQUIRE_OK(expr)                                                      \
  do {                                                                        \
    auto&& r_ = (expr);                                                       \
    if (!r_.has_value()) FAIL(#expr << " failed: " << r_.error().ToString()); \
  } while (false)

// Everything a console delivered; on_data accepts while `accept` is set.
class Reader {
 public:
  std::function<bool(std::string_view)> OnData() {
    return [this](std::string_view d) {
      std::lock_guard lock(mu_);
      text_.append(d);
      ++calls_;
      cv_.notify_all();
      return accept_;
    };
  }
  std::function<void(std::string)> OnEnd() {
    return [this](std::string reason) {
      std::lock_guard lock(mu_);
      ++ends_;
      reason_ = std::move(reason);
      cv_.notify_all();
    };
  }
  // Waits until `needle` appears at or after `from`; returns its position or npos.
  size_t WaitFor(const std::string& needle, size_t from, Clock::duration timeout) {
    std::unique_lock lock(mu_);
    size_t pos = std::string::npos;
    cv_.wait_for(lock, timeout, [&] {
      pos = text_.find(needle, std::min(from, text_.size()));
      return pos != std::string::npos;
    });
    return pos;
  }
  bool WaitCalls(int n, Clock::duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return calls_ >= n; });
  }
  bool WaitEnd(Clock::duration timeout) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return ends_ > 0; });
  }
  void set_accept(bool a) {
    std::lock_guard lock(mu_);
    accept_ = a;
  }
  size_t size() {
    std::lock_guard lock(mu_);
    return text_.size();
  }
  std::string text() {
    std::lock_guard lock(mu_);
    return text_;
  }
  int calls() {
    std::lock_guard lock(mu_);
    return calls_;
  }
  int ends() {
    std::lock_guard lock(mu_);
    return ends_;
  }
  std::string reason() {
    std::lock_guard lock(mu_);
    return reason_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::string text_;
  int calls_ = 0;
  int ends_ = 0;
  bool accept_ = true;
  std::string reason_;
};

std::string NewUuid() {
  std::string uuid = ReadFile("/proc/sys/kernel/random/uuid");
  while (!uuid.empty() && uuid.back() == '\n') uuid.pop_back();
  return uuid;
}

fs::path GuestImage() { return fs::path(EDGEVIRT_GUEST_DIR) / "guest.qcow2"; }

DomainSpec GuestSpec(const std::string& root, Accelerator accel) {
  const fs::path disk = fs::path(root) / "root.qcow2";
  std::error_code ec;
  fs::copy_file(GuestImage(), disk, fs::copy_options::overwrite_existing, ec);
  REQUIRE_FALSE(ec);
  DomainSpec spec;
  spec.name = kDomain;
  spec.uuid = NewUuid();
  spec.accelerator = accel;
  spec.memory_bytes = 256ull << 20;
  spec.disks.push_back(DiskSpec{.name = "rootdisk",
                                .path = disk,
                                .format = DiskFormat::kQcow2,
                                .boot_order = 1,
                                .cache = DiskCache::kWriteback});
  // QEMU runs as nobody and binds the VNC socket itself: a directory it may write to.
  const std::string sockets = root + "/sockets";
  fs::create_directories(sockets);
  fs::permissions(sockets, fs::perms::all);
  // A pty: libvirt 9.0's virDomainOpenConsole refuses any other chardev ("is not using a PTY").
  spec.console.kind = ConsoleKind::kPty;
  spec.console.log_path = root + "/console.log";
  spec.vnc_socket_path = sockets + "/vnc.sock";  // VNC, and with it the VGA device
  return spec;
}

// Lines of `text` that are a decimal number, in order.
std::vector<long> Numbers(std::string_view text) {
  std::vector<long> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!line.empty() && line.find_first_not_of("0123456789") == std::string_view::npos) {
      out.push_back(std::stol(std::string(line)));
    }
    start = end + 1;
  }
  return out;
}

// Reads exactly n bytes within 10 s (the fd is blocking; poll bounds each wait).
bool ReadExact(int fd, std::string& out, size_t n) {
  out.clear();
  while (out.size() < n) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 10000) <= 0) return false;
    char buf[4096];
    ssize_t r = ::recv(fd, buf, std::min(sizeof buf, n - out.size()), 0);
    if (r <= 0) return false;
    out.append(buf, size_t(r));
  }
  return true;
}

uint32_t Be(const std::string& s, size_t at, size_t bytes) {
  uint32_t v = 0;
  for (size_t i = 0; i < bytes; ++i) v = v << 8 | uint8_t(s[at + i]);
  return v;
}

TEST_CASE("vmm console stream and screenshot of the running test guest") {
  REQUIRE(fs::exists(GuestImage()));
  edgevirt::testing::QemuTestRoot root("edgevirt-vmm-con");
  HypervisorOptions opts;
  opts.root = root.path() + "/libvirt";
  auto opened = Hypervisor::Open(opts);
  if (!opened) FAIL("open: " << opened.error().ToString());
  Hypervisor& hv = **opened;

  auto not_there = hv.OpenConsole("nosuchdomain");
  REQUIRE_FALSE(not_there);
  CHECK(not_there.error().code == Code::kNotFound);

  DomainSpec spec = GuestSpec(root.path(), hv.accelerator());
  REQUIRE_OK(hv.Define(spec));
  auto stopped = hv.OpenConsole(kDomain);
  REQUIRE_FALSE(stopped);
  CHECK(stopped.error().code == Code::kConflict);
  auto no_shot = hv.Screenshot(kDomain);
  REQUIRE_FALSE(no_shot);
  CHECK(no_shot.error().code == Code::kConflict);

  REQUIRE_OK(hv.StartPaused(kDomain));
  auto console = hv.OpenConsole(kDomain);
  if (!console) FAIL("OpenConsole: " << console.error().ToString());
  Reader reader;
  std::atomic<int> writable{0};
  (*console)->OnWritable([&] { ++writable; });
  (*console)->Start(reader.OnData(), reader.OnEnd());
  REQUIRE_OK(hv.Resume(kDomain));

  const auto boot_start = Clock::now();
  if (reader.WaitFor("EDGE-GUEST-BOOTED", 0, kBootTimeout) == std::string::npos) {
    FAIL("no boot marker through the console; log:\n" << ReadFile(spec.console.log_path));
  }
  Log("booted after " +
      std::to_string(std::chrono::duration<double>(Clock::now() - boot_start).count()) + " s");

  // The shell: wait until a typed command is answered (the shell may start a moment later).
  size_t mark = reader.size();
  size_t answer = std::string::npos;
  for (int attempt = 0; attempt < 10 && answer == std::string::npos; ++attempt) {
    REQUIRE((*console)->Write("echo ANS-$((6*7))-END\n"));
    answer = reader.WaitFor("ANS-42-END", mark, 6s);
  }
  if (answer == std::string::npos) FAIL("no answer from the shell; got:\n" << reader.text());
  Log("the shell answered 42");

  {  // back-pressure: nothing is read while on_data refuses, nothing lost after Resume
    mark = reader.size();
    const int calls_before = reader.calls();
    reader.set_accept(false);
    REQUIRE((*console)->Write("seq 1 " + std::to_string(kSeqCount) + "; echo SEQ-$((1+1))-DONE\n"));
    REQUIRE(reader.WaitCalls(calls_before + 1, kShellTimeout));
    const int calls_paused = reader.calls();
    const size_t size_paused = reader.size();
    std::this_thread::sleep_for(3s);  // the guest keeps printing meanwhile
    CHECK(reader.calls() == calls_paused);
    CHECK(reader.size() == size_paused);
    reader.set_accept(true);
    (*console)->Resume();
    size_t done = reader.WaitFor("SEQ-2-DONE", mark, 300s);
    if (done == std::string::npos) FAIL("seq never finished; got " << reader.size() << " bytes");
    std::vector<long> nums = Numbers(std::string_view(reader.text()).substr(mark, done - mark));
    REQUIRE(nums.size() == size_t(kSeqCount));
    bool in_order = true;
    for (int i = 0; i < kSeqCount; ++i) in_order = in_order && nums[size_t(i)] == i + 1;
    CHECK(in_order);
    Log("seq 1 " + std::to_string(kSeqCount) + ": all lines in order after a 3 s pause");
  }

  {  // a screenshot is a PNG of the guest's screen
    auto png = hv.Screenshot(kDomain);
    if (!png) FAIL("Screenshot: " << png.error().ToString());
    REQUIRE(png->substr(0, 8) == std::string("\x89PNG\r\n\x1a\n", 8));
    auto size = PngSize(*png);
    REQUIRE(size);
    Log("screenshot " + std::to_string(size->width) + "x" + std::to_string(size->height) + ", " +
        std::to_string(png->size()) + " bytes");
    // The guest never leaves VGA text mode (console=ttyS0): 80x25 cells of 9x16 pixels.
    CHECK(size->width == 720);
    CHECK(size->height == 400);
    const std::string file = root.path() + "/shot.png";
    std::ofstream(file, std::ios::binary) << *png;
    const std::string script =
        "import sys, zlib, struct\n"
        "d = open(sys.argv[1], 'rb').read()\n"
        "assert d[:8] == b'\\x89PNG\\r\\n\\x1a\\n'\n"
        "p, idat, w, h = 8, b'', 0, 0\n"
        "while p < len(d):\n"
        "    n, t = struct.unpack('>I4s', d[p:p+8]); body = d[p+8:p+8+n]\n"
        "    assert zlib.crc32(t + body) == struct.unpack('>I', d[p+8+n:p+12+n])[0], t\n"
        "    if t == b'IHDR': w, h = struct.unpack('>II', body[:8])\n"
        "    if t == b'IDAT': idat += body\n"
        "    p += 12 + n\n"
        "raw = zlib.decompress(idat)\n"
        "assert len(raw) == h * (1 + 3 * w), (len(raw), w, h)\n"
        "print(w, h)\n";
    auto run = Exec({"python3", "-c", script, file});
    REQUIRE(run);
    INFO(run->stderr_text);
    CHECK(run->ok());
    CHECK(run->stdout_text ==
          std::to_string(size->width) + " " + std::to_string(size->height) + "\n");
  }

  {  // QEMU's VNC socket speaks RFB: banner, None auth, ServerInit, a framebuffer update
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, spec.vnc_socket_path.c_str(), sizeof a.sun_path - 1);
    REQUIRE(::connect(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    std::string in;
    REQUIRE(ReadExact(fd.get(), in, 12));
    CHECK(in == "RFB 003.008\n");
    REQUIRE(::send(fd.get(), "RFB 003.008\n", 12, 0) == 12);
    REQUIRE(ReadExact(fd.get(), in, 1));
    const size_t ntypes = uint8_t(in[0]);
    REQUIRE(ntypes > 0);
    REQUIRE(ReadExact(fd.get(), in, ntypes));
    CHECK(in.find('\x01') != std::string::npos);  // None
    REQUIRE(::send(fd.get(), "\x01", 1, 0) == 1);
    REQUIRE(ReadExact(fd.get(), in, 4));
    CHECK(Be(in, 0, 4) == 0);                      // SecurityResult OK
    REQUIRE(::send(fd.get(), "\x01", 1, 0) == 1);  // ClientInit, shared
    REQUIRE(ReadExact(fd.get(), in, 24));
    const uint32_t w = Be(in, 0, 2), h = Be(in, 2, 2), name_len = Be(in, 20, 4);
    CHECK(w == 720);
    CHECK(h == 400);
    std::string name;
    REQUIRE(ReadExact(fd.get(), name, name_len));
    const char req[10] = {3, 0, 0, 0, 0, 0, char(w >> 8), char(w), char(h >> 8), char(h)};
    REQUIRE(::send(fd.get(), req, sizeof req, 0) == 10);
    REQUIRE(ReadExact(fd.get(), in, 4));
    CHECK(in[0] == 0);  // FramebufferUpdate
    CHECK(Be(in, 2, 2) >= 1);
    Log("VNC: RFB 3.8, None auth, " + std::to_string(w) + "x" + std::to_string(h) + " \"" + name +
        "\", a framebuffer update with " + std::to_string(Be(in, 2, 2)) + " rectangles");
  }

  {  // a second console session ends the first (last: the first console is gone after it)
    auto second = hv.OpenConsole(kDomain);
    if (!second) FAIL("second OpenConsole: " << second.error().ToString());
    Reader reader2;
    (*second)->Start(reader2.OnData(), reader2.OnEnd());
    REQUIRE(reader.WaitEnd(20s));
    Log("first console ended: \"" + reader.reason() + "\"");
    CHECK(reader.ends() == 1);
    mark = reader2.size();
    size_t a2 = std::string::npos;
    for (int attempt = 0; attempt < 5 && a2 == std::string::npos; ++attempt) {
      REQUIRE((*second)->Write("echo TWO-$((7*6))-END\n"));
      a2 = reader2.WaitFor("TWO-42-END", mark, 6s);
    }
    CHECK(a2 != std::string::npos);
    (*second)->Close();
    (*second)->Close();
    CHECK(reader2.ends() == 0);
  }

  (*console)->Close();  // already ended: harmless
  (*console)->Close();  // idempotent
  REQUIRE_OK(hv.Destroy(kDomain));
  REQUIRE_OK(hv.Undefine(kDomain));
}

}  // namespace
}  // namespace edgevirt::vmm
