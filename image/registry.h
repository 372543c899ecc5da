// The registry client of image/: OCI distribution API over libcurl. Private to image/.
//
// Auth: a /v2/ ping per registry learns the scheme; Bearer tokens are fetched from the realm
// (anonymously, with Basic credentials, or with an identity token) and cached per
// realm/service/scope/user until shortly before they expire; a 401, or a 403 with a Bearer
// error="insufficient_scope", fetches one fresh token for the challenge's scope and retries once.
// Basic (htpasswd) registries get the credential on every request.
// Redirects are followed by hand (at most 5 hops); Authorization goes only to the registry's
// own scheme+host+port, never to a redirect target elsewhere (presigned S3 URLs refuse it).
// Every attempt starts at the registry URL (a fresh presigned URL on resume); a 403 from a
// redirect target (spent or expired URL) goes back to the registry once.
// Transfers: no total deadline, a stall timeout (no byte for stall_timeout) and libcurl's
// low-speed limit; retryable failures (transport, 429, 5xx) are retried with exponential
// backoff and jitter, honouring Retry-After. Proxies come from the environment as libcurl reads
// them (http_proxy lower case only; https_proxy/HTTPS_PROXY; no_proxy/NO_PROXY; see README.md).
// Credentials and tokens are never logged.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/result.h"
#include "image/content.h"
#include "image/image.h"
#include "image/manifest.h"
#include "image/reference.h"

namespace edgevirt::image {

struct ClientOptions {
  std::vector<RegistryHost> registries;
  Keychain keychain;  // from Options::auth_file
  std::string platform;
  std::chrono::seconds stall_timeout{60};
  uint64_t low_speed_limit = 1024;
  std::chrono::seconds low_speed_time{120};
  int max_attempts = 6;
  std::chrono::milliseconds retry_base{500};
  std::chrono::milliseconds retry_max{30'000};
  uint64_t checkpoint_bytes = uint64_t{64} << 20;
  std::string user_agent = "edgevirt";
  // Tests only: the stall timeout in milliseconds when set (overrides stall_timeout).
  std::chrono::milliseconds stall_timeout_for_test{0};
};

ClientOptions ClientOptionsFrom(const Options& options, Keychain file_keychain);

class RegistryClient {
 public:
  explicit RegistryClient(ClientOptions options);
  ~RegistryClient();
  RegistryClient(const RegistryClient&) = delete;
  RegistryClient& operator=(const RegistryClient&) = delete;

  // GETs the manifest with the full Accept list; verifies Content-Type against the body's
  // mediaType and the digest (Docker-Content-Digest and/or the requested one). An index/list ->
  // SelectPlatform -> that manifest fetched by digest; `index_digest` is set when via an index
  // (cleared otherwise). Errors: kPermission "401 Unauthorized: authentication required",
  // kNotFound "404 Not Found: manifest unknown", kInvalid for a bad or unsupported manifest,
  // kUnavailable when the registry cannot be reached (after retries).
  Result<Manifest> Resolve(const Reference& ref, const Keychain& extra,
                           std::string* index_digest = nullptr);
  // Downloads one blob of ref.repository into `store` (no-op if present): resumable (Range from
  // the committed offset, also across process restarts), sha256 verified while writing,
  // progress(delta_bytes) called as bytes arrive (deltas of the high-water mark: after a
  // restart from 0 nothing is reported twice; the deltas sum to blob.size on success, the
  // resumed prefix first). A server ignoring Range or answering a wrong
  // Content-Range restarts the blob from 0. kInvalid for a digest/size mismatch (the partial
  // is dropped, nothing enters blobs/); kUnavailable "cancelled" on cancel.
  Status FetchBlob(const Reference& ref, const Descriptor& blob, ContentStore& store,
                   const Keychain& extra, const std::function<void(uint64_t)>& progress,
                   const std::atomic<bool>* cancel);
  // Raw blob GET into memory (configs): at most 4 MiB (kTooLarge), verified.
  Result<std::string> FetchSmallBlob(const Reference& ref, const Descriptor& blob,
                                     const Keychain& extra);

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace edgevirt::image
