// A minimal HTTP/1.1 client for the daemon's own listeners: the watchdog asks /livez through a
// real socket to prove that the io threads still answer.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "common/result.h"

namespace edgevirt::daemon {

// Sends "GET <path>" to `address` (an api.listen form: "unix:/path", "http://host:port",
// "https://host:port"; a wildcard host is reached on loopback) and returns the response's status
// code. HTTPS is not spoken: the server closing the connection after the failed handshake is
// the answer (status 0). The whole exchange is bounded by `timeout` (kTimeout); connection
// failures are kUnavailable.
Result<int> ProbeHttp(std::string_view address, std::string_view path,
                      std::chrono::milliseconds timeout);

}  // namespace edgevirt::daemon
