// virtctl's interactive subresources through the real edgevirtd, against the test guest booted
// under TCG: the serial console, VNC, the screenshot and port-forward, each over a WebSocket
// upgraded exactly as virtctl v1.0 asks for it (subprotocol plain.kubevirt.io, binary frames).
// The daemon runs in the test's private network namespace (see EdgevirtDaemon).
#include <arpa/inet.h>

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
  VmEnv env("vm-streams");
  const std::string url = env.daemon.url();

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

  // The serial console: a command typed into the guest's shell, its answer read back.
  WebSocketClient console;
  REQUIRE(console.Connect(url, Sub("virtualmachineinstances", "s1", "console"), kVirtctl));
  CHECK(console.subprotocol() == "plain.kubevirt.io");
  REQUIRE(console.SendBinary("\necho CONSOLE-$((6*7))\n"));
  CHECK(console.ReadUntil("CONSOLE-42", 30s).find("CONSOLE-42") != std::string::npos);
  // Text frames are ignored, not typed.
  REQUIRE(console.SendText("echo TEXT-FRAME-$((1+1))\n"));
  REQUIRE(console.SendBinary("\necho AFTER-$((2+2))\n"));
  std::string after = console.ReadUntil("AFTER-4", 30s);
  CHECK(after.find("AFTER-4") != std::string::npos);
  CHECK(after.find("TEXT-FRAME-2") == std::string::npos);

  // A second console takes over; the first is closed.
  WebSocketClient second;
  REQUIRE(second.Connect(url, Sub("virtualmachineinstances", "s1", "console"), kVirtctl));
  CHECK(console.WaitClosed(10s));
  REQUIRE(second.SendBinary("\necho SECOND-$((3*3))\n"));
  CHECK(second.ReadUntil("SECOND-9", 30s).find("SECOND-9") != std::string::npos);
  second.Close();

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
