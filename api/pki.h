// The API's certificates: a CA and a server certificate made at first start under a directory
// of the state dir, reused while they cover the wanted names, and client certificates signed by
// the CA (CN = user, O = group) for kubeconfigs. EC P-256 keys, SHA-256 signatures, keys in
// PEM files of mode 0600.
#pragma once

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "common/result.h"

namespace edgevirt::api {

// The files of the generated PKI under `dir` (<stateDir>/pki).
struct PkiPaths {
  std::filesystem::path dir;
  std::filesystem::path CaCert() const { return dir / "ca.crt"; }
  std::filesystem::path CaKey() const { return dir / "ca.key"; }
  std::filesystem::path ServerCert() const { return dir / "server.crt"; }
  std::filesystem::path ServerKey() const { return dir / "server.key"; }
};

// What EnsureServerPki did.
struct PkiState {
  bool ca_created = false;
  bool server_issued = false;               // a new server certificate was written
  std::vector<std::string> sans;            // the server certificate's SANs ("DNS:x", "IP:y")
  std::vector<std::string> missing_before;  // wanted SANs the old certificate lacked
};

// The SANs a server certificate of this host should carry: the host name, "localhost", every
// address of the host's interfaces (IPv6 link-local ones excepted), 127.0.0.1 and ::1, then
// `extra` (DNS names or IP literals). Each as "DNS:name" or "IP:address", without duplicates.
std::vector<std::string> HostSans(const std::vector<std::string>& extra);

// Makes sure `paths.dir` (created 0700) holds a CA (ca.crt, ca.key; 10 years) and a server
// certificate signed by it (server.crt, server.key; 1 year) whose SANs include every entry of
// `wanted_sans` ("DNS:x"/"IP:y"). Existing files are reused; the server certificate is
// re-issued (with the union of its old SANs and the wanted ones) when it lacks one, expires
// within 30 days or was not signed by the CA. Files are written to a temporary name, fsynced
// and renamed; keys are 0600. Errors name the file.
Result<PkiState> EnsureServerPki(const PkiPaths& paths,
                                 const std::vector<std::string>& wanted_sans);

// The SANs of the certificate in a PEM file ("DNS:x", "IP:y").
Result<std::vector<std::string>> CertificateSans(const std::filesystem::path& cert_file);

// A client certificate (clientAuth, 1 year) for user `common_name` in group `organization`,
// signed by the CA in `paths`, with a fresh key. PEM texts; nothing is written.
struct IssuedCertificate {
  std::string cert_pem;
  std::string key_pem;
};
Result<IssuedCertificate> IssueClientCertificate(const PkiPaths& paths,
                                                 const std::string& common_name,
                                                 const std::string& organization);

}  // namespace edgevirt::api
