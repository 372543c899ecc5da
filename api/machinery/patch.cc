#include "api/machinery/patch.h"

#include <cstdlib>
#include <vector>

namespace edgevirt::api::machinery {
namespace {

void Merge(Json& target, const Json& patch) {
  if (!patch.is_object()) {
    target = patch;
    return;
  }
  if (!target.is_object()) target = Json::object();
  for (const auto& [k, v] : patch.items()) {
    if (v.is_null()) {
      target.erase(k);
    } else {
      Merge(target[k], v);
    }
  }
}

Error Fail(std::string msg) { return MakeError(Code::kInvalid, std::move(msg)); }

Result<std::vector<std::string>> ParsePointer(const std::string& ptr) {
  std::vector<std::string> out;
  if (ptr.empty()) return out;
  if (ptr[0] != '/') return Fail("JSON pointer must be empty or start with '/': \"" + ptr + "\"");
  size_t start = 1;
  while (true) {
    size_t slash = ptr.find('/', start);
    std::string token =
        ptr.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    std::string decoded;
    for (size_t i = 0; i < token.size(); ++i) {
      if (token[i] == '~' && i + 1 < token.size() && (token[i + 1] == '0' || token[i + 1] == '1')) {
        decoded += token[i + 1] == '0' ? '~' : '/';
        ++i;
      } else if (token[i] == '~') {
        return Fail("invalid JSON pointer escape in \"" + ptr + "\"");
      } else {
        decoded += token[i];
      }
    }
    out.push_back(std::move(decoded));
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return out;
}

// Array index per RFC 6901 (no leading zeros, no sign); -1 on failure.
long ArrayIndex(const std::string& token) {
  if (token.empty() || (token.size() > 1 && token[0] == '0')) return -1;
  for (char c : token) {
    if (c < '0' || c > '9') return -1;
  }
  return std::strtol(token.c_str(), nullptr, 10);
}

// The container holding the last token of `path`, or null.
Json* Parent(Json& doc, const std::vector<std::string>& path) {
  Json* cur = &doc;
  for (size_t i = 0; i + 1 < path.size(); ++i) {
    const std::string& t = path[i];
    if (cur->is_object()) {
      auto it = cur->find(t);
      if (it == cur->end()) return nullptr;
      cur = &*it;
    } else if (cur->is_array()) {
      long idx = ArrayIndex(t);
      if (idx < 0 || static_cast<size_t>(idx) >= cur->size()) return nullptr;
      cur = &(*cur)[static_cast<size_t>(idx)];
    } else {
      return nullptr;
    }
  }
  return cur;
}

Result<Json*> Find(Json& doc, const std::vector<std::string>& path, const std::string& text) {
  if (path.empty()) return &doc;
  Json* parent = Parent(doc, path);
  if (parent == nullptr) return Fail("doc is missing path: \"" + text + "\": missing value");
  const std::string& last = path.back();
  if (parent->is_object()) {
    auto it = parent->find(last);
    if (it == parent->end()) return Fail("doc is missing key: " + text + ": missing value");
    return &*it;
  }
  if (parent->is_array()) {
    long idx = ArrayIndex(last);
    if (idx < 0 || static_cast<size_t>(idx) >= parent->size()) {
      return Fail("doc is missing path: \"" + text + "\": missing value");
    }
    return &(*parent)[static_cast<size_t>(idx)];
  }
  return Fail("doc is missing path: \"" + text + "\": missing value");
}

Status Add(Json& doc, const std::vector<std::string>& path, const std::string& text, Json value) {
  if (path.empty()) {
    doc = std::move(value);
    return Ok();
  }
  Json* parent = Parent(doc, path);
  if (parent == nullptr) {
    return Fail("add operation does not apply: doc is missing path: \"" + text +
                "\": missing value");
  }
  const std::string& last = path.back();
  if (parent->is_object()) {
    (*parent)[last] = std::move(value);
    return Ok();
  }
  if (parent->is_array()) {
    if (last == "-") {
      parent->push_back(std::move(value));
      return Ok();
    }
    long idx = ArrayIndex(last);
    if (idx < 0 || static_cast<size_t>(idx) > parent->size()) {
      return Fail("add operation does not apply: index out of bounds: " + text);
    }
    parent->insert(parent->begin() + idx, std::move(value));
    return Ok();
  }
  return Fail("add operation does not apply: doc is missing path: \"" + text + "\"");
}

Result<Json> Remove(Json& doc, const std::vector<std::string>& path, const std::string& text) {
  if (path.empty()) {
    Json old = std::move(doc);
    doc = nullptr;
    return old;
  }
  Json* parent = Parent(doc, path);
  if (parent == nullptr) {
    return Fail("remove operation does not apply: doc is missing path: \"" + text +
                "\": missing value");
  }
  const std::string& last = path.back();
  if (parent->is_object()) {
    auto it = parent->find(last);
    if (it == parent->end()) {
      return Fail("Unable to remove nonexistent key: " + last + ": missing value");
    }
    Json old = std::move(*it);
    parent->erase(it);
    return old;
  }
  if (parent->is_array()) {
    long idx = ArrayIndex(last);
    if (idx < 0 || static_cast<size_t>(idx) >= parent->size()) {
      return Fail("Unable to access invalid index: " + last + ": invalid index referenced");
    }
    Json old = std::move((*parent)[static_cast<size_t>(idx)]);
    parent->erase(static_cast<size_t>(idx));
    return old;
  }
  return Fail("remove operation does not apply: doc is missing path: \"" + text + "\"");
}

}  // namespace

Status ApplyMergePatch(Json& target, const Json& patch) {
  if (!patch.is_object()) return Fail("Invalid JSON Patch");
  Merge(target, patch);
  return Ok();
}

Status ApplyJsonPatch(Json& target, const Json& operations) {
  if (!operations.is_array()) {
    return Fail("json: cannot unmarshal " + std::string(operations.type_name()) +
                " into Go value of type jsonpatch.Patch");
  }
  for (const Json& op : operations) {
    if (!op.is_object()) return Fail("json: cannot unmarshal into jsonpatch.Operation");
    std::string kind = op.value("op", "");
    auto path_it = op.find("path");
    if (path_it == op.end() || !path_it->is_string()) {
      return Fail(kind + " operation does not apply: doc is missing path: \"\"");
    }
    const std::string path_text = path_it->get<std::string>();
    ASSIGN_OR_RETURN(auto path, ParsePointer(path_text));
    auto value_it = op.find("value");
    if (kind == "add") {
      if (value_it == op.end()) return Fail("add operation has no value");
      RETURN_IF_ERROR(Add(target, path, path_text, *value_it));
    } else if (kind == "remove") {
      auto removed = Remove(target, path, path_text);
      if (!removed) return std::move(removed).error();
    } else if (kind == "replace") {
      if (value_it == op.end()) return Fail("replace operation has no value");
      auto found = Find(target, path, path_text);
      if (!found) return Fail("replace operation does not apply: " + found.error().message);
      **found = *value_it;
    } else if (kind == "move" || kind == "copy") {
      auto from_it = op.find("from");
      if (from_it == op.end() || !from_it->is_string()) {
        return Fail(kind + " operation does not apply: missing from");
      }
      const std::string from_text = from_it->get<std::string>();
      ASSIGN_OR_RETURN(auto from, ParsePointer(from_text));
      Json value;
      if (kind == "move") {
        if (path.size() > from.size() && std::equal(from.begin(), from.end(), path.begin())) {
          return Fail("move operation does not apply: from is a prefix of path");
        }
        auto removed = Remove(target, from, from_text);
        if (!removed) return Fail("move operation does not apply: " + removed.error().message);
        value = std::move(*removed);
      } else {
        auto found = Find(target, from, from_text);
        if (!found) return Fail("copy operation does not apply: " + found.error().message);
        value = **found;
      }
      RETURN_IF_ERROR(Add(target, path, path_text, std::move(value)));
    } else if (kind == "test") {
      auto found = Find(target, path, path_text);
      Json expected = value_it == op.end() ? Json(nullptr) : *value_it;
      bool equal = found ? **found == expected : expected.is_null();
      if (!equal) return Fail("testing value " + path_text + " failed: test failed");
    } else {
      return Fail("Unexpected kind: " + kind);
    }
  }
  return Ok();
}

}  // namespace edgevirt::api::machinery
