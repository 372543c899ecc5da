#include "vmm/check.h"

#include <algorithm>

#include "vmm/xml_writer.h"

namespace edgevirt::vmm {
namespace {

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

}  // namespace

bool AllOf(std::string_view s, std::string_view extra) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [&](char c) {
    return IsAlnum(c) || extra.find(c) != std::string_view::npos;
  });
}

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

Status CheckPath(std::string_view field, const std::string& path) {
  if (path.empty()) return Invalid(std::string(field) + ": must not be empty");
  if (!IsXmlSafe(path)) {
    return Invalid(std::string(field) + ": contains a control character or invalid UTF-8");
  }
  if (path.front() != '/') {
    return Invalid(std::string(field) + ": " + Quote(path) + " is not an absolute path");
  }
  size_t start = 1;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (path.compare(start, end - start, "..") == 0) {
      return Invalid(std::string(field) + ": " + Quote(path) + " contains a '..' component");
    }
    start = end + 1;
  }
  return Ok();
}

}  // namespace edgevirt::vmm
