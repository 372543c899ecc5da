#include "api/machinery/meta.h"

#include <sys/random.h>

#include <cerrno>
#include <cstdio>
#include <set>

#include "api/machinery/errors.h"

namespace edgevirt::api::machinery {
namespace {

constexpr char kSubdomainMsg[] =
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
constexpr char kLabelMsg[] =
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
constexpr char kQualifiedNameMsg[] =
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used "
    "for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
constexpr char kQualifiedNameFullMsg[] =
    "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start "
    "and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
    "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS "
    "subdomain prefix and '/' (e.g. 'example.com/MyName')";
constexpr char kLabelValueMsg[] =
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

bool LowerAlnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }
bool Alnum(char c) { return LowerAlnum(c) || (c >= 'A' && c <= 'Z'); }

// [a-z0-9]([-a-z0-9]*[a-z0-9])?
bool MatchDnsLabel(std::string_view s) {
  if (s.empty() || !LowerAlnum(s.front()) || !LowerAlnum(s.back())) return false;
  for (char c : s) {
    if (!LowerAlnum(c) && c != '-') return false;
  }
  return true;
}

bool MatchSubdomain(std::string_view s) {
  if (s.empty()) return false;
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    std::string_view part = s.substr(start, dot == std::string_view::npos ? s.npos : dot - start);
    if (!MatchDnsLabel(part)) return false;
    if (dot == std::string_view::npos) return true;
    start = dot + 1;
  }
}

// ([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]
bool MatchQualifiedPart(std::string_view s) {
  if (s.empty() || !Alnum(s.front()) || !Alnum(s.back())) return false;
  for (char c : s) {
    if (!Alnum(c) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

std::string Str(const Json* j) { return j && j->is_string() ? j->get<std::string>() : ""; }

const Json* Field(const Json* obj, const char* key) {
  if (obj == nullptr || !obj->is_object()) return nullptr;
  auto it = obj->find(key);
  return it == obj->end() ? nullptr : &*it;
}

void ValidateLabels(const Json* labels, const std::string& field,
                    std::vector<StatusCause>* errors) {
  if (labels == nullptr || labels->is_null()) return;
  if (!labels->is_object()) {
    errors->push_back(FieldInvalid(field, labels->dump(), "must be a map of strings"));
    return;
  }
  for (const auto& [k, v] : labels->items()) {
    for (const auto& m : IsQualifiedName(k)) errors->push_back(FieldInvalid(field, Quote(k), m));
    if (!v.is_string()) {
      errors->push_back(FieldInvalid(field, v.dump(), "label values must be strings"));
      continue;
    }
    for (const auto& m : IsValidLabelValue(v.get_ref<const std::string&>())) {
      errors->push_back(FieldInvalid(field, Quote(v.get_ref<const std::string&>()), m));
    }
  }
}

void ValidateAnnotations(const Json* annotations, const std::string& field,
                         std::vector<StatusCause>* errors) {
  if (annotations == nullptr || annotations->is_null()) return;
  if (!annotations->is_object()) {
    errors->push_back(FieldInvalid(field, annotations->dump(), "must be a map of strings"));
    return;
  }
  size_t total = 0;
  for (const auto& [k, v] : annotations->items()) {
    std::string lower = k;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    for (const auto& m : IsQualifiedName(lower)) {
      errors->push_back(FieldInvalid(field, Quote(k), m));
    }
    total += k.size();
    if (v.is_string()) {
      total += v.get_ref<const std::string&>().size();
    } else {
      errors->push_back(FieldInvalid(field, v.dump(), "annotation values must be strings"));
    }
  }
  if (total > kTotalAnnotationSizeLimit) {
    errors->push_back(FieldTooLong(field, kTotalAnnotationSizeLimit));
  }
}

void ValidateOwnerReferences(const Json* refs, std::vector<StatusCause>* errors) {
  const std::string field = "metadata.ownerReferences";
  if (refs == nullptr || refs->is_null()) return;
  if (!refs->is_array()) {
    errors->push_back(FieldInvalid(field, refs->dump(), "must be a list"));
    return;
  }
  int controllers = 0;
  for (const Json& r : *refs) {
    if (!r.is_object()) {
      errors->push_back(FieldInvalid(field, r.dump(), "must be an object"));
      continue;
    }
    std::string api_version = Str(Field(&r, "apiVersion"));
    std::string kind = Str(Field(&r, "kind"));
    std::string name = Str(Field(&r, "name"));
    std::string uid = Str(Field(&r, "uid"));
    if (api_version.empty()) {
      errors->push_back(
          FieldInvalid(field + ".apiVersion", Quote(api_version), "version must not be empty"));
    }
    if (kind.empty()) {
      errors->push_back(FieldInvalid(field + ".kind", Quote(kind), "kind must not be empty"));
    }
    if (name.empty()) {
      errors->push_back(FieldInvalid(field + ".name", Quote(name), "name must not be empty"));
    }
    if (uid.empty()) {
      errors->push_back(FieldInvalid(field + ".uid", Quote(uid), "uid must not be empty"));
    }
    const Json* controller = Field(&r, "controller");
    if (controller && controller->is_boolean() && controller->get<bool>()) ++controllers;
  }
  if (controllers > 1) {
    errors->push_back(
        FieldInvalid(field, refs->dump(), "Only one reference can have Controller set to true."));
  }
}

void ValidateFinalizers(const Json* finalizers, std::vector<StatusCause>* errors) {
  const std::string field = "metadata.finalizers";
  if (finalizers == nullptr || finalizers->is_null()) return;
  if (!finalizers->is_array()) {
    errors->push_back(FieldInvalid(field, finalizers->dump(), "must be a list of strings"));
    return;
  }
  bool orphan = false, foreground = false;
  for (size_t i = 0; i < finalizers->size(); ++i) {
    const Json& f = (*finalizers)[i];
    std::string item = field + "[" + std::to_string(i) + "]";
    if (!f.is_string()) {
      errors->push_back(FieldInvalid(item, f.dump(), "must be a string"));
      continue;
    }
    const std::string& s = f.get_ref<const std::string&>();
    for (const auto& m : IsQualifiedName(s)) errors->push_back(FieldInvalid(item, Quote(s), m));
    if (s == "orphan") orphan = true;
    if (s == "foregroundDeletion") foreground = true;
  }
  if (orphan && foreground) {
    errors->push_back(FieldInvalid(field, Quote("foregroundDeletion"),
                                   "finalizer foregroundDeletion and orphan cannot be both set"));
  }
}

}  // namespace

std::vector<std::string> IsDns1123Subdomain(std::string_view value) {
  std::vector<std::string> out;
  if (value.size() > 253) out.push_back("must be no more than 253 characters");
  if (!MatchSubdomain(value)) out.push_back(kSubdomainMsg);
  return out;
}

std::vector<std::string> IsDns1123Label(std::string_view value) {
  std::vector<std::string> out;
  if (value.size() > 63) out.push_back("must be no more than 63 characters");
  if (!MatchDnsLabel(value)) out.push_back(kLabelMsg);
  return out;
}

std::vector<std::string> IsQualifiedName(std::string_view value) {
  std::vector<std::string> out;
  std::string_view name = value;
  size_t slash = value.find('/');
  if (slash != std::string_view::npos) {
    if (value.find('/', slash + 1) != std::string_view::npos) {
      out.push_back(kQualifiedNameFullMsg);
      return out;
    }
    std::string_view prefix = value.substr(0, slash);
    name = value.substr(slash + 1);
    if (prefix.empty()) {
      out.push_back("prefix part must be non-empty");
    } else {
      for (const auto& m : IsDns1123Subdomain(prefix)) out.push_back("prefix part " + m);
    }
  }
  if (name.empty()) {
    out.push_back("name part must be non-empty");
  } else if (name.size() > 63) {
    out.push_back("name part must be no more than 63 characters");
  }
  if (!name.empty() && !MatchQualifiedPart(name)) out.push_back(kQualifiedNameMsg);
  return out;
}

std::vector<std::string> IsValidLabelValue(std::string_view value) {
  std::vector<std::string> out;
  if (value.size() > 63) out.push_back("must be no more than 63 characters");
  if (!value.empty() && !MatchQualifiedPart(value)) out.push_back(kLabelValueMsg);
  return out;
}

std::vector<std::string> IsValidPathSegmentName(std::string_view value) {
  if (value == "." || value == "..") {
    return {"may not be '" + std::string(value) + "'"};
  }
  std::vector<std::string> out;
  for (std::string_view bad : {"/", "%"}) {
    if (value.find(bad) != std::string_view::npos) {
      out.push_back("may not contain '" + std::string(bad) + "'");
    }
  }
  return out;
}

std::vector<std::string> NameIsDnsSubdomain(std::string_view name, bool prefix) {
  std::string masked(name);
  if (prefix && !masked.empty() && masked.back() == '-') masked.back() = 'a';
  return IsDns1123Subdomain(masked);
}

bool IsObjectMetaField(std::string_view field) {
  static const std::set<std::string, std::less<>> kFields = {"name",
                                                             "generateName",
                                                             "namespace",
                                                             "selfLink",
                                                             "uid",
                                                             "resourceVersion",
                                                             "generation",
                                                             "creationTimestamp",
                                                             "deletionTimestamp",
                                                             "deletionGracePeriodSeconds",
                                                             "labels",
                                                             "annotations",
                                                             "ownerReferences",
                                                             "finalizers",
                                                             "managedFields"};
  return kFields.count(field) != 0;
}

void ValidateObjectMeta(const Json* metadata, const Json* old_metadata, bool namespaced,
                        std::vector<StatusCause>* errors) {
  std::string name = Str(Field(metadata, "name"));
  std::string generate_name = Str(Field(metadata, "generateName"));
  std::string ns = Str(Field(metadata, "namespace"));
  if (!generate_name.empty()) {
    for (const auto& m : NameIsDnsSubdomain(generate_name, true)) {
      errors->push_back(FieldInvalid("metadata.generateName", Quote(generate_name), m));
    }
  }
  if (name.empty()) {
    errors->push_back(FieldRequired("metadata.name", "name or generateName is required"));
  } else {
    for (const auto& m : NameIsDnsSubdomain(name, false)) {
      errors->push_back(FieldInvalid("metadata.name", Quote(name), m));
    }
  }
  if (namespaced) {
    if (ns.empty()) {
      errors->push_back(FieldRequired("metadata.namespace"));
    } else {
      for (const auto& m : IsDns1123Label(ns)) {
        errors->push_back(FieldInvalid("metadata.namespace", Quote(ns), m));
      }
    }
  } else if (!ns.empty()) {
    errors->push_back(FieldForbidden("metadata.namespace", "not allowed on this type"));
  }
  if (const Json* g = Field(metadata, "generation"); g && g->is_number() && g->get<double>() < 0) {
    errors->push_back(
        FieldInvalid("metadata.generation", g->dump(), "must be greater than or equal to 0"));
  }
  ValidateLabels(Field(metadata, "labels"), "metadata.labels", errors);
  ValidateAnnotations(Field(metadata, "annotations"), "metadata.annotations", errors);
  ValidateOwnerReferences(Field(metadata, "ownerReferences"), errors);
  ValidateFinalizers(Field(metadata, "finalizers"), errors);

  if (old_metadata == nullptr) return;
  // ValidateObjectMetaUpdate: immutable fields, and no new finalizers while deleting.
  auto immutable = [&](const char* key) {
    const Json* a = Field(metadata, key);
    const Json* b = Field(old_metadata, key);
    std::string av = a ? (a->is_string() ? Quote(a->get<std::string>()) : a->dump()) : "\"\"";
    if ((a == nullptr) != (b == nullptr) || (a && *a != *b)) {
      errors->push_back(FieldInvalid(std::string("metadata.") + key, av, "field is immutable"));
    }
  };
  immutable("name");
  immutable("namespace");
  immutable("uid");
  immutable("creationTimestamp");
  if (Field(old_metadata, "deletionTimestamp") != nullptr) {
    std::set<std::string> old_set;
    if (const Json* f = Field(old_metadata, "finalizers"); f && f->is_array()) {
      for (const Json& s : *f) old_set.insert(s.is_string() ? s.get<std::string>() : s.dump());
    }
    if (const Json* f = Field(metadata, "finalizers"); f && f->is_array()) {
      for (const Json& s : *f) {
        if (!old_set.count(s.is_string() ? s.get<std::string>() : s.dump())) {
          errors->push_back(
              FieldForbidden("metadata.finalizers",
                             "no new finalizers can be added if the object is being deleted"));
          break;
        }
      }
    }
  }
}

std::string GenerateName(std::string_view prefix) {
  static const char kAlphabet[] = "bcdfghjklmnpqrstvwxz2456789";
  constexpr size_t kMaxPrefix = 58;
  std::string out(prefix.substr(0, std::min(prefix.size(), kMaxPrefix)));
  unsigned char b[5];
  size_t got = 0;
  while (got < sizeof(b)) {
    ssize_t n = getrandom(b + got, sizeof(b) - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) std::abort();
    got += static_cast<size_t>(n);
  }
  for (unsigned char c : b) out += kAlphabet[c % (sizeof(kAlphabet) - 1)];
  return out;
}

std::string HumanDuration(std::chrono::nanoseconds d) {
  using namespace std::chrono;
  const int64_t seconds = duration_cast<std::chrono::seconds>(d).count();
  auto f = [](const char* fmt, auto... args) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), fmt, args...);
    return std::string(buf);
  };
  if (seconds < -1) return "<invalid>";
  if (seconds < 0) return "0s";
  if (seconds < 60 * 2) return f("%llds", static_cast<long long>(seconds));
  const long long minutes = duration_cast<std::chrono::minutes>(d).count();
  if (minutes < 10) {
    long long s = seconds % 60;
    return s == 0 ? f("%lldm", minutes) : f("%lldm%llds", minutes, s);
  }
  if (minutes < 60 * 3) return f("%lldm", minutes);
  const long long hours = duration_cast<std::chrono::hours>(d).count();
  if (hours < 8) {
    long long m = minutes % 60;
    return m == 0 ? f("%lldh", hours) : f("%lldh%lldm", hours, m);
  }
  if (hours < 48) return f("%lldh", hours);
  if (hours < 24 * 8) {
    long long h = hours % 24;
    return h == 0 ? f("%lldd", hours / 24) : f("%lldd%lldh", hours / 24, h);
  }
  if (hours < 24 * 365 * 2) return f("%lldd", hours / 24);
  if (hours < 24 * 365 * 8) {
    long long dy = (hours / 24) % 365;
    return dy == 0 ? f("%lldy", hours / 24 / 365) : f("%lldy%lldd", hours / 24 / 365, dy);
  }
  return f("%lldy", hours / 24 / 365);
}

std::string HumanAge(std::string_view timestamp, WallClock::time_point now) {
  if (timestamp.empty()) return "<unknown>";
  auto t = ParseRfc3339(std::string(timestamp));
  if (!t) return "<invalid>";
  return HumanDuration(std::chrono::duration_cast<std::chrono::nanoseconds>(now - *t));
}

std::string FormatMicroTime(WallClock::time_point t) {
  std::string base = FormatRfc3339(t);  // "...:05Z"
  auto micros = std::chrono::duration_cast<std::chrono::microseconds>(t.time_since_epoch()).count();
  long long frac = micros % 1000000;
  if (frac < 0) frac += 1000000;
  char buf[16];
  std::snprintf(buf, sizeof(buf), ".%06lldZ", frac);
  base.pop_back();
  return base + buf;
}

}  // namespace edgevirt::api::machinery
