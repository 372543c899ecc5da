// The public header of api/: the HTTP server (listeners, limits, timeouts, graceful stop) and
// the health endpoints. The Kubernetes API machinery is added here as it lands.
#pragma once

#include "api/health.h"
#include "api/http_server.h"
