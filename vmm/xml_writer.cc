#include "vmm/xml_writer.h"

#include <cassert>
#include <cstdint>

namespace edgevirt::vmm {

std::string XmlEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&apos;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

bool IsXmlSafe(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      if (b < 0x20 || b == 0x7f) return false;
      ++i;
      continue;
    }
    // Multi-byte sequence: lead byte gives the length and the minimum code point (overlong
    // encodings are invalid UTF-8).
    size_t len;
    uint32_t cp;
    uint32_t min;
    if ((b & 0xe0) == 0xc0) {
      len = 2, cp = b & 0x1f, min = 0x80;
    } else if ((b & 0xf0) == 0xe0) {
      len = 3, cp = b & 0x0f, min = 0x800;
    } else if ((b & 0xf8) == 0xf0) {
      len = 4, cp = b & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3f);
    }
    if (cp < min || cp > 0x10ffff) return false;
    if (cp >= 0xd800 && cp <= 0xdfff) return false;  // UTF-16 surrogates
    if (cp >= 0x80 && cp <= 0x9f) return false;      // C1 controls
    if (cp == 0xfffe || cp == 0xffff) return false;  // not XML characters
    i += len;
  }
  return true;
}

void XmlWriter::OpenTag(std::string_view tag, XmlAttrs attrs) {
  out_.append(open_.size() * 2, ' ');
  out_ += '<';
  out_ += tag;
  for (const auto& [name, value] : attrs) {
    out_ += ' ';
    out_ += name;
    out_ += "='";
    out_ += XmlEscape(value);
    out_ += '\'';
  }
}

void XmlWriter::Start(std::string_view tag, XmlAttrs attrs) {
  OpenTag(tag, attrs);
  out_ += ">\n";
  open_.emplace_back(tag);
}

void XmlWriter::End() {
  assert(!open_.empty());
  std::string tag = std::move(open_.back());
  open_.pop_back();
  out_.append(open_.size() * 2, ' ');
  out_ += "</";
  out_ += tag;
  out_ += ">\n";
}

void XmlWriter::Empty(std::string_view tag, XmlAttrs attrs) {
  OpenTag(tag, attrs);
  out_ += "/>\n";
}

void XmlWriter::Text(std::string_view tag, std::string_view text, XmlAttrs attrs) {
  OpenTag(tag, attrs);
  out_ += '>';
  out_ += XmlEscape(text);
  out_ += "</";
  out_ += tag;
  out_ += ">\n";
}

std::string XmlWriter::Finish() {
  assert(open_.empty());
  return std::move(out_);
}

}  // namespace edgevirt::vmm
