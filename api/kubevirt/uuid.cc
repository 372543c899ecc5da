// RFC 4122 UUIDs: the version 5 (SHA-1, RFC 3174) name-based UUID KubeVirt derives firmware UUIDs
// from, and random version 4 UUIDs for VMIs created without one.
#include "api/kubevirt/uuid.h"

#include <array>
#include <cstdint>
#include <cstdio>

#include "api/kubevirt/kubevirt.h"
#include "common/clock.h"

namespace edgevirt::api::kubevirt {
namespace {

uint32_t Rotl(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

std::array<uint8_t, 20> Sha1(const std::vector<uint8_t>& message) {
  uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
  std::vector<uint8_t> m = message;
  uint64_t bit_len = static_cast<uint64_t>(message.size()) * 8;
  m.push_back(0x80);
  while (m.size() % 64 != 56) m.push_back(0);
  for (int i = 7; i >= 0; --i) m.push_back(static_cast<uint8_t>(bit_len >> (i * 8)));
  for (size_t chunk = 0; chunk < m.size(); chunk += 64) {
    uint32_t w[80];
    for (int i = 0; i < 16; ++i) {
      w[i] = (uint32_t{m[chunk + 4 * i]} << 24) | (uint32_t{m[chunk + 4 * i + 1]} << 16) |
             (uint32_t{m[chunk + 4 * i + 2]} << 8) | uint32_t{m[chunk + 4 * i + 3]};
    }
    for (int i = 16; i < 80; ++i) w[i] = Rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; ++i) {
      uint32_t f, k;
      if (i < 20) {
        f = (b & c) | (~b & d);
        k = 0x5A827999;
      } else if (i < 40) {
        f = b ^ c ^ d;
        k = 0x6ED9EBA1;
      } else if (i < 60) {
        f = (b & c) | (b & d) | (c & d);
        k = 0x8F1BBCDC;
      } else {
        f = b ^ c ^ d;
        k = 0xCA62C1D6;
      }
      uint32_t temp = Rotl(a, 5) + f + e + k + w[i];
      e = d;
      d = c;
      c = Rotl(b, 30);
      b = a;
      a = temp;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
  }
  std::array<uint8_t, 20> out{};
  for (int i = 0; i < 5; ++i) {
    for (int j = 0; j < 4; ++j) out[i * 4 + j] = static_cast<uint8_t>(h[i] >> (24 - 8 * j));
  }
  return out;
}

std::string Format(const uint8_t* b) {
  char buf[37];
  std::snprintf(buf, sizeof buf,
                "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
                b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
                b[15]);
  return buf;
}

}  // namespace

bool ParseUuid(std::string_view text, std::array<uint8_t, 16>* out) {
  if (text.size() != 36) return false;
  size_t j = 0;
  for (size_t i = 0; i < 36;) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return false;
      ++i;
      continue;
    }
    auto hex = [](char c) -> int {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    };
    int hi = hex(text[i]), lo = hex(text[i + 1]);
    if (hi < 0 || lo < 0) return false;
    if (out != nullptr) (*out)[j] = static_cast<uint8_t>(hi * 16 + lo);
    ++j;
    i += 2;
  }
  return true;
}

std::string UuidV5(std::string_view namespace_uuid, std::string_view name) {
  std::array<uint8_t, 16> ns{};
  if (!ParseUuid(namespace_uuid, &ns)) return "";
  std::vector<uint8_t> message(ns.begin(), ns.end());
  message.insert(message.end(), name.begin(), name.end());
  std::array<uint8_t, 20> digest = Sha1(message);
  digest[6] = static_cast<uint8_t>((digest[6] & 0x0f) | 0x50);
  digest[8] = static_cast<uint8_t>((digest[8] & 0x3f) | 0x80);
  return Format(digest.data());
}

std::string RandomUuidV4() { return NewUuid(); }

std::string LegacyFirmwareUuid(std::string_view vm_name) {
  return UuidV5("6a1a24a1-4061-4607-8bf4-a3963d0c5895", vm_name);
}

}  // namespace edgevirt::api::kubevirt
