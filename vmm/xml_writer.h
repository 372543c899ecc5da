// A minimal XML writer for the documents vmm/ generates (private to vmm/). It escapes every
// attribute value and text node; it never validates names, which are literals in our code.
#pragma once

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace edgevirt::vmm {

// Escapes the five XML special characters (& < > ' ") so that `s` can stand in a text node or
// in an attribute value quoted with either quote character.
std::string XmlEscape(std::string_view s);

// True when `s` is valid UTF-8 without characters XML 1.0 cannot carry or that have no place in
// a file name or identifier: C0 controls (tab and newline included), DEL, U+FFFE and U+FFFF.
bool IsXmlSafe(std::string_view s);

using XmlAttrs = std::initializer_list<std::pair<std::string_view, std::string_view>>;

// Writes indented elements (two spaces per level, attributes in single quotes, like libvirt's
// own formatter), one element per line.
class XmlWriter {
 public:
  // <tag attrs...>, the next elements are its children until End().
  void Start(std::string_view tag, XmlAttrs attrs = {});
  void End();
  // <tag attrs.../>
  void Empty(std::string_view tag, XmlAttrs attrs = {});
  // <tag attrs...>text</tag>
  void Text(std::string_view tag, std::string_view text, XmlAttrs attrs = {});
  // The document; all elements must be closed.
  std::string Finish();

 private:
  void OpenTag(std::string_view tag, XmlAttrs attrs);

  std::string out_;
  std::vector<std::string> open_;
};

}  // namespace edgevirt::vmm
