// Shared by store_crash_test (parent) and store_crash_writer (child): the workload's keys and
// bodies and the fixed-size acknowledgement records the child writes to its pipe.
#pragma once

#include <cstdint>
#include <string>

#include "store/store.h"

namespace edgevirt::store::crash {

inline constexpr uint32_t kAckMagic = 0x45564b41;  // "AKVE"
inline constexpr int kAckFd = 3;                   // the child's end of the pipe
inline constexpr int kThreads = 4;
inline constexpr uint32_t kMaxOpsPerThread = 250;  // per run of the writer
inline constexpr char kRawSpace[] = "crash";

enum class AckOp : uint8_t {
  kCreateU = 1,     // created u-<iter>-<t>-<seq>; never touched again
  kCounter = 2,     // k-<t> now holds `value` (created with 0, then CAS-updated by +1)
  kCreateD = 3,     // created d-<iter>-<t>-<seq>
  kDeleteD = 4,     // deleted d-<iter>-<t>-<seq> (rv = the delete's RV)
  kRawCounter = 5,  // raw r-<t> now holds `value`
  kRawU = 6,        // raw ru-<iter>-<t>-<seq> written
  kApply = 7,       // a-<iter>-<t>-<seq>-0 and -1 created in one Apply at rv and rv + 1
  kError = 8,       // the child hit an unexpected error (a test failure); see its stderr
  kReady = 9,       // the store is open; the writer threads start now
};

// One acknowledged write. 40 bytes: far below PIPE_BUF, so each write(2) is atomic and
// records from several threads never interleave.
struct Ack {
  uint32_t magic = kAckMagic;
  uint8_t op = 0;
  uint8_t thread = 0;
  uint16_t reserved = 0;
  uint32_t iter = 0;
  uint32_t seq = 0;
  uint64_t rv = 0;
  uint64_t value = 0;
  uint64_t reserved2 = 0;
};
static_assert(sizeof(Ack) == 40);

inline std::string Name(char prefix, uint32_t iter, uint32_t thread, uint32_t seq) {
  return std::string(1, prefix) + "-" + std::to_string(iter) + "-" + std::to_string(thread) + "-" +
         std::to_string(seq);
}
inline std::string CounterName(uint32_t thread) { return "k-" + std::to_string(thread); }
inline std::string RawCounterName(uint32_t thread) { return "r-" + std::to_string(thread); }

inline ObjectKey Key(const std::string& kind, const std::string& name) {
  return ObjectKey{"crash.edgevirt.io", kind, "crash", name};
}

// Both processes open the store the same way: a tiny initial map (growth happens under the
// kills too) and a short event log (trimming too).
inline Options CrashOptions(const std::string& dir) {
  Options o;
  o.dir = dir;
  o.initial_map_size = 1u << 20;
  o.event_retention_count = 3000;
  return o;
}

// A body that can be checked from the name alone; sizes vary up to ~3 KiB so the map grows.
inline std::string Body(const std::string& name, uint32_t seq) {
  std::string body = "{\"name\":\"" + name + "\",\"pad\":\"";
  body.append((seq * 397) % 3000, static_cast<char>('a' + seq % 26));
  body += "\"}";
  return body;
}

}  // namespace edgevirt::store::crash
