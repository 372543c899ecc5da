#include <fcntl.h>
#include <unistd.h>

#include <regex>
#include <set>

#include "common/common.h"
#include "tests/support/catch.h"

namespace edgevirt {
namespace {

Result<int> Half(int x) {
  if (x % 2 != 0) return MakeError(Code::kInvalid, "odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckEven(int x) {
  RETURN_IF_ERROR(Half(x));
  return Ok();
}

TEST_CASE("Result carries a value or an error and the macros propagate errors") {
  REQUIRE(Quarter(8).value() == 2);
  auto r = Quarter(6);  // 6/2 = 3 is odd
  REQUIRE_FALSE(r.has_value());
  CHECK(r.error().code == Code::kInvalid);
  CHECK(r.error().message == "odd");
  CHECK(CheckEven(4).has_value());
  CHECK(CheckEven(5).error().code == Code::kInvalid);
  CHECK(Half(3).value_or(-1) == -1);
  Error e = MakeError(Code::kNotFound, "vm1");
  CHECK(e.Wrap("get").message == "get: vm1");
  CHECK(e.ToString() == "not found: vm1");
}

TEST_CASE("ErrnoError maps errno to codes and keeps the context") {
  Error e = ErrnoError("open /x", ENOENT);
  CHECK(e.code == Code::kNotFound);
  CHECK(e.message.rfind("open /x: ", 0) == 0);
  CHECK(ErrnoError("x", -EEXIST).code == Code::kAlreadyExists);
  CHECK(ErrnoError("x", EIO).code == Code::kInternal);
}

TEST_CASE("RFC 3339 timestamps round-trip with second precision") {
  auto t = ParseRfc3339("2025-01-02T03:04:05Z");
  REQUIRE(t.has_value());
  CHECK(FormatRfc3339(*t) == "2025-01-02T03:04:05Z");
  auto with_offset = ParseRfc3339("2025-01-02T05:04:05.250+02:00");
  REQUIRE(with_offset.has_value());
  CHECK(FormatRfc3339(*with_offset) == "2025-01-02T03:04:05Z");
  CHECK_FALSE(ParseRfc3339("2025-01-02 03:04:05").has_value());
  CHECK_FALSE(ParseRfc3339("2025-01-02T03:04:05").has_value());
  CHECK_FALSE(ParseRfc3339("2025-01-02T03:04:05Zjunk").has_value());
}

TEST_CASE("NewUuid returns distinct version 4 UUIDs") {
  std::regex re("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    std::string u = NewUuid();
    REQUIRE(std::regex_match(u, re));
    seen.insert(u);
  }
  CHECK(seen.size() == 1000);
}

TEST_CASE("log levels parse and gate records") {
  CHECK(log::ParseLevel("debug").value() == log::Level::kDebug);
  CHECK(log::ParseLevel("warn").value() == log::Level::kWarning);
  CHECK_FALSE(log::ParseLevel("loud").has_value());
  CHECK_FALSE(log::ParseTarget("syslog").has_value());
  log::Configure(log::Level::kWarning, log::Target::kStderr);
  CHECK(log::Enabled(log::Level::kError));
  CHECK_FALSE(log::Enabled(log::Level::kInfo));
  int evaluated = 0;
  auto side_effect = [&] { return ++evaluated; };
  EV_LOG(kDebug) << side_effect();  // disabled: the stream expression is not evaluated
  CHECK(evaluated == 0);
  EV_LOG(kError).Vm("default", "vm1", "u-1") << "shown " << side_effect();
  CHECK(evaluated == 1);
  CHECK(log::ActiveSink() == "stderr");
  log::Configure(log::Level::kInfo, log::Target::kStderr);
}

TEST_CASE("UniqueFd closes what it owns") {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  {
    UniqueFd r(fds[0]);
    UniqueFd w(fds[1]);
    UniqueFd moved = std::move(w);
    CHECK_FALSE(w.valid());
    CHECK(moved.get() == fds[1]);
  }
  CHECK(::fcntl(fds[0], F_GETFD) == -1);
  CHECK(::fcntl(fds[1], F_GETFD) == -1);
}

}  // namespace
}  // namespace edgevirt
