// daemon/ public header: the pieces of edgevirtd that main.cc wires together, each testable on
// its own.
//
//   claims.h   the claims controller (PersistentVolumeClaims → files, LVs, devices), ResolveClaim
//   config.h   Config, ParseConfig/LoadConfigFile (yaml-cpp, errors with FILE:LINE:COLUMN and
//              the key path), durations and byte sizes, ChangedKeys for SIGHUP
//   cli.h      the command line (ParseCommandLine, UsageText), ResolveConfig (which file, flag
//              overrides), exit codes
//   notify.h   sd_notify(3) messages (READY, STATUS, STOPPING, WATCHDOG) and the watchdog thread
//   signals.h  SignalWaiter (signalfd on the main thread), Deadline (bounded graceful stop)
//   probe.h    ProbeHttp, the watchdog's request to the daemon's own listener
//   http.h     the HTTP handler: health endpoints and Kubernetes 404 Status
#pragma once

#include "daemon/access.h"
#include "daemon/claims.h"
#include "daemon/cli.h"
#include "daemon/config.h"
#include "daemon/http.h"
#include "daemon/notify.h"
#include "daemon/probe.h"
#include "daemon/signals.h"
#include "daemon/vmi_domain.h"
