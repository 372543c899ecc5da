// The device side of the VMI streams behind api::Stream (api/stream.h): the serial console
// (wrapping vmm::ConsoleStream), VNC (QEMU's VNC unix socket), port-forward (a TCP connection,
// or a connected UDP socket with one datagram per Write / on_data), and the registry that keeps
// one console and one VNC session per VMI. The controller's VmiRuntime::OpenStream picks the
// device and calls these; nothing here knows KubeVirt objects.
//
// fd streams: one thread per stream polls the socket and an eventfd (woken by Write, Resume,
// Close). Reads stop while on_data has returned false. Write sends on the caller's thread when
// nothing is buffered; what the socket does not take waits in a bounded buffer
// (kStreamWriteBufferBytes; Write returns false when full, on_writable fires once there is
// room) for the stream's thread.
// on_data, on_end and on_writable run on the stream's thread; Close (and the destructor) wait
// for it to finish unless called from inside one of those callbacks.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "api/stream.h"
#include "common/result.h"
#include "vmm/vmm.h"

namespace edgevirt::daemon {

inline constexpr size_t kStreamWriteBufferBytes = 64 * 1024;
// The largest UDP datagram relayed (one on_data call each); bigger ones are truncated by the
// kernel as for any recv.
inline constexpr size_t kMaxDatagramBytes = 65535;

// The VMI's QEMU VNC socket (DomainSpec::vnc_socket_path). kUnavailable when nothing listens
// (yet), kInvalid for a path that is not absolute or too long for sockaddr_un.
Result<std::unique_ptr<api::Stream>> OpenUnixStream(const std::string& path);
// A TCP connection to ip:port (IPv4 or IPv6 literal), connected within `timeout`; `mark`
// (non-zero) is set as the socket's SO_MARK (net::kPortForwardMark for port-forward).
// kInvalid (bad address or port 0), kUnavailable (refused, unreachable, timeout).
Result<std::unique_ptr<api::Stream>> OpenTcpStream(
    const std::string& ip, uint16_t port,
    std::chrono::milliseconds timeout = std::chrono::seconds(5), uint32_t mark = 0);
// A UDP socket connected to ip:port: each Write is one datagram, each on_data one datagram.
// ICMP port unreachable ends the stream with a reason. `mark` as for OpenTcpStream.
Result<std::unique_ptr<api::Stream>> OpenUdpStream(const std::string& ip, uint16_t port,
                                                   uint32_t mark = 0);
// The console of vmm (libvirt stream) as an api::Stream.
std::unique_ptr<api::Stream> WrapConsole(std::unique_ptr<vmm::ConsoleStream> console);
// The serial console of the running domain `domain`, whose console is `console` (as
// Hypervisor::LiveConsole reads it from the live XML: what the domain was started with):
//  - kPty (what vmi_domain.cc defines): a libvirt console stream (Hypervisor::OpenConsole,
//    VIR_DOMAIN_CONSOLE_FORCE: libvirt ends a stream another client holds on it);
//  - kUnix (domains an older edgevirtd started, still running after an upgrade): QEMU's chardev
//    socket itself (OpenUnixStream), since libvirt 9.0's virDomainOpenConsole refuses every
//    chardev but a pty ("character device console0 is not using a PTY"). QEMU serves one client
//    at a time on it and accepts the next when that one leaves (checked by hand with QEMU 7.2),
//    so the SessionRegistry's closing of the previous session is what lets a new one through.
//  - kNone: kNotFound ("no serial console": autoattachSerialConsole false).
Result<std::unique_ptr<api::Stream>> OpenSerialConsole(vmm::Hypervisor& hv, std::string_view domain,
                                                       const vmm::ConsoleSpec& console);

// One console and one VNC session per VMI: Adopt returns `stream` wrapped; a session that was
// registered earlier for the same (uid, kind) is closed and its client gets on_end(reason of
// the kind, see ReplacedReason). A wrapped stream leaves the registry when it is closed or
// destroyed. Thread-safe; streams may outlive the registry.
class SessionRegistry {
 public:
  SessionRegistry();
  ~SessionRegistry();
  SessionRegistry(const SessionRegistry&) = delete;
  SessionRegistry& operator=(const SessionRegistry&) = delete;

  std::unique_ptr<api::Stream> Adopt(const std::string& vmi_uid, std::string_view kind,
                                     std::unique_ptr<api::Stream> stream);
  // Ends the session registered for (uid, kind), if any, as Adopt would (its client gets
  // on_end(ReplacedReason(kind))), THEN calls `open` and adopts the stream it returns; `open`'s
  // error is returned as is (the old session stays ended). For devices that take the device
  // away from the old client themselves when the new one opens: libvirt's
  // VIR_DOMAIN_CONSOLE_FORCE ends the old console stream with a plain end of file, which its
  // client (virtctl: any close but 1001) would take as a reason to reconnect and take the
  // console back, for ever. Ended first, the old client always sees the replaced reason.
  Result<std::unique_ptr<api::Stream>> Open(
      const std::string& vmi_uid, std::string_view kind,
      const std::function<Result<std::unique_ptr<api::Stream>>()>& open);
  // Sessions currently registered (for tests and metrics).
  size_t size() const;
  // "a new <kind> connection replaced this one".
  static std::string ReplacedReason(std::string_view kind);

  struct State;

 private:
  std::shared_ptr<State> state_;
};

}  // namespace edgevirt::daemon
