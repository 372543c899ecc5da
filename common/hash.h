// Small non-cryptographic hashes for stable derived names (tap names, MAC addresses, template
// hashes, discovery ETags): deterministic across processes and versions, never for security.
#pragma once

#include <cstdint>
#include <string_view>

namespace edgevirt {

// 64-bit FNV-1a (prime 1099511628211) from the standard offset basis, or from `basis` where a
// value already persisted was computed with another one.
constexpr uint64_t kFnv64OffsetBasis = 0xcbf29ce484222325ull;  // 14695981039346656037
constexpr uint64_t Fnv1a64(std::string_view s, uint64_t basis = kFnv64OffsetBasis) {
  uint64_t h = basis;
  for (char c : s) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ull;
  }
  return h;
}

}  // namespace edgevirt
