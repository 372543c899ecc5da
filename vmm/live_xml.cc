#include "vmm/live_xml.h"

#include <string>

#include "vmm/check.h"
#include "vmm/xml_reader.h"

namespace edgevirt::vmm {

Result<ConsoleSpec> ParseLiveConsole(std::string_view domain_xml) {
  auto root = ParseXml(domain_xml);
  if (!root) return std::move(root).error().Wrap("domain XML");
  if (root->name != "domain") return Invalid("domain XML: the root element is not <domain>");
  const XmlElement* devices = root->Child("devices");
  if (devices == nullptr) return ConsoleSpec{};
  const XmlElement* chardev = devices->Child("console");
  if (chardev == nullptr) {
    for (const XmlElement* serial : devices->Children("serial")) {
      const XmlElement* target = serial->Child("target");
      if (target != nullptr && target->AttrOr("port", "0") == "0") {
        chardev = serial;
        break;
      }
    }
  }
  if (chardev == nullptr) return ConsoleSpec{};
  ConsoleSpec out;
  const std::string type = chardev->AttrOr("type");
  const XmlElement* source = chardev->Child("source");
  if (type == "pty") {
    out.kind = ConsoleKind::kPty;
  } else if (type == "unix") {
    const std::string mode = source != nullptr ? source->AttrOr("mode") : "";
    if (mode != "bind") {
      return MakeError(Code::kUnsupported, "domain XML: the console is a unix socket in mode \"" +
                                               mode + "\" (only \"bind\" can be relayed)");
    }
    out.kind = ConsoleKind::kUnix;
    out.socket_path = source->AttrOr("path");
    if (out.socket_path.empty()) return Invalid("domain XML: the unix console has no path");
  } else {
    return MakeError(Code::kUnsupported,
                     "domain XML: the console is a chardev of type \"" + type + "\"");
  }
  if (const XmlElement* log = chardev->Child("log")) out.log_path = log->AttrOr("file");
  return out;
}

}  // namespace edgevirt::vmm
