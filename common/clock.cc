#include "common/clock.h"

#include <sys/random.h>
#include <time.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

namespace edgevirt {

std::string FormatRfc3339(WallClock::time_point t) {
  time_t secs = WallClock::to_time_t(t);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[32];
  strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

Result<WallClock::time_point> ParseRfc3339(const std::string& s) {
  struct tm tm;
  std::memset(&tm, 0, sizeof(tm));
  const char* rest = strptime(s.c_str(), "%Y-%m-%dT%H:%M:%S", &tm);
  if (rest == nullptr) return MakeError(Code::kInvalid, "bad RFC 3339 time \"" + s + "\"");
  int64_t nanos = 0;
  if (*rest == '.') {
    ++rest;
    int digits = 0;
    while (*rest >= '0' && *rest <= '9') {
      if (digits < 9) nanos = nanos * 10 + (*rest - '0');
      ++digits;
      ++rest;
    }
    for (; digits < 9; ++digits) nanos *= 10;
  }
  int64_t offset = 0;
  if (*rest == 'Z' || *rest == 'z') {
    ++rest;
  } else if (*rest == '+' || *rest == '-') {
    int sign = *rest == '-' ? -1 : 1;
    int hh = 0, mm = 0;
    if (std::sscanf(rest + 1, "%2d:%2d", &hh, &mm) != 2) {
      return MakeError(Code::kInvalid, "bad RFC 3339 offset in \"" + s + "\"");
    }
    offset = sign * (hh * 3600 + mm * 60);
    rest += 6;
  } else {
    return MakeError(Code::kInvalid, "RFC 3339 time without zone: \"" + s + "\"");
  }
  if (*rest != '\0') return MakeError(Code::kInvalid, "trailing text in time \"" + s + "\"");
  time_t secs = timegm(&tm) - offset;
  return WallClock::time_point(std::chrono::duration_cast<WallClock::duration>(
      std::chrono::seconds(secs) + std::chrono::nanoseconds(nanos)));
}

std::string NewUuid() {
  unsigned char b[16];
  size_t got = 0;
  while (got < sizeof(b)) {
    ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) std::abort();  // getrandom on a booted kernel does not fail; nothing sane to do
    got += static_cast<size_t>(n);
  }
  b[6] = (b[6] & 0x0f) | 0x40;  // version 4
  b[8] = (b[8] & 0x3f) | 0x80;  // RFC 4122 variant
  char out[37];
  std::snprintf(out, sizeof(out),
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
                b[15]);
  return out;
}

int64_t UnixNanos(WallClock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace edgevirt
