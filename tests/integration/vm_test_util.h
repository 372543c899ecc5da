// Helpers for the tests that boot the test guest through the real edgevirtd: a daemon whose
// config allows hostDisk volumes under the test's own disk directory, VM manifests that boot a
// private copy of the test guest (tests/fixtures/guest), the guest's serial log (the per-VMI
// file <stateDir>/vms/<uid>/serial0.log), the serial console through the daemon's console
// WebSocket, QEMU processes found in /proc, and the subresource requests exactly as virtctl
// v1.0 sends them.
#pragma once

#include <signal.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "tests/integration/kubectl_test_util.h"
#include "tests/support/qemu.h"
#include "tests/support/websocket_client.h"

namespace edgevirt::testing {

inline std::filesystem::path GuestDir() { return EDGEVIRT_GUEST_DIR; }

// A daemon + kubectl whose hostDisk directory holds copies of the test guest.
struct VmEnv {
  // `extra_config`: more top-level YAML for the daemon (e.g. a `storage:` section);
  // `api_config`: more of its `api:` section (see EdgevirtDaemon).
  explicit VmEnv(const std::string& prefix, const std::string& extra_config = "",
                 const std::string& api_config = "")
      : tmp(prefix),
        disks(MakeDisks(tmp)),
        daemon(
            tmp / "daemon", api_config,
            "vms:\n  hostDiskDirs: [" + disks.string() + "]\n  resyncPeriod: 5s\n" + extra_config),
        kubectl(tmp / "kubectl"),
        reaper(tmp.path().string(), EDGEVIRT_BINARY_DIR "/vmm_test_roots") {
    daemon.Start();
    kubectl.SetServer(daemon.url());
  }

  // QEMU runs unprivileged (nobody:kvm) and must traverse the test's directory (made 0700 by
  // mkdtemp) to the daemon's state and to the disks.
  static std::filesystem::path MakeDisks(const TempDir& tmp) {
    REQUIRE(::chmod(tmp.path().c_str(), 0711) == 0);
    std::filesystem::create_directories(tmp / "disks");
    return tmp / "disks";
  }

  // A private copy of the guest's raw disk for VM `name`.
  std::string Disk(const std::string& name) {
    auto path = disks / (name + ".raw");
    if (!std::filesystem::exists(path)) {
      std::filesystem::copy_file(GuestDir() / "guest.raw", path);
    }
    return path.string();
  }

  // A VirtualMachine manifest booting the guest from a hostDisk (JSON, for POST or apply).
  Json VmManifest(const std::string& name, const std::string& run_strategy,
                  const std::string& user_data = "", int grace_seconds = 30) {
    Json spec = {
        {"terminationGracePeriodSeconds", grace_seconds},
        {"domain",
         {{"devices",
           {{"disks", Json::array({{{"name", "root"}, {"disk", {{"bus", "virtio"}}}}})}}},
          {"resources", {{"requests", {{"memory", "256Mi"}}}}}}},
        {"volumes", Json::array({{{"name", "root"},
                                  {"hostDisk", {{"path", Disk(name)}, {"type", "Disk"}}}}})}};
    if (!user_data.empty()) {
      spec["domain"]["devices"]["disks"].push_back(
          {{"name", "cloudinit"}, {"disk", {{"bus", "virtio"}}}});
      spec["volumes"].push_back(
          {{"name", "cloudinit"}, {"cloudInitNoCloud", {{"userData", user_data}}}});
    }
    Json vm = {{"apiVersion", "kubevirt.io/v1"}, {"kind", "VirtualMachine"}};
    vm["metadata"] = {{"name", name}, {"namespace", "default"}};
    vm["spec"]["runStrategy"] = run_strategy;
    vm["spec"]["template"]["metadata"]["labels"]["app"] = name;
    vm["spec"]["template"]["spec"] = spec;
    return vm;
  }

  void Create(const Json& vm) {
    auto r = Http(daemon.url(), "POST", "/apis/kubevirt.io/v1/namespaces/default/virtualmachines",
                  vm.dump());
    INFO(r.error << " " << r.body);
    REQUIRE(r.status == 201);
  }

  // GET of a VM or VMI; null when it does not exist.
  Json Get(const std::string& plural, const std::string& name) {
    auto r =
        Http(daemon.url(), "GET", "/apis/kubevirt.io/v1/namespaces/default/" + plural + "/" + name);
    if (r.status == 404) return Json();
    INFO(r.error << " " << r.body);
    REQUIRE(r.status == 200);
    return ParseJson(r.body);
  }
  Json Vm(const std::string& name) { return Get("virtualmachines", name); }
  Json Vmi(const std::string& name) { return Get("virtualmachineinstances", name); }

  std::string PrintableStatus(const std::string& name) {
    Json vm = Vm(name);
    if (vm.is_null()) return "<gone>";
    return vm.contains("status") ? vm["status"].value("printableStatus", "") : "";
  }
  std::string Phase(const std::string& name) {
    Json vmi = Vmi(name);
    if (vmi.is_null()) return "<gone>";
    return vmi.contains("status") ? vmi["status"].value("phase", "") : "";
  }

  bool WaitPrintable(const std::string& name, const std::string& want,
                     std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
    return WaitUntil([&] { return PrintableStatus(name) == want; }, timeout);
  }
  bool WaitUntilGone(const std::string& name,
                     std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
    return WaitUntil([&] { return Vmi(name).is_null(); }, timeout);
  }
  bool WaitPhase(const std::string& name, const std::string& want,
                 std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
    return WaitUntil([&] { return Phase(name) == want; }, timeout);
  }

  // A subresource request as virtctl v1.0 sends it: PUT (GET for the guest agent queries), a
  // raw JSON body, no Content-Type, Accept "application/json, */*".
  HttpResult Virtctl(const std::string& method, const std::string& plural, const std::string& name,
                     const std::string& sub, const std::string& body) {
    return Http(
        daemon.url(), method,
        "/apis/subresources.kubevirt.io/v1/namespaces/default/" + plural + "/" + name + "/" + sub,
        body, "", std::chrono::seconds(30),
        {"Accept: application/json, */*", "User-Agent: virtctl/v1.0.0 (linux/amd64)"});
  }

  std::filesystem::path VmiDir(const std::string& uid) { return daemon.state_dir() / "vms" / uid; }
  std::string SerialLog(const std::string& uid) { return ReadFile(VmiDir(uid) / "serial0.log"); }

  // Waits until `marker` appears at least `n` times in the VMI's serial log.
  bool WaitSerial(const std::string& uid, const std::string& marker, int n = 1,
                  std::chrono::milliseconds timeout = std::chrono::seconds(300)) {
    return WaitUntil(
        [&] {
          std::string log = SerialLog(uid);
          int count = 0;
          for (size_t p = log.find(marker); p != std::string::npos;
               p = log.find(marker, p + marker.size())) {
            ++count;
          }
          return count >= n;
        },
        timeout);
  }

  // The name of the VMI whose uid is `uid` ("" when no VMI in namespace default has it).
  std::string VmiNameOf(const std::string& uid) {
    auto r = Http(daemon.url(), "GET",
                  "/apis/kubevirt.io/v1/namespaces/default/virtualmachineinstances");
    if (r.status != 200) return "";
    Json list = ParseJson(r.body);
    for (const Json& vmi : list.value("items", Json::array())) {
      if (vmi["metadata"].value("uid", "") == uid) return vmi["metadata"].value("name", "");
    }
    return "";
  }

  // Types `line` and Enter into the guest's serial shell through the daemon's console
  // WebSocket, as `virtctl console` does (.../virtualmachineinstances/<name>/console,
  // subprotocol plain.kubevirt.io, binary frames; a session open before is replaced); output is
  // read from SerialLog. False when the VMI with this uid is gone, the console cannot be opened,
  // or the echo did not come within `timeout`. The session stays
  // open until the shell has echoed the whole line and then moved to a new line for the Enter:
  // QEMU stops reading a pty while nobody holds it open, so input it has not read when the
  // session closes would wait for the next session (a UART under TCG takes a long line slowly).
  bool SerialType(const std::string& uid, const std::string& line,
                  std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
    const std::string name = VmiNameOf(uid);
    if (name.empty()) return false;
    WebSocketClient ws;
    if (!ws.Connect(
            daemon.url(),
            "/apis/subresources.kubevirt.io/v1/namespaces/default/virtualmachineinstances/" + name +
                "/console",
            {{"User-Agent", "virtctl/v1.0.0 (linux/amd64)"}})) {
      return false;
    }
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string seen;
    auto read_until = [&](const std::function<bool()>& done) {
      while (!done()) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) return false;
        auto m = ws.Receive(left);
        if (!m) return false;
        if (m->binary) seen += m->data;
      }
      return true;
    };
    // A fresh prompt, the text, its echo (the line editor wraps long lines), then Enter.
    if (!ws.SendBinary("\n" + line)) return false;
    if (!read_until([&] { return EchoedText(seen).find(line) != std::string::npos; })) return false;
    seen.clear();
    if (!ws.SendBinary("\n")) return false;
    if (!read_until([&] { return seen.find('\n') != std::string::npos; })) return false;
    ws.Close();
    return true;
  }

  // What a terminal shows of `out` on one line: CR and LF dropped, a backspace erasing the
  // character before it, escape sequences (ESC [ ... final byte) removed.
  static std::string EchoedText(std::string_view out) {
    std::string text;
    for (size_t i = 0; i < out.size(); ++i) {
      const char c = out[i];
      if (c == '\r' || c == '\n') continue;
      if (c == '\b') {
        if (!text.empty()) text.pop_back();
        continue;
      }
      if (c == '\x1b') {
        if (i + 1 < out.size() && out[i + 1] == '[') {
          i += 2;
          while (i < out.size() && !(out[i] >= 0x40 && out[i] <= 0x7e)) ++i;
        } else {
          ++i;
        }
        continue;
      }
      text += c;
    }
    return text;
  }

  std::vector<pid_t> Qemus() { return QemuPidsUnder(daemon.state_dir().string()); }

  TempDir tmp;
  std::filesystem::path disks;
  EdgevirtDaemon daemon;
  Kubectl kubectl;
  QemuGuard reaper;
};

}  // namespace edgevirt::testing
