// RAII owners for C handles. A bare handle never outlives the function that obtained it.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <string_view>
#include <utility>

#include "common/result.h"

namespace edgevirt {

// Owns a file descriptor; closes it on destruction. -1 means "none".
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// unique_ptr with a plain function as deleter: UniqueHandle<virDomain, virDomainFree>.
template <typename T, auto Deleter>
struct FnDeleter {
  void operator()(T* p) const {
    if (p) Deleter(p);
  }
};
template <typename T, auto Deleter>
using UniqueHandle = std::unique_ptr<T, FnDeleter<T, Deleter>>;

// Writes all `n` bytes at `offset` (pwrite, retried on EINTR and short writes). Errors name
// `what`: "write <what>: <errno text>".
inline Status WriteAllAt(int fd, const void* data, size_t n, uint64_t offset,
                         std::string_view what) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return ErrnoError("write " + std::string(what), w < 0 ? errno : EIO);
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return Ok();
}

}  // namespace edgevirt
