#include "daemon/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>

#include <boost/asio/ip/address.hpp>

#include "api/http_server.h"
#include "vmm/domain.h"

namespace edgevirt::daemon {
namespace {

using std::chrono::milliseconds;

// Where a node sits, for "SOURCE:LINE:COLUMN: " prefixes. yaml-cpp marks are 0-based.
std::string Where(std::string_view source, const YAML::Mark& mark) {
  std::string out(source);
  if (mark.line >= 0) {
    out += ':' + std::to_string(mark.line + 1) + ':' + std::to_string(mark.column + 1);
  }
  return out;
}

Error Invalid(std::string_view source, const YAML::Mark& mark, std::string_view message) {
  return MakeError(Code::kInvalid, Where(source, mark) + ": " + std::string(message));
}

std::string Quote(std::string_view s) { return "\"" + std::string(s) + "\""; }

// What the node is, for "expected X, got Y" messages.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "null";
    case YAML::NodeType::Scalar:
      return Quote(node.Scalar());
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

struct Ctx {
  std::string_view source;
  std::string path;  // key path of the node being read: "api.ioThreads"

  Error Fail(const YAML::Node& node, std::string_view message) const {
    return Invalid(source, node.Mark(), path + ": " + std::string(message));
  }
};

Result<std::string> ReadString(const YAML::Node& node, const Ctx& ctx) {
  if (!node.IsScalar()) return ctx.Fail(node, "expected a string, got " + Describe(node));
  return node.Scalar();
}

Result<bool> ReadBool(const YAML::Node& node, const Ctx& ctx) {
  if (node.IsScalar()) {
    const std::string& v = node.Scalar();
    if (v == "true") return true;
    if (v == "false") return false;
  }
  return ctx.Fail(node, "expected true or false, got " + Describe(node));
}

Result<uint64_t> ReadUint(const YAML::Node& node, const Ctx& ctx, uint64_t min, uint64_t max) {
  if (!node.IsScalar()) return ctx.Fail(node, "expected an integer, got " + Describe(node));
  const std::string& s = node.Scalar();
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec == std::errc::invalid_argument || end != s.data() + s.size()) {
    return ctx.Fail(node, "expected an integer, got " + Quote(s));
  }
  if (ec == std::errc::result_out_of_range || v < min || v > max) {
    return ctx.Fail(node, "must be between " + std::to_string(min) + " and " + std::to_string(max) +
                              ", got " + s);
  }
  return v;
}

Result<uint64_t> ReadSize(const YAML::Node& node, const Ctx& ctx, uint64_t min, uint64_t max) {
  if (!node.IsScalar()) return ctx.Fail(node, "expected a byte size, got " + Describe(node));
  auto size = ParseByteSize(node.Scalar());
  if (!size) return ctx.Fail(node, size.error().message);
  if (*size < min || *size > max) {
    return ctx.Fail(node, "must be between " + std::to_string(min) + " and " + std::to_string(max) +
                              " bytes, got " + node.Scalar());
  }
  return *size;
}

Result<milliseconds> ReadDuration(const YAML::Node& node, const Ctx& ctx) {
  if (!node.IsScalar()) return ctx.Fail(node, "expected a duration, got " + Describe(node));
  auto d = ParseDuration(node.Scalar());
  if (!d) return ctx.Fail(node, d.error().message);
  if (d->count() <= 0) return ctx.Fail(node, "must be longer than 0s");
  return *d;
}

Result<std::string> ReadAbsolutePath(const YAML::Node& node, const Ctx& ctx) {
  ASSIGN_OR_RETURN(std::string s, ReadString(node, ctx));
  if (s.empty() || s[0] != '/') return ctx.Fail(node, "must be an absolute path, got " + Quote(s));
  return s;
}

// An absolute path, or "" / nothing for the key's default.
Result<std::string> ReadOptionalPath(const YAML::Node& node, const Ctx& ctx) {
  if (node.IsNull()) return std::string();
  ASSIGN_OR_RETURN(std::string s, ReadString(node, ctx));
  if (s.empty()) return s;
  return ReadAbsolutePath(node, ctx);
}

Status ReadListen(const YAML::Node& node, const Ctx& ctx, std::vector<std::string>& out) {
  if (!node.IsSequence()) return ctx.Fail(node, "expected a list, got " + Describe(node));
  if (node.size() == 0) return ctx.Fail(node, "at least one address is required");
  std::vector<std::string> result;
  std::set<std::string> seen;
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node item = node[i];
    Ctx item_ctx{ctx.source, ctx.path + "[" + std::to_string(i) + "]"};
    ASSIGN_OR_RETURN(std::string text, ReadString(item, item_ctx));
    auto canonical = CanonicalListenAddress(text);
    if (!canonical) return item_ctx.Fail(item, canonical.error().message);
    if (!seen.insert(*canonical).second) {
      return item_ctx.Fail(item, "duplicate address " + Quote(text));
    }
    result.push_back(std::move(text));
  }
  out = std::move(result);
  return Ok();
}

bool IsDnsLabel(std::string_view s) {
  if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
  });
}

bool IsDnsSubdomain(std::string_view s) {
  if (s.empty() || s.size() > 253) return false;
  size_t label = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    if (c == '.') {
      if (label == 0 || s[i - 1] == '-') return false;
      label = 0;
      continue;
    }
    if (!alnum && c != '-') return false;
    if (label == 0 && c == '-') return false;
    ++label;
  }
  return label > 0 && s.back() != '-';
}

// LVM's rule for volume group names: [a-zA-Z0-9+_.-], not starting with '-', not "." or "..".
bool IsVolumeGroupName(std::string_view s) {
  if (s.empty() || s.size() > 127 || s[0] == '-' || s == "." || s == "..") return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '_' || c == '.' || c == '-';
  });
}

Result<std::string> ReadCleanAbsolutePath(const YAML::Node& node, const Ctx& ctx) {
  ASSIGN_OR_RETURN(std::string path, ReadAbsolutePath(node, ctx));
  if (path.find("/../") != std::string::npos || path.ends_with("/..") ||
      path.find("/./") != std::string::npos || path.ends_with("/.")) {
    return ctx.Fail(node, "must not contain \".\" or \"..\": " + Quote(path));
  }
  return path;
}

Result<StorageClass> ReadStorageClass(const YAML::Node& node, const Ctx& ctx) {
  if (!node.IsMap()) return ctx.Fail(node, "expected a mapping, got " + Describe(node));
  StorageClass c;
  bool have_name = false, have_type = false;
  std::optional<YAML::Node> dir, format, vg, devices;
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar()) return ctx.Fail(key, "key must be a string, got " + Describe(key));
    const std::string& k = key.Scalar();
    Ctx child{ctx.source, ctx.path + "." + k};
    if (!seen.insert(k).second)
      return Invalid(ctx.source, key.Mark(), "duplicate key " + Quote(child.path));
    if (k == "name") {
      ASSIGN_OR_RETURN(c.name, ReadString(value, child));
      if (!IsDnsSubdomain(c.name)) {
        return child.Fail(value,
                          "must be a lowercase DNS subdomain (like \"local\" or "
                          "\"fast-ssd\"), got " +
                              Quote(c.name));
      }
      have_name = true;
    } else if (k == "default") {
      ASSIGN_OR_RETURN(c.is_default, ReadBool(value, child));
    } else if (k == "type") {
      ASSIGN_OR_RETURN(std::string t, ReadString(value, child));
      if (t == "files") {
        c.type = StorageClass::Type::kFiles;
      } else if (t == "block") {
        c.type = StorageClass::Type::kBlock;
      } else {
        return child.Fail(value, "must be \"files\" or \"block\", got " + Quote(t));
      }
      have_type = true;
    } else if (k == "dir") {
      dir = value;
    } else if (k == "format") {
      format = value;
    } else if (k == "volumeGroup") {
      vg = value;
    } else if (k == "devices") {
      devices = value;
    } else {
      return Invalid(ctx.source, key.Mark(), "unknown key " + Quote(child.path));
    }
  }
  if (!have_name) return ctx.Fail(node, "a storage class needs a name");
  if (!have_type)
    return ctx.Fail(node, "storage class " + Quote(c.name) + " needs a type (files or block)");
  auto only = [&](const std::optional<YAML::Node>& n, const char* key, const char* type) -> Status {
    if (!n) return Ok();
    return Ctx{ctx.source, ctx.path + "." + key}.Fail(
        *n, std::string("only a class of type ") + type + " has this key");
  };
  if (c.type == StorageClass::Type::kFiles) {
    RETURN_IF_ERROR(only(vg, "volumeGroup", "block"));
    RETURN_IF_ERROR(only(devices, "devices", "block"));
    if (dir) {
      Ctx child{ctx.source, ctx.path + ".dir"};
      ASSIGN_OR_RETURN(c.dir, ReadCleanAbsolutePath(*dir, child));
      while (c.dir.size() > 1 && c.dir.back() == '/') c.dir.pop_back();
      if (c.dir == "/") return child.Fail(*dir, "must not be the root directory");
    }
    if (format) {
      Ctx child{ctx.source, ctx.path + ".format"};
      ASSIGN_OR_RETURN(std::string f, ReadString(*format, child));
      if (f == "qcow2") {
        c.format = StorageClass::Format::kQcow2;
      } else if (f == "raw") {
        c.format = StorageClass::Format::kRaw;
      } else {
        return child.Fail(*format, "must be \"qcow2\" or \"raw\", got " + Quote(f));
      }
    }
    return c;
  }
  RETURN_IF_ERROR(only(dir, "dir", "files"));
  RETURN_IF_ERROR(only(format, "format", "files"));
  if (vg.has_value() == devices.has_value()) {
    return ctx.Fail(node, "block storage class " + Quote(c.name) +
                              " needs exactly one of volumeGroup (LVM) or devices");
  }
  if (vg) {
    Ctx child{ctx.source, ctx.path + ".volumeGroup"};
    ASSIGN_OR_RETURN(c.volume_group, ReadString(*vg, child));
    if (!IsVolumeGroupName(c.volume_group)) {
      return child.Fail(*vg, "not an LVM volume group name: " + Quote(c.volume_group));
    }
    return c;
  }
  Ctx child{ctx.source, ctx.path + ".devices"};
  if (!devices->IsSequence())
    return child.Fail(*devices, "expected a list, got " + Describe(*devices));
  if (devices->size() == 0) return child.Fail(*devices, "at least one device is required");
  std::set<std::string> seen_devices;
  for (size_t i = 0; i < devices->size(); ++i) {
    Ctx item{ctx.source, child.path + "[" + std::to_string(i) + "]"};
    ASSIGN_OR_RETURN(std::string d, ReadCleanAbsolutePath((*devices)[i], item));
    if (!seen_devices.insert(d).second)
      return item.Fail((*devices)[i], "duplicate device " + Quote(d));
    c.devices.push_back(std::move(d));
  }
  return c;
}

Result<RegistryHostConfig> ReadRegistryHost(const YAML::Node& node, const Ctx& ctx) {
  if (!node.IsMap()) return ctx.Fail(node, "expected a mapping, got " + Describe(node));
  RegistryHostConfig r;
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar()) return ctx.Fail(key, "key must be a string, got " + Describe(key));
    const std::string& k = key.Scalar();
    Ctx child{ctx.source, ctx.path + "." + k};
    if (!seen.insert(k).second)
      return Invalid(ctx.source, key.Mark(), "duplicate key " + Quote(child.path));
    if (k == "host") {
      ASSIGN_OR_RETURN(r.host, ReadString(value, child));
      // host[:port]: what image references start with; no scheme, no path.
      bool ok = !r.host.empty() && r.host.size() <= 255;
      for (char ch : r.host) {
        ok = ok && (std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' ||
                    ch == ':' || ch == '[' || ch == ']');
      }
      if (!ok) return child.Fail(value, "must be a registry host[:port], got " + Quote(r.host));
    } else if (k == "insecure") {
      ASSIGN_OR_RETURN(r.insecure, ReadBool(value, child));
    } else if (k == "skipVerify") {
      ASSIGN_OR_RETURN(r.skip_verify, ReadBool(value, child));
    } else if (k == "caFile") {
      ASSIGN_OR_RETURN(r.ca_file, ReadAbsolutePath(value, child));
    } else {
      return Invalid(ctx.source, key.Mark(), "unknown key " + Quote(child.path));
    }
  }
  if (r.host.empty()) return ctx.Fail(node, "a registry needs a host");
  return r;
}

Status ReadRegistryHosts(const YAML::Node& node, const Ctx& ctx,
                         std::vector<RegistryHostConfig>& out) {
  if (node.IsNull()) {
    out.clear();
    return Ok();
  }
  if (!node.IsSequence()) return ctx.Fail(node, "expected a list, got " + Describe(node));
  std::vector<RegistryHostConfig> hosts;
  std::set<std::string> names;
  for (size_t i = 0; i < node.size(); ++i) {
    Ctx item_ctx{ctx.source, ctx.path + "[" + std::to_string(i) + "]"};
    ASSIGN_OR_RETURN(RegistryHostConfig r, ReadRegistryHost(node[i], item_ctx));
    if (!names.insert(r.host).second)
      return item_ctx.Fail(node[i], "duplicate registry " + Quote(r.host));
    hosts.push_back(std::move(r));
  }
  out = std::move(hosts);
  return Ok();
}

std::string ShowRegistryHosts(const std::vector<RegistryHostConfig>& hosts) {
  std::string out = "[";
  for (const auto& r : hosts) {
    out += (out.size() > 1 ? ", " : "") + r.host + (r.insecure ? " insecure" : "") +
           (r.skip_verify ? " skipVerify" : "") + (r.ca_file.empty() ? "" : " ca " + r.ca_file);
  }
  return out + "]";
}

Status ReadStorageClasses(const YAML::Node& node, const Ctx& ctx, std::vector<StorageClass>& out) {
  if (node.IsNull()) {  // "classes:" with nothing after it means the default
    out = Config{}.storage.classes;
    return Ok();
  }
  if (!node.IsSequence()) return ctx.Fail(node, "expected a list, got " + Describe(node));
  std::vector<StorageClass> classes;
  std::set<std::string> names;
  std::map<std::string, std::string> device_class;
  std::string default_class;
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node item = node[i];
    Ctx item_ctx{ctx.source, ctx.path + "[" + std::to_string(i) + "]"};
    ASSIGN_OR_RETURN(StorageClass c, ReadStorageClass(item, item_ctx));
    if (!names.insert(c.name).second) {
      return Ctx{ctx.source, item_ctx.path + ".name"}.Fail(item["name"],
                                                           "duplicate class " + Quote(c.name));
    }
    if (c.is_default) {
      if (!default_class.empty()) {
        return Ctx{ctx.source, item_ctx.path + ".default"}.Fail(
            item["default"], "two default classes: " + Quote(default_class) + " and " +
                                 Quote(c.name) + " (at most one class may be the default)");
      }
      default_class = c.name;
    }
    for (size_t d = 0; d < c.devices.size(); ++d) {
      auto [it, inserted] = device_class.emplace(c.devices[d], c.name);
      if (!inserted) {
        return Ctx{ctx.source, item_ctx.path + ".devices[" + std::to_string(d) + "]"}.Fail(
            item["devices"][d],
            "device " + Quote(c.devices[d]) + " is already in class " + Quote(it->second));
      }
    }
    classes.push_back(std::move(c));
  }
  out = std::move(classes);
  return Ok();
}

std::string ShowStorageClasses(const std::vector<StorageClass>& classes) {
  std::string out = "[";
  for (const auto& c : classes) {
    if (out.size() > 1) out += ", ";
    out += "{" + c.name + (c.is_default ? " default" : "");
    if (c.type == StorageClass::Type::kFiles) {
      out += " files " + (c.dir.empty() ? std::string("<stateDir>/volumes") : c.dir) +
             (c.format == StorageClass::Format::kQcow2 ? " qcow2" : " raw");
    } else if (!c.volume_group.empty()) {
      out += " block vg " + c.volume_group;
    } else {
      std::string devices;
      for (const auto& d : c.devices) devices += (devices.empty() ? "" : ",") + d;
      out += " block devices " + devices;
    }
    out += "}";
  }
  return out + "]";
}

// One network.hostNetworks entry.
Result<HostNetworkConfig> ReadHostNetwork(const YAML::Node& node, const Ctx& ctx) {
  if (!node.IsMap()) return ctx.Fail(node, "expected a mapping, got " + Describe(node));
  HostNetworkConfig h;
  std::optional<YAML::Node> mode;
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar()) return ctx.Fail(key, "key must be a string, got " + Describe(key));
    const std::string& k = key.Scalar();
    Ctx child{ctx.source, ctx.path + "." + k};
    if (!seen.insert(k).second)
      return Invalid(ctx.source, key.Mark(), "duplicate key " + Quote(child.path));
    if (k == "name") {
      ASSIGN_OR_RETURN(h.name, ReadString(value, child));
      if (!IsDnsLabel(h.name)) {
        return child.Fail(value,
                          "must be a lowercase DNS label (like \"lan\"), got " + Quote(h.name));
      }
    } else if (k == "bridge" || k == "macvtap") {
      ASSIGN_OR_RETURN(std::string dev, ReadString(value, child));
      if (!vmm::IsNetdevName(dev)) {
        return child.Fail(value,
                          "not a network interface name (1-15 printable bytes, no '/', "
                          "':' or space, not \".\" or \"..\"): " +
                              Quote(dev));
      }
      (k == "bridge" ? h.bridge : h.macvtap) = std::move(dev);
    } else if (k == "macvtapMode") {
      ASSIGN_OR_RETURN(h.macvtap_mode, ReadString(value, child));
      if (h.macvtap_mode != "bridge" && h.macvtap_mode != "vepa" && h.macvtap_mode != "private" &&
          h.macvtap_mode != "passthrough") {
        return child.Fail(
            value, "must be bridge, vepa, private or passthrough, got " + Quote(h.macvtap_mode));
      }
      mode = value;
    } else {
      return Invalid(ctx.source, key.Mark(), "unknown key " + Quote(child.path));
    }
  }
  if (h.name.empty()) return ctx.Fail(node, "a host network needs a name");
  if (h.bridge.empty() == h.macvtap.empty()) {
    return ctx.Fail(node, "host network " + Quote(h.name) +
                              " needs exactly one of bridge (a host bridge) or macvtap (a host "
                              "NIC)");
  }
  if (mode && h.macvtap.empty()) {
    return Ctx{ctx.source, ctx.path + ".macvtapMode"}.Fail(
        *mode, "only a macvtap host network has a mode");
  }
  return h;
}

Status ReadHostNetworks(const YAML::Node& node, const Ctx& ctx,
                        std::vector<HostNetworkConfig>& out) {
  if (node.IsNull()) {
    out.clear();
    return Ok();
  }
  if (!node.IsSequence()) return ctx.Fail(node, "expected a list, got " + Describe(node));
  std::vector<HostNetworkConfig> nets;
  std::set<std::string> names;
  for (size_t i = 0; i < node.size(); ++i) {
    Ctx item_ctx{ctx.source, ctx.path + "[" + std::to_string(i) + "]"};
    ASSIGN_OR_RETURN(HostNetworkConfig h, ReadHostNetwork(node[i], item_ctx));
    if (!names.insert(h.name).second) {
      return Ctx{ctx.source, item_ctx.path + ".name"}.Fail(
          node[i]["name"], "duplicate host network " + Quote(h.name));
    }
    nets.push_back(std::move(h));
  }
  out = std::move(nets);
  return Ok();
}

std::string ShowHostNetworks(const std::vector<HostNetworkConfig>& nets) {
  std::string out = "[";
  for (const auto& h : nets) {
    out +=
        (out.size() > 1 ? ", " : "") + h.name +
        (h.bridge.empty() ? " macvtap " + h.macvtap + " " + h.macvtap_mode : " bridge " + h.bridge);
  }
  return out + "]";
}

// An IPv4 prefix with room for hosts (a network, a gateway/first address, a broadcast).
Result<std::string> ReadIpv4Cidr(const YAML::Node& node, const Ctx& ctx) {
  ASSIGN_OR_RETURN(std::string text, ReadString(node, ctx));
  auto prefix = ParseIpv4Prefix(text);
  if (!prefix) return ctx.Fail(node, prefix.error().message);
  if (prefix->length > 30) {
    return ctx.Fail(node, "prefix /" + std::to_string(prefix->length) +
                              " leaves no room for hosts (at most /30)");
  }
  return text;
}

// One leaf key: how to read it from a node and how to show its value (for ChangedKeys).
struct KeySpec {
  const char* path;
  Status (*read)(const YAML::Node&, const Ctx&, Config&);
  std::string (*show)(const Config&);
};

std::string JoinList(const std::vector<std::string>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + v[i];
  return out + "]";
}

const std::vector<KeySpec>& Keys() {
  static const std::vector<KeySpec> keys = {
      {"stateDir",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.state_dir, ReadAbsolutePath(n, ctx));
         return Ok();
       },
       [](const Config& c) { return c.state_dir; }},
      {"runDir",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.run_dir, ReadAbsolutePath(n, ctx));
         return Ok();
       },
       [](const Config& c) { return c.run_dir; }},
      {"api.listen",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         return ReadListen(n, ctx, c.api.listen);
       },
       [](const Config& c) { return JoinList(c.api.listen); }},
      {"api.ioThreads",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(uint64_t v, ReadUint(n, ctx, 1, 64));
         c.api.io_threads = static_cast<int>(v);
         return Ok();
       },
       [](const Config& c) { return std::to_string(c.api.io_threads); }},
      {"api.maxBodyBytes",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.api.max_body_bytes, ReadSize(n, ctx, 1024, 1ull << 30));
         return Ok();
       },
       [](const Config& c) { return std::to_string(c.api.max_body_bytes); }},
      {"api.maxConnections",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.api.max_connections, ReadUint(n, ctx, 1, 1'000'000));
         return Ok();
       },
       [](const Config& c) { return std::to_string(c.api.max_connections); }},
      {"api.kubevirtVersion",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(std::string v, ReadString(n, ctx));
         // vMAJOR.MINOR.PATCH with an optional -prerelease/+build suffix (virtctl parses it).
         size_t i = 0;
         bool ok = !v.empty() && v[i++] == 'v';
         for (int part = 0; ok && part < 3; ++part) {
           size_t start = i;
           while (i < v.size() && v[i] >= '0' && v[i] <= '9') ++i;
           ok = i > start && (part == 2 || (i < v.size() && v[i++] == '.'));
         }
         if (ok && i < v.size()) ok = (v[i] == '-' || v[i] == '+') && i + 1 < v.size();
         if (!ok) {
           return ctx.Fail(n, "must be a semantic version like \"v1.0.0\", got " + Quote(v));
         }
         c.api.kubevirt_version = std::move(v);
         return Ok();
       },
       [](const Config& c) { return c.api.kubevirt_version; }},
      {"api.watchBookmarkInterval",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.api.watch_bookmark_interval, ReadDuration(n, ctx));
         return Ok();
       },
       [](const Config& c) { return FormatDuration(c.api.watch_bookmark_interval); }},
      {"api.watchTimeout",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.api.watch_timeout, ReadDuration(n, ctx));
         return Ok();
       },
       [](const Config& c) { return FormatDuration(c.api.watch_timeout); }},
      {"api.eventTTL",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.api.event_ttl, ReadDuration(n, ctx));
         return Ok();
       },
       [](const Config& c) { return FormatDuration(c.api.event_ttl); }},
      {"api.tls.certFile",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.api.tls.cert_file, ReadOptionalPath(n, ctx));
         return Ok();
       },
       [](const Config& c) { return c.api.tls.cert_file; }},
      {"api.tls.keyFile",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.api.tls.key_file, ReadOptionalPath(n, ctx));
         return Ok();
       },
       [](const Config& c) { return c.api.tls.key_file; }},
      {"api.tls.caFile",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.api.tls.ca_file, ReadOptionalPath(n, ctx));
         return Ok();
       },
       [](const Config& c) { return c.api.tls.ca_file; }},
      {"api.tls.extraSANs",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         if (n.IsNull()) return c.api.tls.extra_sans.clear(), Ok();
         if (!n.IsSequence()) return ctx.Fail(n, "expected a list, got " + Describe(n));
         std::vector<std::string> sans;
         for (size_t i = 0; i < n.size(); ++i) {
           Ctx item_ctx{ctx.source, ctx.path + "[" + std::to_string(i) + "]"};
           ASSIGN_OR_RETURN(std::string san, ReadString(n[i], item_ctx));
           boost::system::error_code ec;
           (void)boost::asio::ip::make_address(san, ec);
           if (ec && !IsDnsSubdomain(san) &&
               !(san.size() > 2 && san[0] == '*' && san[1] == '.' &&
                 IsDnsSubdomain(san.substr(2)))) {
             return item_ctx.Fail(n[i], "not an IP address or DNS name: " + Quote(san));
           }
           sans.push_back(std::move(san));
         }
         c.api.tls.extra_sans = std::move(sans);
         return Ok();
       },
       [](const Config& c) { return JoinList(c.api.tls.extra_sans); }},
      {"api.auth.tokenFile",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.api.auth.token_file, ReadOptionalPath(n, ctx));
         return Ok();
       },
       [](const Config& c) { return c.api.auth.token_file; }},
      {"api.auth.plainHttp",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(std::string v, ReadString(n, ctx));
         if (v != "token" && v != "none") {
           return ctx.Fail(n, "expected \"token\" or \"none\", got " + Quote(v));
         }
         c.api.auth.plain_http_no_auth = v == "none";
         return Ok();
       },
       [](const Config& c) {
         return std::string(c.api.auth.plain_http_no_auth ? "none" : "token");
       }},
      {"libvirt.uri",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         if (n.IsNull()) {  // "uri:" with nothing after it means the default, like ""
           c.libvirt.uri.clear();
           return Ok();
         }
         ASSIGN_OR_RETURN(std::string uri, ReadString(n, ctx));
         auto scheme_end = uri.find("://");
         bool scheme_ok = scheme_end != std::string::npos && scheme_end > 0 &&
                          std::all_of(uri.begin(), uri.begin() + scheme_end, [](char ch) {
                            return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                                   ch == '+' || ch == '-' || ch == '.';
                          });
         if (!uri.empty() && !scheme_ok) {
           return ctx.Fail(n, "not a libvirt URI (like qemu:///system): " + Quote(uri));
         }
         c.libvirt.uri = std::move(uri);
         return Ok();
       },
       [](const Config& c) { return c.libvirt.uri; }},
      {"vms.enabled",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.vms.enabled, ReadBool(n, ctx));
         return Ok();
       },
       [](const Config& c) { return std::string(c.vms.enabled ? "true" : "false"); }},
      {"vms.hostDiskDirs",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         if (n.IsNull()) {
           c.vms.host_disk_dirs.clear();
           return Ok();
         }
         if (!n.IsSequence()) return ctx.Fail(n, "expected a list, got " + Describe(n));
         std::vector<std::string> dirs;
         for (size_t i = 0; i < n.size(); ++i) {
           Ctx item_ctx{ctx.source, ctx.path + "[" + std::to_string(i) + "]"};
           ASSIGN_OR_RETURN(std::string dir, ReadAbsolutePath(n[i], item_ctx));
           if (dir.find("/../") != std::string::npos || dir.ends_with("/..")) {
             return item_ctx.Fail(n[i], "must not contain \"..\": " + Quote(dir));
           }
           dirs.push_back(std::move(dir));
         }
         c.vms.host_disk_dirs = std::move(dirs);
         return Ok();
       },
       [](const Config& c) { return JoinList(c.vms.host_disk_dirs); }},
      {"vms.resyncPeriod",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.vms.resync_period, ReadDuration(n, ctx));
         return Ok();
       },
       [](const Config& c) { return FormatDuration(c.vms.resync_period); }},
      {"cgroups.root",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         if (n.IsNull()) {
           c.cgroups.root.clear();
           return Ok();
         }
         ASSIGN_OR_RETURN(std::string root, ReadString(n, ctx));
         if (root.find("/../") != std::string::npos || root.ends_with("/..") ||
             root.starts_with("../") || root == "..") {
           return ctx.Fail(n, "must not contain \"..\": " + Quote(root));
         }
         c.cgroups.root = std::move(root);
         return Ok();
       },
       [](const Config& c) { return c.cgroups.root; }},
      {"cgroups.bpfRoot",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(std::string dir, ReadAbsolutePath(n, ctx));
         if (dir.find("/../") != std::string::npos || dir.ends_with("/..")) {
           return ctx.Fail(n, "must not contain \"..\": " + Quote(dir));
         }
         c.cgroups.bpf_root = std::move(dir);
         return Ok();
       },
       [](const Config& c) { return c.cgroups.bpf_root; }},
      {"storage.classes",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         return ReadStorageClasses(n, ctx, c.storage.classes);
       },
       [](const Config& c) { return ShowStorageClasses(c.storage.classes); }},
      {"images.dir",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(std::string v, ReadString(n, ctx));
         if (!v.empty() && v[0] != '/') {
           return ctx.Fail(n, "must be an absolute path (or empty), got " + Quote(v));
         }
         c.images.dir = std::move(v);
         return Ok();
       },
       [](const Config& c) { return c.images.dir; }},
      {"images.authFile",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(std::string v, ReadString(n, ctx));
         if (!v.empty() && v[0] != '/') {
           return ctx.Fail(n, "must be an absolute path (or empty), got " + Quote(v));
         }
         c.images.auth_file = std::move(v);
         return Ok();
       },
       [](const Config& c) { return c.images.auth_file; }},
      {"images.platform",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(std::string p, ReadString(n, ctx));
         if (p.empty()) {  // this host's
           c.images.platform.clear();
           return Ok();
         }
         // os/arch or os/arch/variant, lowercase words.
         int slashes = 0;
         bool ok = !p.empty() && p.front() != '/' && p.back() != '/';
         for (size_t i = 0; ok && i < p.size(); ++i) {
           if (p[i] == '/') {
             ok = p[i - 1] != '/';
             ++slashes;
           } else {
             ok = std::islower(static_cast<unsigned char>(p[i])) ||
                  std::isdigit(static_cast<unsigned char>(p[i])) || p[i] == '_';
           }
         }
         if (!ok || slashes < 1 || slashes > 2) {
           return ctx.Fail(n, "must be os/arch[/variant] like \"linux/amd64\", got " + Quote(p));
         }
         c.images.platform = std::move(p);
         return Ok();
       },
       [](const Config& c) { return c.images.platform; }},
      {"images.registries",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         return ReadRegistryHosts(n, ctx, c.images.registries);
       },
       [](const Config& c) { return ShowRegistryHosts(c.images.registries); }},
      {"images.maxVirtualSize",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.images.max_virtual_size, ReadSize(n, ctx, 1ull << 20, 1ull << 50));
         return Ok();
       },
       [](const Config& c) { return std::to_string(c.images.max_virtual_size); }},
      {"images.cacheBudget",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.images.cache_budget, ReadSize(n, ctx, 0, 1ull << 50));
         return Ok();
       },
       [](const Config& c) { return std::to_string(c.images.cache_budget); }},
      {"images.pullWorkers",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(uint64_t v, ReadUint(n, ctx, 1, 16));
         c.images.pull_workers = static_cast<int>(v);
         return Ok();
       },
       [](const Config& c) { return std::to_string(c.images.pull_workers); }},
      {"images.stallTimeout",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.images.stall_timeout, ReadDuration(n, ctx));
         if (c.images.stall_timeout < std::chrono::seconds(1)) {
           return ctx.Fail(n, "must be at least 1s");
         }
         return Ok();
       },
       [](const Config& c) { return FormatDuration(c.images.stall_timeout); }},
      {"network.bridge",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(std::string v, ReadString(n, ctx));
         if (!vmm::IsNetdevName(v)) {
           return ctx.Fail(n,
                           "not a network interface name (1-15 printable bytes, no '/', ':' "
                           "or space, not \".\" or \"..\"): " +
                               Quote(v));
         }
         c.network.bridge = std::move(v);
         return Ok();
       },
       [](const Config& c) { return c.network.bridge; }},
      {"network.cidr",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.network.cidr, ReadIpv4Cidr(n, ctx));
         return Ok();
       },
       [](const Config& c) { return c.network.cidr; }},
      {"network.mtu",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(uint64_t v, ReadUint(n, ctx, 0, 65535));
         if (v != 0 && v < 68) return ctx.Fail(n, "must be 0 (the kernel's default) or 68-65535");
         c.network.mtu = static_cast<uint32_t>(v);
         return Ok();
       },
       [](const Config& c) { return std::to_string(c.network.mtu); }},
      {"network.nodePortRange",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(std::string v, ReadString(n, ctx));
         auto number = [](std::string_view t, uint32_t& out) {
           auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), out);
           return !t.empty() && ec == std::errc() && end == t.data() + t.size() && t[0] != '+';
         };
         const size_t dash = v.find('-');
         uint32_t first = 0, last = 0;
         if (dash == std::string::npos || !number(std::string_view(v).substr(0, dash), first) ||
             !number(std::string_view(v).substr(dash + 1), last) || first < 1 || first > last ||
             last > 65535) {
           return ctx.Fail(n, "must be \"A-B\" with 1 <= A <= B <= 65535, got " + Quote(v));
         }
         c.network.node_port_first = first;
         c.network.node_port_last = last;
         return Ok();
       },
       [](const Config& c) {
         return std::to_string(c.network.node_port_first) + "-" +
                std::to_string(c.network.node_port_last);
       }},
      {"network.serviceCIDR",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.network.service_cidr, ReadIpv4Cidr(n, ctx));
         return Ok();
       },
       [](const Config& c) { return c.network.service_cidr; }},
      {"network.hostNetworks",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         return ReadHostNetworks(n, ctx, c.network.host_networks);
       },
       [](const Config& c) { return ShowHostNetworks(c.network.host_networks); }},
      {"log.level",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(std::string s, ReadString(n, ctx));
         auto level = log::ParseLevel(s);
         if (!level) return ctx.Fail(n, level.error().message);
         c.log.level = *level;
         return Ok();
       },
       [](const Config& c) { return std::string(log::LevelName(c.log.level)); }},
      {"log.target",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(std::string s, ReadString(n, ctx));
         auto target = log::ParseTarget(s);
         if (!target) return ctx.Fail(n, target.error().message);
         c.log.target = *target;
         return Ok();
       },
       [](const Config& c) { return std::to_string(static_cast<int>(c.log.target)); }},
      {"store.initialMapSize",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.store.initial_map_size, ReadSize(n, ctx, 1ull << 20, 1ull << 40));
         return Ok();
       },
       [](const Config& c) { return std::to_string(c.store.initial_map_size); }},
      {"store.eventRetention.count",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.store.event_retention.count,
                          ReadUint(n, ctx, 1, std::numeric_limits<uint32_t>::max()));
         return Ok();
       },
       [](const Config& c) { return std::to_string(c.store.event_retention.count); }},
      {"store.eventRetention.age",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(milliseconds d, ReadDuration(n, ctx));
         // The store keeps whole seconds; refuse what it would silently round.
         if (d.count() % 1000 != 0) {
           return ctx.Fail(n, "must be a whole number of seconds, got " + Quote(n.Scalar()));
         }
         c.store.event_retention.age = d;
         return Ok();
       },
       [](const Config& c) { return FormatDuration(c.store.event_retention.age); }},
      {"shutdown.timeout",
       [](const YAML::Node& n, const Ctx& ctx, Config& c) -> Status {
         ASSIGN_OR_RETURN(c.shutdown.timeout, ReadDuration(n, ctx));
         return Ok();
       },
       [](const Config& c) { return FormatDuration(c.shutdown.timeout); }},
  };
  return keys;
}

const KeySpec* FindKey(std::string_view path) {
  for (const auto& k : Keys()) {
    if (path == k.path) return &k;
  }
  return nullptr;
}

// A mapping section is any proper prefix of a leaf path ("api", "store.eventRetention").
bool IsSection(std::string_view path) {
  for (const auto& k : Keys()) {
    std::string_view leaf = k.path;
    if (leaf.size() > path.size() && leaf.substr(0, path.size()) == path &&
        leaf[path.size()] == '.') {
      return true;
    }
  }
  return false;
}

Status ReadMapping(const YAML::Node& node, const Ctx& ctx, Config& config) {
  // "api:" with nothing under it is an empty section: all defaults.
  if (node.IsNull()) return Ok();
  if (!node.IsMap()) {
    std::string what = ctx.path.empty() ? "the top level" : ctx.path;
    return Invalid(ctx.source, node.Mark(), what + ": expected a mapping, got " + Describe(node));
  }
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;
    const YAML::Node value = it->second;
    if (!key.IsScalar()) {
      return Invalid(ctx.source, key.Mark(),
                     (ctx.path.empty() ? std::string("key") : ctx.path + ": key") +
                         " must be a string, got " + Describe(key));
    }
    std::string path = ctx.path.empty() ? key.Scalar() : ctx.path + "." + key.Scalar();
    if (!seen.insert(key.Scalar()).second) {
      return Invalid(ctx.source, key.Mark(), "duplicate key " + Quote(path));
    }
    Ctx child{ctx.source, path};
    if (const KeySpec* spec = FindKey(path)) {
      RETURN_IF_ERROR(spec->read(value, child, config));
    } else if (IsSection(path)) {
      RETURN_IF_ERROR(ReadMapping(value, child, config));
    } else {
      return Invalid(ctx.source, key.Mark(), "unknown key " + Quote(path));
    }
  }
  return Ok();
}

}  // namespace

std::string Config::EffectiveTokenFile() const {
  return api.auth.token_file.empty() ? state_dir + "/tokens.csv" : api.auth.token_file;
}

std::string Config::PkiDir() const { return state_dir + "/pki"; }

std::string Config::EffectiveLibvirtUri() const {
  if (!libvirt.uri.empty()) return libvirt.uri;
  return "qemu:///embed?root=" + state_dir + "/libvirt";
}

std::string Config::EffectiveImagesDir() const {
  return images.dir.empty() ? state_dir + "/images" : images.dir;
}

std::vector<StorageClass> Config::EffectiveStorageClasses() const {
  std::vector<StorageClass> out = storage.classes;
  for (auto& c : out) {
    if (c.type == StorageClass::Type::kFiles && c.dir.empty()) c.dir = state_dir + "/volumes";
  }
  return out;
}

std::string Config::DefaultStorageClass() const {
  for (const auto& c : storage.classes) {
    if (c.is_default) return c.name;
  }
  return "";
}

const std::vector<std::string>& ConfigKeyPaths() {
  static const std::vector<std::string> paths = [] {
    std::vector<std::string> v;
    for (const auto& k : Keys()) v.emplace_back(k.path);
    return v;
  }();
  return paths;
}

Result<Config> ParseConfig(std::string_view yaml, std::string_view source) {
  YAML::Node root;
  // yaml-cpp reports syntax errors by exception; they stop here (STYLE.md).
  try {
    root = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    return Invalid(source, e.mark, "invalid YAML: " + e.msg);
  }
  Config config;
  Ctx ctx{source, ""};
  try {
    RETURN_IF_ERROR(ReadMapping(root, ctx, config));
    // Checks across keys, reported at the later key (both were checked alone already).
    auto pods = ParseIpv4Prefix(config.network.cidr);
    auto services = ParseIpv4Prefix(config.network.service_cidr);
    if (pods && services && pods->Overlaps(*services)) {
      const YAML::Node& const_root = root;
      const YAML::Node net = const_root.IsMap() ? const_root["network"] : YAML::Node();
      const YAML::Node at = net.IsMap() && net["serviceCIDR"] ? net["serviceCIDR"]
                            : net.IsMap() && net["cidr"]      ? net["cidr"]
                                                              : const_root;
      return Invalid(source, at.Mark(),
                     "network.serviceCIDR: " + Quote(config.network.service_cidr) +
                         " overlaps network.cidr " + Quote(config.network.cidr));
    }
    // api.tls.certFile and keyFile go together; caFile only with them.
    auto child = [](const YAML::Node& n, const char* key) -> YAML::Node {
      if (!n.IsMap()) return YAML::Node();
      for (auto it = n.begin(); it != n.end(); ++it) {
        if (it->first.IsScalar() && it->first.Scalar() == key) return it->second;
      }
      return YAML::Node();
    };
    auto tls_mark = [&](const char* key) {
      YAML::Node at = child(child(child(root, "api"), "tls"), key);
      return at.IsDefined() && !at.IsNull() ? at.Mark() : root.Mark();
    };
    if (config.api.tls.cert_file.empty() != config.api.tls.key_file.empty()) {
      const char* given = config.api.tls.cert_file.empty() ? "keyFile" : "certFile";
      return Invalid(source, tls_mark(given),
                     std::string("api.tls.") + given +
                         ": api.tls.certFile and api.tls.keyFile must be set together");
    }
    if (!config.api.tls.ca_file.empty() && config.api.tls.cert_file.empty()) {
      return Invalid(source, tls_mark("caFile"),
                     "api.tls.caFile: only with api.tls.certFile and api.tls.keyFile (the "
                     "generated CA is used otherwise)");
    }
  } catch (const YAML::Exception& e) {
    return Invalid(source, e.mark, e.msg);
  }
  return config;
}

bool Ipv4Prefix::Overlaps(const Ipv4Prefix& other) const {
  const uint32_t shorter = std::min(length, other.length);
  const uint32_t mask = shorter == 0 ? 0 : ~uint32_t{0} << (32 - shorter);
  return (address & mask) == (other.address & mask);
}

Result<Ipv4Prefix> ParseIpv4Prefix(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return MakeError(Code::kInvalid, "invalid IPv4 prefix " + Quote(text) + " (" +
                                         std::string(why) + "; use e.g. \"10.208.0.0/24\")");
  };
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos) return bad("no /length");
  std::string_view addr = text.substr(0, slash);
  uint32_t address = 0;
  for (int part = 0; part < 4; ++part) {
    const size_t dot = part < 3 ? addr.find('.') : addr.size();
    if (dot == std::string_view::npos) return bad("expected four decimal parts");
    std::string_view digits = addr.substr(0, dot);
    uint32_t v = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), v);
    if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size() || v > 255 ||
        (digits.size() > 1 && digits[0] == '0')) {
      return bad("expected four decimal parts 0-255");
    }
    address = address << 8 | v;
    addr = part < 3 ? addr.substr(dot + 1) : std::string_view();
  }
  std::string_view len_text = text.substr(slash + 1);
  uint32_t length = 0;
  auto [end, ec] = std::from_chars(len_text.data(), len_text.data() + len_text.size(), length);
  if (len_text.empty() || ec != std::errc() || end != len_text.data() + len_text.size() ||
      length > 32 || (len_text.size() > 1 && len_text[0] == '0')) {
    return bad("the length must be 0-32");
  }
  const uint32_t mask = length == 0 ? 0 : ~uint32_t{0} << (32 - length);
  if ((address & ~mask) != 0) return bad("host bits are set; give the network address");
  return Ipv4Prefix{address, length};
}

Result<Config> LoadConfigFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError("read config " + path.string(), errno);
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return ErrnoError("read config " + path.string(), errno);
  return ParseConfig(text.str(), path.string());
}

Result<std::string> CanonicalListenAddress(std::string_view text) {
  auto addr = api::ListenAddress::Parse(text);
  if (!addr) return std::move(addr).error();
  return addr->ToString();
}

std::vector<std::string> ChangedKeys(const Config& a, const Config& b) {
  std::vector<std::string> changed;
  for (const auto& k : Keys()) {
    if (k.show(a) != k.show(b)) changed.emplace_back(k.path);
  }
  return changed;
}

Result<milliseconds> ParseDuration(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return MakeError(Code::kInvalid, "invalid duration " + Quote(text) + " (" + std::string(why) +
                                         "; use e.g. \"45s\", \"30m\", \"1h\", \"1h30m\", "
                                         "\"500ms\")");
  };
  if (text.empty()) return bad("empty");
  constexpr int64_t kMax = int64_t{100} * 365 * 24 * 3600 * 1000;  // 100 years, in ms
  int64_t total = 0;
  size_t i = 0;
  while (i < text.size()) {
    int64_t n = 0;
    auto [end, ec] = std::from_chars(text.data() + i, text.data() + text.size(), n);
    if (ec != std::errc() || n < 0) return bad("expected a number");
    i = end - text.data();
    size_t unit_start = i;
    while (i < text.size() && text[i] >= 'a' && text[i] <= 'z') ++i;
    std::string_view unit = text.substr(unit_start, i - unit_start);
    int64_t scale = 0;
    if (unit == "ms") {
      scale = 1;
    } else if (unit == "s") {
      scale = 1000;
    } else if (unit == "m") {
      scale = 60'000;
    } else if (unit == "h") {
      scale = 3'600'000;
    } else if (unit.empty()) {
      return bad("missing unit");
    } else {
      return bad("unknown unit \"" + std::string(unit) + "\"");
    }
    if (n > kMax / scale || total + n * scale > kMax) return bad("too long");
    total += n * scale;
  }
  return milliseconds(total);
}

std::string FormatDuration(milliseconds d) {
  int64_t ms = d.count();
  if (ms == 0) return "0s";
  std::string out;
  if (ms < 0) {
    out = "-";
    ms = -ms;
  }
  const std::pair<int64_t, const char*> units[] = {
      {3'600'000, "h"}, {60'000, "m"}, {1000, "s"}, {1, "ms"}};
  for (auto [scale, name] : units) {
    if (ms >= scale) {
      out += std::to_string(ms / scale) + name;
      ms %= scale;
    }
  }
  return out;
}

Result<uint64_t> ParseByteSize(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return MakeError(Code::kInvalid, "invalid byte size " + Quote(text) + " (" + std::string(why) +
                                         "; use an integer or e.g. \"64Mi\", \"1Gi\")");
  };
  uint64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
  if (text.empty() || ec == std::errc::invalid_argument) return bad("expected a number");
  if (ec == std::errc::result_out_of_range) return bad("too large");
  std::string_view suffix = text.substr(end - text.data());
  int shift = 0;
  if (suffix.empty()) {
    shift = 0;
  } else if (suffix == "Ki") {
    shift = 10;
  } else if (suffix == "Mi") {
    shift = 20;
  } else if (suffix == "Gi") {
    shift = 30;
  } else if (suffix == "Ti") {
    shift = 40;
  } else {
    return bad("unknown suffix \"" + std::string(suffix) + "\"");
  }
  if (shift > 0 && n > (std::numeric_limits<uint64_t>::max() >> shift)) return bad("too large");
  return n << shift;
}

}  // namespace edgevirt::daemon
