// A minimal XML reader for the documents libvirt hands back (the live and inactive domain XML
// that hotplug and LiveDisks look at). Private to vmm/. It reads elements, attributes and
// character data into a small tree; it skips the XML declaration, comments and processing
// instructions, decodes the predefined and numeric character references, and refuses what
// libvirt never writes (DOCTYPE, other entity references, unbalanced tags). Not a validating
// parser: vmm/ never parses XML from anyone but libvirt.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/result.h"

namespace edgevirt::vmm {

struct XmlElement {
  std::string name;
  std::vector<std::pair<std::string, std::string>> attrs;  // in document order, decoded
  std::vector<XmlElement> children;
  std::string text;  // the character data directly inside this element, concatenated

  // The value of attribute `key`, or nullptr.
  const std::string* Attr(std::string_view key) const;
  // The value of attribute `key`, or `fallback`.
  std::string AttrOr(std::string_view key, std::string_view fallback = "") const;
  // The first child element named `child_name`, or nullptr.
  const XmlElement* Child(std::string_view child_name) const;
  // Every child element named `child_name`, in document order.
  std::vector<const XmlElement*> Children(std::string_view child_name) const;
};

// Parses a whole document into its root element. kInvalid (with the byte offset) for anything
// that is not well-formed or uses a construct this reader does not support. Nesting deeper than
// 64 levels is refused (libvirt's domain XML is about 6 deep).
Result<XmlElement> ParseXml(std::string_view doc);

}  // namespace edgevirt::vmm
