// Registry authentication pieces that need no network: WWW-Authenticate challenges, docker
// config parsing (ParseDockerConfig of image.h), base64. Private to image/.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "image/image.h"

namespace edgevirt::image {

// One challenge of a WWW-Authenticate header (RFC 7235): scheme lower-cased ("bearer",
// "basic"), parameter names lower-cased, quoted-string values unescaped.
struct Challenge {
  std::string scheme;
  std::map<std::string, std::string> params;
};
// Every challenge of one header value; malformed input yields what could be parsed.
std::vector<Challenge> ParseWwwAuthenticate(std::string_view header);

std::string Base64Encode(std::string_view bytes);
Result<std::string> Base64Decode(std::string_view text);

// The credential for `registry` (already normalised): `extra` first, then `file`.
const Credential* FindCredential(const Keychain& extra, const Keychain& file,
                                 std::string_view registry);

// "Content-Range: bytes START-END/TOTAL" (TOTAL may be "*" -> total = -1). False when
// malformed.
struct ContentRange {
  uint64_t start = 0, end = 0;
  int64_t total = -1;
};
bool ParseContentRange(std::string_view header, ContentRange* out);

// Seconds of a Retry-After value (delta-seconds or an HTTP-date); -1 when unparsable.
int64_t ParseRetryAfter(std::string_view value, int64_t now_unix);

}  // namespace edgevirt::image
