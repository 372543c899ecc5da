// The public header of api/: the HTTP server (listeners, TLS, limits, timeouts, graceful stop),
// the health endpoints, authentication/authorization and the API's certificates. The
// Kubernetes API machinery is added here as it lands.
#pragma once

#include "api/auth.h"
#include "api/health.h"
#include "api/http_server.h"
#include "api/pki.h"
