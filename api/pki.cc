#include "api/pki.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <sstream>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <boost/asio/ip/address.hpp>

#include "common/fd.h"

namespace edgevirt::api {
namespace {

namespace fs = std::filesystem;

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(BIGNUM* p) const { BN_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(GENERAL_NAMES* p) const { GENERAL_NAMES_free(p); }
};
using Key = std::unique_ptr<EVP_PKEY, Free>;
using Cert = std::unique_ptr<X509, Free>;
using Bio = std::unique_ptr<BIO, Free>;

constexpr long kCaDays = 3650;
constexpr long kLeafDays = 365;
constexpr long kRenewDays = 30;

Error SslError(const std::string& context) {
  unsigned long code = 0;
  unsigned long last = 0;
  while ((code = ERR_get_error()) != 0) last = code;
  char buf[256] = "unknown OpenSSL error";
  if (last != 0) ERR_error_string_n(last, buf, sizeof(buf));
  return MakeError(Code::kInternal, context + ": " + buf);
}

Result<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError("read " + path.string(), errno);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

// Writes `data` to `path` atomically (temporary file, fsync, rename) with `mode`.
Status WriteFileAtomic(const fs::path& path, const std::string& data, mode_t mode) {
  const fs::path tmp = path.string() + ".tmp";
  ::unlink(tmp.c_str());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode));
  if (!fd) return ErrnoError("create " + tmp.string(), errno);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoError("write " + tmp.string(), errno);
    done += static_cast<size_t>(n);
  }
  if (::fchmod(fd.get(), mode) != 0) return ErrnoError("chmod " + tmp.string(), errno);
  if (::fsync(fd.get()) != 0) return ErrnoError("fsync " + tmp.string(), errno);
  fd.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) return ErrnoError("rename " + path.string(), errno);
  return Ok();
}

Result<Key> NewKey() {
  Key key(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"));
  if (!key) return SslError("generate an EC P-256 key");
  return key;
}

Result<std::string> KeyPem(EVP_PKEY* key) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return SslError("encode a private key");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

Result<std::string> CertPem(X509* cert) {
  Bio bio(BIO_new(BIO_s_mem()));
  if (!bio || PEM_write_bio_X509(bio.get(), cert) != 1) return SslError("encode a certificate");
  char* data = nullptr;
  long len = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

Result<Cert> LoadCert(const fs::path& path) {
  ASSIGN_OR_RETURN(std::string pem, ReadFile(path));
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Cert cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (!cert) return SslError("parse certificate " + path.string());
  return cert;
}

Result<Key> LoadKey(const fs::path& path) {
  ASSIGN_OR_RETURN(std::string pem, ReadFile(path));
  Bio bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  Key key(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  if (!key) return SslError("parse key " + path.string());
  return key;
}

Status AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, Free> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str()));
  if (!ext || X509_add_ext(cert, ext.get(), -1) != 1) {
    return SslError(std::string("certificate extension ") + OBJ_nid2sn(nid) + "=" + value);
  }
  return Ok();
}

struct Subject {
  std::string common_name;
  std::string organization;  // empty: none
};

// A certificate for `key`, signed by `issuer_key` (self-signed when `issuer` is null).
Result<Cert> MakeCert(EVP_PKEY* key, const Subject& subject, X509* issuer, EVP_PKEY* issuer_key,
                      long days, const std::vector<std::pair<int, std::string>>& extensions) {
  Cert cert(X509_new());
  if (!cert) return SslError("X509_new");
  X509_set_version(cert.get(), 2);  // v3
  unsigned char serial_bytes[16];
  if (RAND_bytes(serial_bytes, sizeof(serial_bytes)) != 1) return SslError("random serial");
  serial_bytes[0] &= 0x7f;  // positive
  std::unique_ptr<BIGNUM, Free> serial(BN_bin2bn(serial_bytes, sizeof(serial_bytes), nullptr));
  if (!serial || !BN_to_ASN1_INTEGER(serial.get(), X509_get_serialNumber(cert.get()))) {
    return SslError("certificate serial");
  }
  // An hour back: clocks of clients may be a little behind.
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), days * 24 * 3600);
  X509_NAME* name = X509_get_subject_name(cert.get());
  if (!subject.organization.empty()) {
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8,
                               reinterpret_cast<const unsigned char*>(subject.organization.c_str()),
                               -1, -1, 0);
  }
  if (X509_NAME_add_entry_by_txt(
          name, "CN", MBSTRING_UTF8,
          reinterpret_cast<const unsigned char*>(subject.common_name.c_str()), -1, -1, 0) != 1) {
    return SslError("certificate subject CN=" + subject.common_name);
  }
  X509* signer = issuer != nullptr ? issuer : cert.get();
  X509_set_issuer_name(cert.get(), X509_get_subject_name(signer));
  if (X509_set_pubkey(cert.get(), key) != 1) return SslError("certificate public key");
  for (const auto& [nid, value] : extensions) {
    RETURN_IF_ERROR(AddExtension(cert.get(), signer, nid, value));
  }
  if (X509_sign(cert.get(), issuer_key, EVP_sha256()) <= 0) return SslError("sign certificate");
  return cert;
}

std::string Join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ",") + s;
  return out;
}

std::vector<std::string> SansOf(X509* cert) {
  std::vector<std::string> out;
  std::unique_ptr<GENERAL_NAMES, Free> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return out;
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* gn = sk_GENERAL_NAME_value(names.get(), i);
    if (gn->type == GEN_DNS) {
      const ASN1_STRING* s = gn->d.dNSName;
      out.push_back("DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                         ASN1_STRING_length(s)));
    } else if (gn->type == GEN_IPADD) {
      const ASN1_OCTET_STRING* s = gn->d.iPAddress;
      char text[INET6_ADDRSTRLEN] = {};
      const int len = ASN1_STRING_length(s);
      const int family = len == 4 ? AF_INET : len == 16 ? AF_INET6 : 0;
      if (family != 0 && inet_ntop(family, ASN1_STRING_get0_data(s), text, sizeof(text))) {
        out.push_back(std::string("IP:") + text);
      }
    }
  }
  return out;
}

// "IP:::1" and "IP:0:0::1" are the same SAN: compare addresses in canonical form.
std::string CanonicalSan(const std::string& san) {
  if (san.rfind("IP:", 0) != 0) return san;
  boost::system::error_code ec;
  auto ip = boost::asio::ip::make_address(san.substr(3), ec);
  return ec ? san : "IP:" + ip.to_string();
}

// True if `cert` expires within `days` days.
bool ExpiresWithin(X509* cert, long days) {
  std::unique_ptr<ASN1_TIME, decltype(&ASN1_TIME_free)> limit(
      X509_time_adj_ex(nullptr, static_cast<int>(days), 0, nullptr), ASN1_TIME_free);
  return !limit || ASN1_TIME_compare(X509_get0_notAfter(cert), limit.get()) <= 0;
}

Status EnsureDir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return ErrnoError("create " + dir.string(), ec.value());
  if (::chmod(dir.c_str(), 0700) != 0) return ErrnoError("chmod " + dir.string(), errno);
  return Ok();
}

struct Ca {
  Cert cert;
  Key key;
};

Result<Ca> EnsureCa(const PkiPaths& paths, bool* created) {
  std::error_code ec;
  const bool have_cert = fs::exists(paths.CaCert(), ec);
  const bool have_key = fs::exists(paths.CaKey(), ec);
  if (have_cert && have_key) {
    ASSIGN_OR_RETURN(Cert cert, LoadCert(paths.CaCert()));
    ASSIGN_OR_RETURN(Key key, LoadKey(paths.CaKey()));
    if (X509_check_private_key(cert.get(), key.get()) != 1) {
      ERR_clear_error();
      return MakeError(Code::kInvalid,
                       paths.CaKey().string() + " does not belong to " + paths.CaCert().string());
    }
    return Ca{std::move(cert), std::move(key)};
  }
  if (have_cert != have_key) {
    // Never silently replace a CA that clients trust.
    return MakeError(Code::kInvalid, "only one of " + paths.CaCert().string() + " and " +
                                         paths.CaKey().string() +
                                         " exists; restore the other or remove both");
  }
  ASSIGN_OR_RETURN(Key key, NewKey());
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  ASSIGN_OR_RETURN(Cert cert, MakeCert(key.get(), {std::string("edgevirt-ca@") + host, ""}, nullptr,
                                       key.get(), kCaDays,
                                       {{NID_basic_constraints, "critical,CA:TRUE"},
                                        {NID_key_usage, "critical,keyCertSign,cRLSign"},
                                        {NID_subject_key_identifier, "hash"}}));
  ASSIGN_OR_RETURN(std::string key_pem, KeyPem(key.get()));
  ASSIGN_OR_RETURN(std::string cert_pem, CertPem(cert.get()));
  RETURN_IF_ERROR(WriteFileAtomic(paths.CaKey(), key_pem, 0600));
  RETURN_IF_ERROR(WriteFileAtomic(paths.CaCert(), cert_pem, 0644));
  *created = true;
  return Ca{std::move(cert), std::move(key)};
}

}  // namespace

std::vector<std::string> HostSans(const std::vector<std::string>& extra) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  auto add = [&](std::string san) {
    san = CanonicalSan(san);
    if (seen.insert(san).second) out.push_back(std::move(san));
  };
  char host[256] = {};
  if (::gethostname(host, sizeof(host) - 1) == 0 && host[0] != '\0') {
    add(std::string("DNS:") + host);
  }
  add("DNS:localhost");
  add("IP:127.0.0.1");
  add("IP:::1");
  ifaddrs* ifs = nullptr;
  if (::getifaddrs(&ifs) == 0) {
    for (ifaddrs* i = ifs; i != nullptr; i = i->ifa_next) {
      if (i->ifa_addr == nullptr) continue;
      char text[INET6_ADDRSTRLEN] = {};
      if (i->ifa_addr->sa_family == AF_INET) {
        auto* sin = reinterpret_cast<sockaddr_in*>(i->ifa_addr);
        if (inet_ntop(AF_INET, &sin->sin_addr, text, sizeof(text))) add(std::string("IP:") + text);
      } else if (i->ifa_addr->sa_family == AF_INET6) {
        auto* sin6 = reinterpret_cast<sockaddr_in6*>(i->ifa_addr);
        if (IN6_IS_ADDR_LINKLOCAL(&sin6->sin6_addr)) continue;  // needs a zone; useless in a URL
        if (inet_ntop(AF_INET6, &sin6->sin6_addr, text, sizeof(text))) {
          add(std::string("IP:") + text);
        }
      }
    }
    ::freeifaddrs(ifs);
  }
  for (const auto& e : extra) {
    boost::system::error_code ec;
    (void)boost::asio::ip::make_address(e, ec);
    add((ec ? "DNS:" : "IP:") + e);
  }
  return out;
}

Result<std::vector<std::string>> CertificateSans(const fs::path& cert_file) {
  ASSIGN_OR_RETURN(Cert cert, LoadCert(cert_file));
  return SansOf(cert.get());
}

Result<PkiState> EnsureServerPki(const PkiPaths& paths,
                                 const std::vector<std::string>& wanted_sans) {
  PkiState state;
  RETURN_IF_ERROR(EnsureDir(paths.dir));
  ASSIGN_OR_RETURN(Ca ca, EnsureCa(paths, &state.ca_created));

  std::vector<std::string> sans;
  std::set<std::string> have;
  std::error_code ec;
  bool reuse =
      !state.ca_created && fs::exists(paths.ServerCert(), ec) && fs::exists(paths.ServerKey(), ec);
  if (reuse) {
    auto cert = LoadCert(paths.ServerCert());
    auto key = LoadKey(paths.ServerKey());
    if (!cert || !key) {
      reuse = false;  // damaged: issue a new one
      ERR_clear_error();
    } else {
      sans = SansOf(cert->get());
      for (const auto& s : sans) have.insert(CanonicalSan(s));
      for (const auto& w : wanted_sans) {
        if (!have.count(CanonicalSan(w))) state.missing_before.push_back(w);
      }
      const bool signed_by_ca = X509_verify(cert->get(), ca.key.get()) == 1 &&
                                X509_check_private_key(cert->get(), key->get()) == 1;
      ERR_clear_error();
      reuse =
          signed_by_ca && state.missing_before.empty() && !ExpiresWithin(cert->get(), kRenewDays);
    }
  }
  if (reuse) {
    state.sans = std::move(sans);
    return state;
  }
  // Old names stay valid (clients may use them) unless the old certificate is unusable.
  for (const auto& w : wanted_sans) {
    if (have.insert(CanonicalSan(w)).second) sans.push_back(CanonicalSan(w));
  }
  if (sans.empty()) return MakeError(Code::kInvalid, "no subject alternative name for the server");
  ASSIGN_OR_RETURN(Key key, NewKey());
  char host[256] = {};
  ::gethostname(host, sizeof(host) - 1);
  ASSIGN_OR_RETURN(Cert cert, MakeCert(key.get(), {std::string("edgevirtd@") + host, ""},
                                       ca.cert.get(), ca.key.get(), kLeafDays,
                                       {{NID_basic_constraints, "critical,CA:FALSE"},
                                        {NID_key_usage, "critical,digitalSignature"},
                                        {NID_ext_key_usage, "serverAuth"},
                                        {NID_authority_key_identifier, "keyid:always"},
                                        {NID_subject_alt_name, Join(sans)}}));
  ASSIGN_OR_RETURN(std::string key_pem, KeyPem(key.get()));
  ASSIGN_OR_RETURN(std::string cert_pem, CertPem(cert.get()));
  RETURN_IF_ERROR(WriteFileAtomic(paths.ServerKey(), key_pem, 0600));
  RETURN_IF_ERROR(WriteFileAtomic(paths.ServerCert(), cert_pem, 0644));
  state.server_issued = true;
  state.sans = std::move(sans);
  return state;
}

Result<IssuedCertificate> IssueClientCertificate(const PkiPaths& paths,
                                                 const std::string& common_name,
                                                 const std::string& organization) {
  if (common_name.empty()) return MakeError(Code::kInvalid, "a client certificate needs a user");
  ASSIGN_OR_RETURN(Cert ca_cert, LoadCert(paths.CaCert()));
  ASSIGN_OR_RETURN(Key ca_key, LoadKey(paths.CaKey()));
  ASSIGN_OR_RETURN(Key key, NewKey());
  ASSIGN_OR_RETURN(Cert cert, MakeCert(key.get(), {common_name, organization}, ca_cert.get(),
                                       ca_key.get(), kLeafDays,
                                       {{NID_basic_constraints, "critical,CA:FALSE"},
                                        {NID_key_usage, "critical,digitalSignature"},
                                        {NID_ext_key_usage, "clientAuth"},
                                        {NID_authority_key_identifier, "keyid:always"}}));
  IssuedCertificate out;
  ASSIGN_OR_RETURN(out.cert_pem, CertPem(cert.get()));
  ASSIGN_OR_RETURN(out.key_pem, KeyPem(key.get()));
  return out;
}

}  // namespace edgevirt::api
