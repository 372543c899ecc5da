#pragma once
#include <functional>
#include <memory>
#include <string>
#include <string_view>
namespace edgevirt::api {
// A bidirectional byte stream between one WebSocket and one VMI device (serial console, VNC
// socket, a TCP/UDP connection to the VM). Thread-safe. For UDP port-forward every Write is
// one datagram and every on_data call one datagram; otherwise bytes with no boundaries.
class Stream {
 public:
  virtual ~Stream() = default;  // closes (as Close)
  // Starts delivery from the device: `on_data(bytes)` runs on a thread of the stream (never two
  // at once); when it returns false the stream stops reading the device until Resume().
  // `on_end(reason)` runs once when the device side ends ("" for a normal end of file, else a
  // message, e.g. "a new console connection replaced this one"); no on_data after it. Call once.
  virtual void Start(std::function<bool(std::string_view)> on_data,
                     std::function<void(std::string)> on_end) = 0;
  virtual void Resume() = 0;
  // Bytes from the client to the device. Returns false when the stream's bounded write buffer
  // is full: nothing was taken; the caller stops reading its socket and retries after the
  // stream calls `on_writable` (set with OnWritable before the first Write).
  virtual bool Write(std::string_view bytes) = 0;
  virtual void OnWritable(std::function<void()> on_writable) = 0;
  // Ends the stream from the client side. Idempotent; on_end is not called after Close.
  virtual void Close() = 0;
};
}  // namespace edgevirt::api
