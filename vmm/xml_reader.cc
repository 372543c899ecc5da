#include "vmm/xml_reader.h"

#include <cstdint>

namespace edgevirt::vmm {
namespace {

constexpr int kMaxDepth = 64;

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == ':' || c == '.' || c == '-' || static_cast<unsigned char>(c) >= 0x80;
}

void AppendUtf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

class Parser {
 public:
  explicit Parser(std::string_view doc) : doc_(doc) {}

  Result<XmlElement> Document() {
    RETURN_IF_ERROR(SkipMisc());
    if (AtEnd()) return Fail("no root element");
    XmlElement root;
    RETURN_IF_ERROR(Element(root, 1));
    RETURN_IF_ERROR(SkipMisc());
    if (!AtEnd()) return Fail("content after the root element");
    return root;
  }

 private:
  bool AtEnd() const { return pos_ >= doc_.size(); }
  bool StartsWith(std::string_view s) const { return doc_.substr(pos_).starts_with(s); }

  Error Fail(std::string_view what) const {
    return MakeError(Code::kInvalid,
                     "XML at byte " + std::to_string(pos_) + ": " + std::string(what));
  }

  void SkipSpace() {
    while (!AtEnd() && IsSpace(doc_[pos_])) ++pos_;
  }

  // Skips past `terminator`, which must occur.
  Status SkipPast(std::string_view terminator, std::string_view what) {
    const size_t end = doc_.find(terminator, pos_);
    if (end == std::string_view::npos) return Fail("unterminated " + std::string(what));
    pos_ = end + terminator.size();
    return Ok();
  }

  // Whitespace, comments and processing instructions (the XML declaration among them) around
  // the root element.
  Status SkipMisc() {
    while (true) {
      SkipSpace();
      if (StartsWith("<?")) {
        RETURN_IF_ERROR(SkipPast("?>", "processing instruction"));
      } else if (StartsWith("<!--")) {
        RETURN_IF_ERROR(SkipPast("-->", "comment"));
      } else if (StartsWith("<!")) {
        return Fail("DOCTYPE and other declarations are not supported");
      } else {
        return Ok();
      }
    }
  }

  Result<std::string> Name() {
    const size_t start = pos_;
    while (!AtEnd() && IsNameChar(doc_[pos_])) ++pos_;
    if (pos_ == start) return Fail("expected a name");
    return std::string(doc_.substr(start, pos_ - start));
  }

  // Decodes the reference at pos_ ('&' ... ';') into `out`.
  Status Reference(std::string& out) {
    const size_t semi = doc_.find(';', pos_);
    if (semi == std::string_view::npos || semi - pos_ > 12) return Fail("bad character reference");
    const std::string_view ref = doc_.substr(pos_ + 1, semi - pos_ - 1);
    if (ref == "lt") {
      out += '<';
    } else if (ref == "gt") {
      out += '>';
    } else if (ref == "amp") {
      out += '&';
    } else if (ref == "apos") {
      out += '\'';
    } else if (ref == "quot") {
      out += '"';
    } else if (ref.size() > 1 && ref[0] == '#') {
      const bool hex = ref[1] == 'x';
      const std::string_view digits = ref.substr(hex ? 2 : 1);
      if (digits.empty()) return Fail("bad character reference");
      uint32_t cp = 0;
      for (char c : digits) {
        uint32_t d;
        if (c >= '0' && c <= '9') {
          d = uint32_t(c - '0');
        } else if (hex && c >= 'a' && c <= 'f') {
          d = uint32_t(c - 'a' + 10);
        } else if (hex && c >= 'A' && c <= 'F') {
          d = uint32_t(c - 'A' + 10);
        } else {
          return Fail("bad character reference");
        }
        cp = cp * (hex ? 16 : 10) + d;
        if (cp > 0x10ffff) return Fail("character reference out of range");
      }
      if (cp == 0 || (cp >= 0xd800 && cp <= 0xdfff)) return Fail("invalid character reference");
      AppendUtf8(out, cp);
    } else {
      return Fail("unknown entity &" + std::string(ref) + ";");
    }
    pos_ = semi + 1;
    return Ok();
  }

  Status Attributes(XmlElement& el) {
    while (true) {
      const size_t before = pos_;
      SkipSpace();
      if (AtEnd()) return Fail("unterminated start tag <" + el.name);
      if (doc_[pos_] == '/' || doc_[pos_] == '>') return Ok();
      if (pos_ == before) return Fail("expected whitespace before an attribute");
      ASSIGN_OR_RETURN(std::string key, Name());
      SkipSpace();
      if (AtEnd() || doc_[pos_] != '=') return Fail("expected '=' after attribute " + key);
      ++pos_;
      SkipSpace();
      if (AtEnd() || (doc_[pos_] != '\'' && doc_[pos_] != '"')) {
        return Fail("expected a quoted value for attribute " + key);
      }
      const char quote = doc_[pos_++];
      std::string value;
      while (true) {
        if (AtEnd()) return Fail("unterminated value of attribute " + key);
        const char c = doc_[pos_];
        if (c == quote) break;
        if (c == '<') return Fail("'<' in the value of attribute " + key);
        if (c == '&') {
          RETURN_IF_ERROR(Reference(value));
        } else {
          value += c;
          ++pos_;
        }
      }
      ++pos_;
      if (el.Attr(key) != nullptr) return Fail("duplicate attribute " + key);
      el.attrs.emplace_back(std::move(key), std::move(value));
    }
  }

  // pos_ is at '<' of a start tag.
  Status Element(XmlElement& el, int depth) {
    if (depth > kMaxDepth) return Fail("elements nested too deeply");
    if (AtEnd() || doc_[pos_] != '<') return Fail("expected an element");
    ++pos_;
    ASSIGN_OR_RETURN(el.name, Name());
    RETURN_IF_ERROR(Attributes(el));
    if (doc_[pos_] == '/') {
      ++pos_;
      if (AtEnd() || doc_[pos_] != '>') return Fail("expected '>' after '/'");
      ++pos_;
      return Ok();
    }
    ++pos_;  // '>'
    while (true) {
      if (AtEnd()) return Fail("unterminated element <" + el.name + ">");
      const char c = doc_[pos_];
      if (c == '&') {
        RETURN_IF_ERROR(Reference(el.text));
      } else if (c != '<') {
        el.text += c;
        ++pos_;
      } else if (StartsWith("</")) {
        pos_ += 2;
        ASSIGN_OR_RETURN(std::string end, Name());
        if (end != el.name) return Fail("</" + end + "> closes <" + el.name + ">");
        SkipSpace();
        if (AtEnd() || doc_[pos_] != '>') return Fail("expected '>' in </" + end);
        ++pos_;
        return Ok();
      } else if (StartsWith("<!--")) {
        RETURN_IF_ERROR(SkipPast("-->", "comment"));
      } else if (StartsWith("<![CDATA[")) {
        pos_ += 9;
        const size_t end = doc_.find("]]>", pos_);
        if (end == std::string_view::npos) return Fail("unterminated CDATA section");
        el.text.append(doc_.substr(pos_, end - pos_));
        pos_ = end + 3;
      } else if (StartsWith("<?")) {
        RETURN_IF_ERROR(SkipPast("?>", "processing instruction"));
      } else if (StartsWith("<!")) {
        return Fail("declarations are not supported inside elements");
      } else {
        XmlElement child;
        RETURN_IF_ERROR(Element(child, depth + 1));
        el.children.push_back(std::move(child));
      }
    }
  }

  std::string_view doc_;
  size_t pos_ = 0;
};

}  // namespace

const std::string* XmlElement::Attr(std::string_view key) const {
  for (const auto& [k, v] : attrs) {
    if (k == key) return &v;
  }
  return nullptr;
}

std::string XmlElement::AttrOr(std::string_view key, std::string_view fallback) const {
  const std::string* v = Attr(key);
  return v ? *v : std::string(fallback);
}

const XmlElement* XmlElement::Child(std::string_view child_name) const {
  for (const XmlElement& c : children) {
    if (c.name == child_name) return &c;
  }
  return nullptr;
}

std::vector<const XmlElement*> XmlElement::Children(std::string_view child_name) const {
  std::vector<const XmlElement*> out;
  for (const XmlElement& c : children) {
    if (c.name == child_name) out.push_back(&c);
  }
  return out;
}

Result<XmlElement> ParseXml(std::string_view doc) { return Parser(doc).Document(); }

}  // namespace edgevirt::vmm
