// virtctl's interactive subresources through the real edgevirtd, against the test guest booted
// under TCG: the serial console, VNC, the screenshot and port-forward, each over a WebSocket
// upgraded exactly as virtctl v1.0 asks for it (subprotocol plain.kubevirt.io, binary frames).
// The daemon runs in the test's private network namespace (see EdgevirtDaemon). The console is
// a libvirt stream on the guest's pty: replaced sessions closed with 1001, the log kept while
// nobody is attached, back-pressure from a client that does not read; and the unix socket
// console of a domain an older edgevirtd started, after a daemon restart.
#include <arpa/inet.h>

#include <cstdio>
#include <cstdlib>
#include <regex>

#include "tests/integration/daemon_test_util.h"
#include "tests/integration/vm_test_util.h"
#include "tests/support/websocket_client.h"

namespace edgevirt::testing {
namespace {

using namespace std::chrono_literals;

std::string Sub(const std::string& plural, const std::string& name, const std::string& sub) {
  return "/apis/subresources.kubevirt.io/v1/namespaces/default/" + plural + "/" + name + "/" + sub;
}

const WebSocketClient::Headers kVirtctl = {{"User-Agent", "virtctl/v1.0.0 (linux/amd64)"}};

// `seq 1 kSeqCount` prints about 590 KB: twice what the console's WebSocket queue (64 KiB), the
// unix socket between the daemon and a client that does not read (about 200 KiB) and the pty
// hold.
constexpr int kSeqCount = 100000;
// What the daemon, the socket and the pty may hold in all while the client reads nothing.
constexpr size_t kHeldBound = 512 * 1024;

// VmRSS of a process in KiB (0 when unknown).
long RssKiB(pid_t pid) {
  const std::string status = ReadFile("/proc/" + std::to_string(pid) + "/status");
  const size_t at = status.find("VmRSS:");
  return at == std::string::npos ? 0 : std::strtol(status.c_str() + at + 6, nullptr, 10);
}

// The RFB 3.8 client side up to the first framebuffer update: version, security type None,
// SecurityResult OK, ClientInit (shared), ServerInit, FramebufferUpdateRequest, then the first
// FramebufferUpdate header. Returns the screen size from ServerInit, or {0,0}.
std::pair<int, int> RfbHandshake(WebSocketClient& ws) {
  std::string in;
  auto need = [&](size_t n) {
    while (in.size() < n) {
      auto m = ws.Receive(20s);
      if (!m) return false;
      if (m->binary) in += m->data;
    }
    return true;
  };
  auto take = [&](size_t n) {
    std::string out = in.substr(0, n);
    in.erase(0, n);
    return out;
  };
  if (!need(12) || take(12) != "RFB 003.008\n") return {0, 0};
  if (!ws.SendBinary("RFB 003.008\n")) return {0, 0};
  if (!need(1)) return {0, 0};
  const auto count = static_cast<unsigned char>(take(1)[0]);
  if (!need(count)) return {0, 0};
  if (take(count).find('\x01') == std::string::npos) return {0, 0};  // None offered
  if (!ws.SendBinary(std::string(1, '\x01'))) return {0, 0};
  if (!need(4) || take(4) != std::string(4, '\0')) return {0, 0};  // SecurityResult OK
  if (!ws.SendBinary(std::string(1, '\x01'))) return {0, 0};       // ClientInit: shared
  if (!need(24)) return {0, 0};
  std::string init = take(24);
  const int w = (static_cast<unsigned char>(init[0]) << 8) | static_cast<unsigned char>(init[1]);
  const int h = (static_cast<unsigned char>(init[2]) << 8) | static_cast<unsigned char>(init[3]);
  uint32_t name_len = 0;
  std::memcpy(&name_len, init.data() + 20, 4);
  if (!need(ntohl(name_len))) return {0, 0};
  take(ntohl(name_len));
  // FramebufferUpdateRequest, not incremental, the whole screen.
  std::string req = {'\x03', '\x00', '\0', '\0', '\0', '\0'};
  req += static_cast<char>(w >> 8);
  req += static_cast<char>(w & 0xff);
  req += static_cast<char>(h >> 8);
  req += static_cast<char>(h & 0xff);
  if (!ws.SendBinary(req)) return {0, 0};
  if (!need(4) || in[0] != '\0') return {0, 0};  // FramebufferUpdate
  return {w, h};
}

TEST_CASE("console, vnc, screenshot and port-forward over WebSockets, as virtctl uses them") {
  // The daemon also listens on a unix socket, for the slow client below: a loopback TCP
  // connection buffers megabytes in the kernel (the sender's autotuned send buffer), a unix one
  // about 200 KiB, so the guest is held back sooner (the daemon closes a WebSocket whose client
  // has not taken a message for 30 s, and the guest prints some 35 KB/s under TCG here).
  TempDir api_dir("vm-streams-api");
  const std::string api_sock = (api_dir.path() / "api.sock").string();
  VmEnv env("vm-streams", "", "    - unix:" + api_sock + "\n");
  std::string url = env.daemon.url();  // a new port after a restart

  // Before the VMI exists: 404 as a Status virtctl can print.
  {
    WebSocketClient ws;
    CHECK_FALSE(ws.Connect(url, Sub("virtualmachineinstances", "s1", "console"), kVirtctl));
    CHECK(ws.status() == 404);
    CHECK(ParseJson(ws.body())["kind"] == "Status");
  }
  env.Create(env.VmManifest("s1", "Always"));
  REQUIRE(env.WaitPhase("s1", "Running"));
  const std::string uid = env.Vmi("s1")["metadata"]["uid"];
  REQUIRE(env.WaitSerial(uid, "EDGE-GUEST-BOOTED", 1, 300s));
  REQUIRE(env.WaitSerial(uid, "DHCP:eth0:", 1, 120s));

  // The serial console (a libvirt stream on QEMU's pty): a command typed into the guest's
  // shell, its answer read back, and logged too.
  WebSocketClient console;
  REQUIRE(console.Connect(url, Sub("virtualmachineinstances", "s1", "console"), kVirtctl));
  CHECK(console.subprotocol() == "plain.kubevirt.io");
  REQUIRE(console.SendBinary("\necho CONSOLE-$((6*7))\n"));
  CHECK(console.ReadUntil("CONSOLE-42", 30s).find("CONSOLE-42") != std::string::npos);
  CHECK(env.WaitSerial(uid, "CONSOLE-42", 1, 10s));
  // Text frames are ignored, not typed.
  REQUIRE(console.SendText("echo TEXT-FRAME-$((1+1))\n"));
  REQUIRE(console.SendBinary("\necho AFTER-$((2+2))\n"));
  std::string after = console.ReadUntil("AFTER-4", 30s);
  CHECK(after.find("AFTER-4") != std::string::npos);
  CHECK(after.find("TEXT-FRAME-2") == std::string::npos);

  // A second console takes over; the first is closed with 1001, on which virtctl gives up
  // instead of reconnecting (libvirt ends the old stream itself; the daemon must end the old
  // session first so that its client never sees a plain end).
  WebSocketClient second;
  REQUIRE(second.Connect(url, Sub("virtualmachineinstances", "s1", "console"), kVirtctl));
  CHECK(console.WaitClosed(10s));
  CHECK(console.close_code() == 1001);
  CHECK(console.close_reason() == "a new console connection replaced this one");
  REQUIRE(second.SendBinary("\necho SECOND-$((3*3))\n"));
  CHECK(second.ReadUntil("SECOND-9", 30s).find("SECOND-9") != std::string::npos);
  // What the guest prints while nobody is attached to the pty is still logged.
  REQUIRE(second.SendBinary("(sleep 3; echo DETACHED-$((5*5))) &\n"));
  CHECK(second.ReadUntil("sleep 3", 30s).find("sleep 3") != std::string::npos);
  second.Close();
  CHECK(env.WaitSerial(uid, "DETACHED-25", 1, 60s));

  // Back-pressure with bounded buffers, guest to client: a client that does not read holds
  // the guest back. The guest prints about twice what the console's WebSocket queue, the unix
  // socket and the pty hold; while the client reads nothing, QEMU's log (which records what the
  // UART got out) stops growing before the end and stays still (a pause of a busy TCG guest
  // would not last), i.e. the guest's UART waits instead of the daemon buffering. Once the
  // client reads, every line arrives once, in order.
  {
    WebSocketClient slow;
    REQUIRE(slow.Connect("unix:" + api_sock, Sub("virtualmachineinstances", "s1", "console"),
                         kVirtctl));
    const long rss_before = RssKiB(env.daemon.pid());
    const size_t log_before = env.SerialLog(uid).size();
    const auto started = std::chrono::steady_clock::now();
    REQUIRE(slow.SendBinary("\nseq 1 " + std::to_string(kSeqCount) + "; echo SEQ-$((1+1))-DONE\n"));
    // Wait until the log stands still for 3 s.
    const auto log_path = env.VmiDir(uid) / "serial0.log";
    auto log_size = [&] {
      std::error_code ec;
      const auto n = std::filesystem::file_size(log_path, ec);
      return ec ? size_t(0) : size_t(n);
    };
    size_t last = 0;
    auto still_since = std::chrono::steady_clock::now();
    REQUIRE(WaitUntil(
        [&] {
          const size_t now = log_size();
          if (now != last) {
            last = now;
            still_since = std::chrono::steady_clock::now();
          }
          return now > log_before && std::chrono::steady_clock::now() - still_since >= 3s;
        },
        240s));
    const std::string held = env.SerialLog(uid);
    const long rss_held = RssKiB(env.daemon.pid());
    std::this_thread::sleep_for(3s);
    CHECK(log_size() == held.size());  // still held
    std::fprintf(stderr,
                 "[vm_streams_test] slow client: the guest was held back after %zu bytes "
                 "(%.1f s); daemon RSS %ld -> %ld KiB\n",
                 held.size() - log_before,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count(),
                 rss_before, rss_held);
    CHECK(held.find("SEQ-2-DONE", log_before) == std::string::npos);
    // Bounded: what got out of the guest is what the queue, the socket and the pty hold; the
    // daemon's memory hardly moves.
    CHECK(held.size() - log_before < kHeldBound);
    CHECK(rss_held - rss_before < 8 * 1024);
    // Now read (searching only the newest bytes: the output is megabytes in small messages).
    std::string got;
    const auto deadline = std::chrono::steady_clock::now() + 300s;
    bool done = false;
    while (!done && std::chrono::steady_clock::now() < deadline) {
      auto m = slow.Receive(10s);
      if (!m) break;
      if (!m->binary) continue;
      const size_t from = got.size() > 16 ? got.size() - 16 : 0;
      got += m->data;
      done = got.find("SEQ-2-DONE", from) != std::string::npos;
    }
    INFO("received " << got.size() << " bytes, closed " << slow.closed() << " ("
                     << slow.close_code() << " " << slow.close_reason() << ")");
    REQUIRE(done);
    std::vector<long> nums;
    for (size_t start = 0; start < got.size();) {
      size_t end = got.find('\n', start);
      if (end == std::string::npos) break;
      std::string line = got.substr(start, end - start);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (!line.empty() && line.find_first_not_of("0123456789") == std::string::npos) {
        nums.push_back(std::stol(line));
      }
      start = end + 1;
    }
    CHECK(nums.size() == size_t(kSeqCount));
    bool in_order = true;
    for (size_t i = 0; i < nums.size(); ++i) in_order = in_order && nums[i] == long(i) + 1;
    CHECK(in_order);
    std::fprintf(stderr, "[vm_streams_test] slow client: %zu bytes, all in %.1f s\n", got.size(),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count());
    slow.Close();
  }

  // VNC: RFB from QEMU's socket, None auth, a framebuffer update.
  {
    WebSocketClient vnc;
    REQUIRE(vnc.Connect(url, Sub("virtualmachineinstances", "s1", "vnc"), kVirtctl));
    auto [w, h] = RfbHandshake(vnc);
    CHECK(w > 0);
    CHECK(h > 0);
  }
  // The screenshot: a PNG.
  {
    auto shot = Http(url, "GET", Sub("virtualmachineinstances", "s1", "vnc/screenshot"));
    REQUIRE(shot.status == 200);
    CHECK(shot.body.rfind("\x89PNG\r\n\x1a\n", 0) == 0);
  }

  // Port-forward to the guest's TCP echo service, by the VM and by the VMI.
  for (const std::string plural : {"virtualmachines", "virtualmachineinstances"}) {
    WebSocketClient pf;
    REQUIRE(pf.Connect(url, Sub(plural, "s1", "portforward/7/tcp"), kVirtctl));
    const std::string msg = "through-port-forward-" + plural + "\n";
    REQUIRE(pf.SendBinary(msg));
    CHECK(pf.ReadUntil(msg, 30s).find(msg) != std::string::npos);
    pf.Close();
  }

  // A paused VMI refuses port-forward with 409.
  auto pause = env.Virtctl("PUT", "virtualmachineinstances", "s1", "pause", "{}");
  REQUIRE(pause.status == 200);
  REQUIRE(WaitUntil(
      [&] {
        WebSocketClient pf;
        return !pf.Connect(url, Sub("virtualmachineinstances", "s1", "portforward/7"), kVirtctl) &&
               pf.status() == 409;
      },
      30s));
  REQUIRE(env.Virtctl("PUT", "virtualmachineinstances", "s1", "unpause", "{}").status == 200);

  // A domain an older edgevirtd started with a unix socket console, still running after an
  // upgrade: the daemon reads the console from libvirt's live XML and relays QEMU's socket.
  // Simulated on s1 while the daemon is down: QEMU's serial chardev becomes a unix server socket
  // (HMP chardev-change) and libvirt's status XML says so, as it says for such a domain. The
  // socket is in vnc/, the one VMI directory QEMU may create files in (an old daemon's was
  // bound by libvirt in the VMI directory; the relay takes the path from the XML).
  {
    env.daemon.Kill();
    const std::string root = (env.daemon.state_dir() / "libvirt").string();
    const std::string sock = (env.VmiDir(uid) / "vnc" / "serial0.sock").string();
    std::filesystem::create_directories(env.tmp / "virsh");
    auto [code, out] = RunCommand({"/usr/bin/virsh", "-c", "qemu:///embed?root=" + root,
                                   "qemu-monitor-command default_s1 --hmp 'chardev-change "
                                   "charserial0 socket,path=" +
                                       sock + ",server=on,wait=off'"},
                                  env.tmp / "virsh", 60s);
    INFO(out);
    REQUIRE(code == 0);
    const auto status_xml = std::filesystem::path(root) / "run" / "qemu" / "default_s1.xml";
    std::string status = ReadFile(status_xml);
    const std::string unix_source = "<source mode='bind' path='" + sock + "'/>";
    std::string changed =
        std::regex_replace(status, std::regex("<serial type='pty'>(\\s*)<source path='[^']*'/>"),
                           "<serial type='unix'>$1" + unix_source);
    changed = std::regex_replace(
        changed, std::regex("<console type='pty' tty='[^']*'>(\\s*)<source path='[^']*'/>"),
        "<console type='unix'>$1" + unix_source);
    REQUIRE(changed != status);
    WriteFile(status_xml, changed);
    env.daemon.Start();
    url = env.daemon.url();
    REQUIRE(env.WaitPhase("s1", "Running"));

    WebSocketClient old;
    const bool connected =
        old.Connect(url, Sub("virtualmachineinstances", "s1", "console"), kVirtctl);
    INFO(old.status() << " " << old.body() << " " << old.error() << "\ndaemon:\n"
                      << env.daemon.Stderr());
    REQUIRE(connected);
    REQUIRE(old.SendBinary("\necho OLD-$((7*6))\n"));
    CHECK(old.ReadUntil("OLD-42", 30s).find("OLD-42") != std::string::npos);
    // QEMU serves one client at a time: the registry's ending of the old session lets the new
    // one through.
    WebSocketClient next;
    REQUIRE(next.Connect(url, Sub("virtualmachineinstances", "s1", "console"), kVirtctl));
    CHECK(old.WaitClosed(10s));
    CHECK(old.close_code() == 1001);
    REQUIRE(next.SendBinary("\necho NEXT-$((8*8))\n"));
    CHECK(next.ReadUntil("NEXT-64", 30s).find("NEXT-64") != std::string::npos);
    next.Close();
  }

  // A stopped VM has no VMI: 404.
  REQUIRE(env.Virtctl("PUT", "virtualmachines", "s1", "stop", "{}").status == 202);
  REQUIRE(env.WaitUntilGone("s1", 180s));
  env.Create(env.VmManifest("s2", "Halted"));
  WebSocketClient halted;
  CHECK_FALSE(halted.Connect(url, Sub("virtualmachineinstances", "s2", "console"), kVirtctl));
  CHECK(halted.status() == 404);
}

}  // namespace
}  // namespace edgevirt::testing
