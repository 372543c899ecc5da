#include "daemon/access.h"

#include <netdb.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <boost/asio/ip/address.hpp>

#include "common/log.h"

namespace edgevirt::daemon {
namespace {

namespace fs = std::filesystem;

Result<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError("read " + path, errno);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string Base64(std::string_view in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out.push_back(kAlphabet[(v >> s) & 63]);
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += {kAlphabet[(v >> 18) & 63], kAlphabet[(v >> 12) & 63], '=', '='};
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += {kAlphabet[(v >> 18) & 63], kAlphabet[(v >> 12) & 63], kAlphabet[(v >> 6) & 63], '='};
  }
  return out;
}

// A YAML double-quoted scalar (JSON string syntax is valid YAML).
std::string Quoted(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", static_cast<unsigned char>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

bool IsWildcard(const std::string& host) { return host == "0.0.0.0" || host == "::"; }

// This host's name if it resolves, else its first non-loopback address, else 127.0.0.1.
std::string ReachableHostName() {
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) == 0 && host[0] != '\0') {
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (::getaddrinfo(host, nullptr, &hints, &res) == 0) {
      ::freeaddrinfo(res);
      return host;
    }
  }
  for (const auto& san : api::HostSans({})) {
    if (san.rfind("IP:", 0) != 0) continue;
    std::string ip = san.substr(3);
    if (ip == "127.0.0.1" || ip == "::1") continue;
    return ip.find(':') != std::string::npos ? "[" + ip + "]" : ip;
  }
  return "127.0.0.1";
}

}  // namespace

std::vector<std::string> WantedSans(const Config& config) {
  std::vector<std::string> extra = config.api.tls.extra_sans;
  for (const auto& text : config.api.listen) {
    auto a = api::ListenAddress::Parse(text);
    if (a && a->kind == api::ListenAddress::Kind::kHttps && !IsWildcard(a->host)) {
      extra.push_back(a->host);
    }
  }
  return api::HostSans(extra);
}

Result<api::TlsOptions> PrepareTls(const Config& config) {
  api::TlsOptions tls;
  if (!config.api.tls.cert_file.empty()) {
    tls.cert_file = config.api.tls.cert_file;
    tls.key_file = config.api.tls.key_file;
    tls.client_ca_file = config.api.tls.ca_file;
    return tls;
  }
  const api::PkiPaths paths{config.PkiDir()};
  auto state = api::EnsureServerPki(paths, WantedSans(config));
  if (!state) return std::move(state).error().Wrap("certificates in " + paths.dir.string());
  if (state->ca_created) {
    EV_LOG(kNotice).Field("CA_FILE", paths.CaCert().string())
        << "generated the API's CA " << paths.CaCert().string();
  }
  if (state->server_issued) {
    std::string sans;
    for (const auto& s : state->sans) sans += (sans.empty() ? "" : ", ") + s;
    std::string missing;
    for (const auto& s : state->missing_before) missing += (missing.empty() ? "" : ", ") + s;
    EV_LOG(kNotice) << "issued the API's server certificate " << paths.ServerCert().string()
                    << " for " << sans
                    << (missing.empty() ? std::string() : " (the old one lacked " + missing + ")");
  }
  tls.cert_file = paths.ServerCert().string();
  tls.key_file = paths.ServerKey().string();
  tls.client_ca_file = paths.CaCert().string();
  return tls;
}

Status EnsureTokenFile(const Config& config) {
  const std::string file = config.EffectiveTokenFile();
  std::error_code ec;
  if (fs::exists(file, ec)) return Ok();
  bool created = false;
  auto e = api::EnsureUserToken(file, "admin", api::Role::kAdmin, false, &created);
  if (!e) return std::move(e).error();
  if (created) {
    EV_LOG(kNotice).Field("TOKEN_FILE", file)
        << "created the token file " << file
        << " with an admin token for user \"admin\" (`edgevirtd kubeconfig` prints a "
           "kubeconfig with it)";
  }
  return Ok();
}

std::string DefaultServerUrl(const Config& config) {
  std::optional<api::ListenAddress> http;
  for (const auto& text : config.api.listen) {
    auto a = api::ListenAddress::Parse(text);
    if (!a) continue;
    if (a->kind == api::ListenAddress::Kind::kHttps) {
      std::string host = IsWildcard(a->host)                      ? ReachableHostName()
                         : a->host.find(':') != std::string::npos ? "[" + a->host + "]"
                                                                  : a->host;
      return "https://" + host + ":" + std::to_string(a->port);
    }
    if (a->kind == api::ListenAddress::Kind::kHttp && !http) http = *a;
  }
  if (http) return http->ToString();
  return "https://" + ReachableHostName() + ":8443";
}

Result<std::string> MakeKubeconfig(const Config& config, const KubeconfigRequest& request) {
  const std::string server = request.server.empty() ? DefaultServerUrl(config) : request.server;
  if (server.rfind("https://", 0) != 0 && server.rfind("http://", 0) != 0) {
    return MakeError(Code::kInvalid, "--server must be an http:// or https:// URL: " + server);
  }
  const bool https = server.rfind("https://", 0) == 0;
  std::string ca_pem;
  if (!config.api.tls.cert_file.empty()) {
    if (!config.api.tls.ca_file.empty()) {
      ASSIGN_OR_RETURN(ca_pem, ReadFile(config.api.tls.ca_file));
    }
  } else {
    // As a first start would: the CA and server certificate exist from now on.
    RETURN_IF_ERROR(PrepareTls(config));
    ASSIGN_OR_RETURN(ca_pem, ReadFile(api::PkiPaths{config.PkiDir()}.CaCert().string()));
  }
  std::string user_section;
  if (request.client_certificate) {
    if (!config.api.tls.cert_file.empty()) {
      return MakeError(Code::kInvalid,
                       "--client-cert needs the generated CA (api.tls.certFile is set)");
    }
    ASSIGN_OR_RETURN(api::IssuedCertificate cert,
                     api::IssueClientCertificate(api::PkiPaths{config.PkiDir()}, request.user,
                                                 std::string(api::RoleName(request.role))));
    user_section = "    client-certificate-data: " + Base64(cert.cert_pem) +
                   "\n    client-key-data: " + Base64(cert.key_pem) + "\n";
  } else {
    RETURN_IF_ERROR(EnsureTokenFile(config));
    bool created = false;
    ASSIGN_OR_RETURN(api::TokenEntry entry,
                     api::EnsureUserToken(config.EffectiveTokenFile(), request.user, request.role,
                                          request.role_given, &created));
    user_section = "    token: " + Quoted(entry.token) + "\n";
  }
  std::string out =
      "apiVersion: v1\n"
      "kind: Config\n"
      "clusters:\n"
      "- name: edgevirt\n"
      "  cluster:\n"
      "    server: " +
      Quoted(server) + "\n";
  if (https && !ca_pem.empty()) out += "    certificate-authority-data: " + Base64(ca_pem) + "\n";
  out +=
      "users:\n"
      "- name: " +
      Quoted(request.user) +
      "\n"
      "  user:\n" +
      user_section +
      "contexts:\n"
      "- name: edgevirt\n"
      "  context:\n"
      "    cluster: edgevirt\n"
      "    user: " +
      Quoted(request.user) +
      "\n"
      "    namespace: default\n"
      "current-context: edgevirt\n";
  return out;
}

}  // namespace edgevirt::daemon
