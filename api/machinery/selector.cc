#include "api/machinery/selector.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

#include "api/machinery/errors.h"
#include "api/machinery/meta.h"

namespace edgevirt::api::machinery {
namespace {

enum class Tok {
  kEnd,
  kIdent,
  kComma,
  kEquals,        // =
  kDoubleEquals,  // ==
  kNotEquals,     // !=
  kNot,           // !
  kIn,
  kNotIn,
  kOpen,
  kClose,
  kGreater,
  kLess,
};

struct Token {
  Tok type = Tok::kEnd;
  std::string text;
};

bool IsSpecial(char c) {
  return c == ',' || c == '=' || c == '!' || c == '(' || c == ')' || c == '<' || c == '>';
}

std::vector<Token> Lex(std::string_view s) {
  std::vector<Token> out;
  size_t i = 0;
  while (i < s.size()) {
    char c = s[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    if (c == ',') {
      out.push_back({Tok::kComma, ","});
      ++i;
    } else if (c == '(') {
      out.push_back({Tok::kOpen, "("});
      ++i;
    } else if (c == ')') {
      out.push_back({Tok::kClose, ")"});
      ++i;
    } else if (c == '<') {
      out.push_back({Tok::kLess, "<"});
      ++i;
    } else if (c == '>') {
      out.push_back({Tok::kGreater, ">"});
      ++i;
    } else if (c == '=') {
      if (i + 1 < s.size() && s[i + 1] == '=') {
        out.push_back({Tok::kDoubleEquals, "=="});
        i += 2;
      } else {
        out.push_back({Tok::kEquals, "="});
        ++i;
      }
    } else if (c == '!') {
      if (i + 1 < s.size() && s[i + 1] == '=') {
        out.push_back({Tok::kNotEquals, "!="});
        i += 2;
      } else {
        out.push_back({Tok::kNot, "!"});
        ++i;
      }
    } else {
      size_t j = i;
      while (j < s.size() && !IsSpecial(s[j]) && !std::isspace(static_cast<unsigned char>(s[j]))) {
        ++j;
      }
      std::string word(s.substr(i, j - i));
      if (word == "in") {
        out.push_back({Tok::kIn, word});
      } else if (word == "notin") {
        out.push_back({Tok::kNotIn, word});
      } else {
        out.push_back({Tok::kIdent, word});
      }
      i = j;
    }
  }
  out.push_back({Tok::kEnd, ""});
  return out;
}

Error ParseError(std::string msg) { return MakeError(Code::kInvalid, std::move(msg)); }

Status CheckKey(const std::string& key) {
  auto errs = IsQualifiedName(key);
  if (!errs.empty()) {
    return ParseError("unable to parse requirement: key: Invalid value: " + Quote(key) + ": " +
                      errs.front());
  }
  return Ok();
}

Status CheckValue(const std::string& value, size_t index) {
  auto errs = IsValidLabelValue(value);
  if (!errs.empty()) {
    return ParseError("unable to parse requirement: values[" + std::to_string(index) +
                      "]: Invalid value: " + Quote(value) + ": " + errs.front());
  }
  return Ok();
}

}  // namespace

Result<LabelSelector> LabelSelector::Parse(std::string_view text) {
  LabelSelector sel;
  std::vector<Token> toks = Lex(text);
  size_t p = 0;
  if (toks[p].type == Tok::kEnd) return sel;
  while (true) {
    Requirement req;
    if (toks[p].type == Tok::kNot) {
      ++p;
      if (toks[p].type != Tok::kIdent) {
        return ParseError("found '" + toks[p].text + "', expected: identifier after '!'");
      }
      req.key = toks[p++].text;
      req.op = Op::kDoesNotExist;
      RETURN_IF_ERROR(CheckKey(req.key));
    } else if (toks[p].type == Tok::kIdent) {
      req.key = toks[p++].text;
      RETURN_IF_ERROR(CheckKey(req.key));
      switch (toks[p].type) {
        case Tok::kEnd:
        case Tok::kComma:
          req.op = Op::kExists;
          break;
        case Tok::kEquals:
        case Tok::kDoubleEquals:
        case Tok::kNotEquals: {
          req.op = toks[p].type == Tok::kNotEquals ? Op::kNotEquals : Op::kEquals;
          ++p;
          std::string value;
          if (toks[p].type == Tok::kIdent) {
            value = toks[p++].text;
          } else if (toks[p].type != Tok::kEnd && toks[p].type != Tok::kComma) {
            return ParseError("found '" + toks[p].text + "', expected: identifier");
          }
          RETURN_IF_ERROR(CheckValue(value, 0));
          req.values.push_back(std::move(value));
          break;
        }
        case Tok::kGreater:
        case Tok::kLess: {
          req.op = toks[p].type == Tok::kGreater ? Op::kGreaterThan : Op::kLessThan;
          ++p;
          if (toks[p].type != Tok::kIdent) {
            return ParseError("found '" + toks[p].text + "', expected: identifier");
          }
          std::string value = toks[p++].text;
          char* end = nullptr;
          std::strtoll(value.c_str(), &end, 10);
          if (value.empty() || *end != '\0') {
            return ParseError(
                "unable to parse requirement: values[0]: Invalid value: " + Quote(value) +
                ": for 'Gt', 'Lt' operators, the value must be an "
                "integer");
          }
          req.values.push_back(std::move(value));
          break;
        }
        case Tok::kIn:
        case Tok::kNotIn: {
          req.op = toks[p].type == Tok::kIn ? Op::kIn : Op::kNotIn;
          ++p;
          if (toks[p].type != Tok::kOpen) {
            return ParseError("found '" + toks[p].text + "', expected: '('");
          }
          ++p;
          bool expect_value = true;
          while (toks[p].type != Tok::kClose) {
            if (toks[p].type == Tok::kIdent && expect_value) {
              RETURN_IF_ERROR(CheckValue(toks[p].text, req.values.size()));
              req.values.push_back(toks[p++].text);
              expect_value = false;
            } else if (toks[p].type == Tok::kComma && !expect_value) {
              ++p;
              expect_value = true;
            } else if (toks[p].type == Tok::kComma && expect_value) {
              req.values.push_back("");  // "in (a,,b)" has an empty value, as in Go
              ++p;
            } else {
              return ParseError("found '" + toks[p].text + "', expected: ',', ')' or identifier");
            }
          }
          ++p;
          if (req.values.empty()) {
            return ParseError(
                "unable to parse requirement: values: Invalid value: []string{}: for 'in', "
                "'notin' operators, values set can't be empty");
          }
          break;
        }
        default:
          return ParseError("found '" + toks[p].text + "', expected: in, notin, =, ==, !=, gt, lt");
      }
    } else {
      return ParseError("found '" + toks[p].text +
                        "', expected: !, identifier, or 'end of string'");
    }
    sel.requirements_.push_back(std::move(req));
    if (toks[p].type == Tok::kEnd) break;
    if (toks[p].type != Tok::kComma) {
      return ParseError("found '" + toks[p].text + "', expected: ',' or 'end of string'");
    }
    ++p;
    if (toks[p].type == Tok::kEnd) {
      return ParseError("found '', expected: identifier after ','");
    }
  }
  return sel;
}

bool LabelSelector::Matches(const Json* labels) const {
  for (const auto& r : requirements_) {
    const Json* v = nullptr;
    if (labels && labels->is_object()) {
      auto it = labels->find(r.key);
      if (it != labels->end() && it->is_string()) v = &*it;
    }
    const std::string* value = v ? &v->get_ref<const std::string&>() : nullptr;
    switch (r.op) {
      case Op::kExists:
        if (!value) return false;
        break;
      case Op::kDoesNotExist:
        if (value) return false;
        break;
      case Op::kEquals:
      case Op::kIn:
        if (!value || std::find(r.values.begin(), r.values.end(), *value) == r.values.end()) {
          return false;
        }
        break;
      case Op::kNotEquals:
      case Op::kNotIn:
        if (value && std::find(r.values.begin(), r.values.end(), *value) != r.values.end()) {
          return false;
        }
        break;
      case Op::kGreaterThan:
      case Op::kLessThan: {
        if (!value) return false;
        char* end = nullptr;
        long long have = std::strtoll(value->c_str(), &end, 10);
        if (value->empty() || *end != '\0') return false;
        long long want = std::strtoll(r.values[0].c_str(), nullptr, 10);
        if (r.op == Op::kGreaterThan ? !(have > want) : !(have < want)) return false;
        break;
      }
    }
  }
  return true;
}

Result<FieldSelector> FieldSelector::Parse(std::string_view text) {
  FieldSelector sel;
  if (text.empty()) return sel;
  // Split on unescaped ','.
  std::vector<std::string> parts;
  std::string cur;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\\' && i + 1 < text.size()) {
      cur += c;
      cur += text[++i];
    } else if (c == ',') {
      parts.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  parts.push_back(std::move(cur));
  auto unescape = [](std::string_view s) -> Result<std::string> {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i] == '\\') {
        if (i + 1 >= s.size()) return ParseError("invalid field selector: trailing backslash");
        char n = s[++i];
        if (n != '\\' && n != ',' && n != '=') {
          return ParseError(std::string("invalid field selector: invalid escape sequence: \\") + n);
        }
        out += n;
      } else {
        out += s[i];
      }
    }
    return out;
  };
  for (const auto& part : parts) {
    if (part.empty()) continue;
    // Find the first unescaped operator: "!=", "==", "=".
    size_t op = std::string::npos;
    size_t op_len = 0;
    bool negate = false;
    for (size_t i = 0; i < part.size(); ++i) {
      if (part[i] == '\\') {
        ++i;
        continue;
      }
      if (part[i] == '!' && i + 1 < part.size() && part[i + 1] == '=') {
        op = i, op_len = 2, negate = true;
        break;
      }
      if (part[i] == '=') {
        op = i;
        op_len = (i + 1 < part.size() && part[i + 1] == '=') ? 2 : 1;
        break;
      }
    }
    if (op == std::string::npos) {
      return ParseError("invalid selector: '" + part + "'; can't understand '" + part + "'");
    }
    Term t;
    ASSIGN_OR_RETURN(t.field, unescape(std::string_view(part).substr(0, op)));
    ASSIGN_OR_RETURN(t.value, unescape(std::string_view(part).substr(op + op_len)));
    t.negate = negate;
    // Trim spaces around the field name, as fields.ParseSelector does.
    while (!t.field.empty() && std::isspace(static_cast<unsigned char>(t.field.back()))) {
      t.field.pop_back();
    }
    while (!t.field.empty() && std::isspace(static_cast<unsigned char>(t.field.front()))) {
      t.field.erase(0, 1);
    }
    sel.terms_.push_back(std::move(t));
  }
  return sel;
}

std::optional<std::string> FieldSelector::RequiredValue(std::string_view field) const {
  for (const auto& t : terms_) {
    if (!t.negate && t.field == field) return t.value;
  }
  return std::nullopt;
}

Status FieldSelector::Validate(const ResourceType& rt) const {
  static const Json kEmpty = Json::object();
  for (const auto& t : terms_) {
    if (t.field == "metadata.name" || t.field == "metadata.namespace") continue;
    if (rt.field_value && rt.field_value(kEmpty, t.field).has_value()) continue;
    return MakeError(Code::kInvalid, "field label not supported: " + t.field);
  }
  return Ok();
}

bool FieldSelector::NeedsObject() const {
  for (const auto& t : terms_) {
    if (t.field != "metadata.name" && t.field != "metadata.namespace") return true;
  }
  return false;
}

bool FieldSelector::Matches(const ResourceType& rt, std::string_view ns, std::string_view name,
                            const Json* object) const {
  for (const auto& t : terms_) {
    std::string have;
    if (t.field == "metadata.name") {
      have = std::string(name);
    } else if (t.field == "metadata.namespace") {
      have = std::string(ns);
    } else if (object && rt.field_value) {
      have = rt.field_value(*object, t.field).value_or("");
    }
    if ((have == t.value) == t.negate) return false;
  }
  return true;
}

}  // namespace edgevirt::api::machinery
