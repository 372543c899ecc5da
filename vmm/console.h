// Streams of a running domain: its serial console through a libvirt stream, and screenshots.
// Part of the public header vmm/vmm.h. No libvirt type appears here.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "common/result.h"

namespace edgevirt::vmm {

// The guest's serial console (virDomainOpenConsole on a non-blocking libvirt stream, driven by
// libvirt's event loop, which the Hypervisor runs). Thread-safe; nothing in it blocks.
//
// Delivery: `on_data` runs on libvirt's event loop thread (so never two at once) and must not
// block; returning false stops reading the console (the READABLE interest is removed, so QEMU's
// own buffer and then the guest's UART are held back) until Resume(). `on_end(reason)` runs
// once when the console ends ("" at end of file, else libvirt's message, e.g. when another
// session took the console over); never after Close().
//
// Writes go into a bounded buffer (kWriteBufferBytes) that the loop drains when the stream is
// writable. Write returns false, taking nothing, when the bytes do not fit; `on_writable` runs
// once when there is room again. A single Write larger than the buffer is taken when the
// buffer is empty.
class ConsoleStream {
 public:
  static constexpr size_t kWriteBufferBytes = 64 * 1024;
  static constexpr size_t kReadChunkBytes = 16 * 1024;

  virtual ~ConsoleStream() = default;  // closes
  virtual void Start(std::function<bool(std::string_view)> on_data,
                     std::function<void(std::string)> on_end) = 0;
  virtual void Resume() = 0;
  virtual bool Write(std::string_view bytes) = 0;
  virtual void OnWritable(std::function<void()> on_writable) = 0;
  // Idempotent. Waits for a running on_data/on_end/on_writable to return unless called from
  // inside one of them; afterwards none runs.
  virtual void Close() = 0;
};

// A screenshot PPM (binary "P6", maxval 1..255, as QEMU's screendump writes it) encoded as a
// PNG (8-bit RGB, no interlace, filter 0, zlib). kInvalid for anything else, or more than
// 16384 pixels in either direction.
Result<std::string> PpmToPng(std::string_view ppm);

// Width and height from a PNG's IHDR chunk; kInvalid when `png` is not a PNG.
struct ImageSize {
  uint32_t width = 0;
  uint32_t height = 0;
};
Result<ImageSize> PngSize(std::string_view png);

}  // namespace edgevirt::vmm
