#include "common/result.h"

#include <cstring>

namespace edgevirt {

std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kInvalid:
      return "invalid";
    case Code::kNotFound:
      return "not found";
    case Code::kAlreadyExists:
      return "already exists";
    case Code::kConflict:
      return "conflict";
    case Code::kGone:
      return "gone";
    case Code::kUnavailable:
      return "unavailable";
    case Code::kTimeout:
      return "timeout";
    case Code::kTooLarge:
      return "too large";
    case Code::kUnsupported:
      return "unsupported";
    case Code::kPermission:
      return "permission denied";
    case Code::kInternal:
      return "internal";
  }
  return "unknown";
}

Error ErrnoError(std::string_view context, int err) {
  if (err < 0) err = -err;
  Code code = Code::kInternal;
  switch (err) {
    case ENOENT:
      code = Code::kNotFound;
      break;
    case EEXIST:
      code = Code::kAlreadyExists;
      break;
    case EACCES:
    case EPERM:
      code = Code::kPermission;
      break;
    case EINVAL:
      code = Code::kInvalid;
      break;
    case ETIMEDOUT:
      code = Code::kTimeout;
      break;
    case EAGAIN:
    case EBUSY:
    case ECONNREFUSED:
      code = Code::kUnavailable;
      break;
    default:
      break;
  }
  char buf[256];
  // GNU strerror_r returns the message pointer (which may not be buf).
  const char* msg = strerror_r(err, buf, sizeof(buf));
  return Error{code, std::string(context) + ": " + msg};
}

}  // namespace edgevirt
