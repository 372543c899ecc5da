// Access to the API: the HTTPS listeners' certificate files (operator-supplied, or the CA and
// server certificate generated under <stateDir>/pki), the token file, and kubeconfigs for
// `edgevirtd kubeconfig`.
#pragma once

#include <string>
#include <vector>

#include "api/api.h"
#include "common/result.h"
#include "daemon/config.h"

namespace edgevirt::daemon {

// The SANs the generated server certificate must carry: api::HostSans plus api.tls.extraSANs
// and the hosts of https:// listen addresses that are not wildcards.
std::vector<std::string> WantedSans(const Config& config);

// The TLS files for api::ServerOptions::tls. With api.tls.certFile: those files (client CA =
// api.tls.caFile). Otherwise api::EnsureServerPki under config.PkiDir() (created or re-issued
// as needed, which is logged) with the generated CA as client CA.
Result<api::TlsOptions> PrepareTls(const Config& config);

// Creates the token file with an admin token for user "admin" if it does not exist (logged).
Status EnsureTokenFile(const Config& config);

struct KubeconfigRequest {
  std::string user = "admin";          // --user NAME
  std::string server;                  // --server URL; empty: DefaultServerUrl
  api::Role role = api::Role::kAdmin;  // --role, for a user that has no token yet
  bool role_given = false;             // --role was given: an existing user must have it
  bool client_certificate = false;     // --client-cert: a certificate instead of a token
};

// The URL a kubeconfig names by default: the first https:// listener, a wildcard host replaced
// by this host's name (if it resolves) or its first non-loopback address; else the first
// http:// listener; "https://<host>:8443" if there is neither.
std::string DefaultServerUrl(const Config& config);

// A kubeconfig (YAML) for `request.user`: cluster "edgevirt" with the server URL and the CA
// (certificate-authority-data: the generated CA, or api.tls.caFile; none for http:// URLs), a
// user with a bearer token from the token file (added as `request.role` if the user has none)
// or, with client_certificate, a client certificate signed by the generated CA (CN user, O
// role); context "edgevirt" (namespace default), current. Works without the daemon running; it
// creates the PKI and the token file like a first start would.
Result<std::string> MakeKubeconfig(const Config& config, const KubeconfigRequest& request);

}  // namespace edgevirt::daemon
