// edgevirtd: the one place that wires the components together (STYLE.md). Order of a start:
//   block signals -> command line -> configuration -> logging -> state and run directories ->
//   store -> API machinery (kubevirt.io/v1 + core/v1, GC, watches) -> claims controller ->
//   controller (libvirt) -> HTTP server -> READY=1 -> wait for signals -> graceful stop.
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "api/api.h"
#include "api/kubevirt/kubevirt.h"
#include "api/machinery/machinery.h"
#include "common/log.h"
#include "daemon/controller.h"
#include "daemon/daemon.h"
#include "daemon/images.h"
#include "daemon/metrics.h"
#include "store/store.h"

namespace edgevirt::daemon {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

std::string Join(const std::vector<std::string>& v, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += sep;
    out += v[i];
  }
  return out;
}

std::string SignalName(int sig) {
  switch (sig) {
    case SIGTERM:
      return "SIGTERM";
    case SIGINT:
      return "SIGINT";
    case SIGHUP:
      return "SIGHUP";
  }
  return "signal " + std::to_string(sig);
}

// Creates `dir` with `mode` if it is missing (parents with the default mode). An existing
// directory is left as it is, with a warning if it is more open than `mode`.
Status EnsureDirectory(const std::string& key, const std::string& dir, mode_t mode) {
  namespace fs = std::filesystem;
  std::error_code ec;
  auto st = fs::status(dir, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return ErrnoError(key + " " + dir, ec.value());
  }
  if (fs::exists(st)) {
    if (!fs::is_directory(st)) {
      return MakeError(Code::kInvalid, key + " " + dir + ": exists and is not a directory");
    }
    struct stat raw;
    if (::stat(dir.c_str(), &raw) == 0 && (raw.st_mode & 07777 & ~mode) != 0) {
      char octal[8];
      std::snprintf(octal, sizeof(octal), "%04o", raw.st_mode & 07777);
      char want[8];
      std::snprintf(want, sizeof(want), "%04o", mode);
      EV_LOG(kWarning).Field("DIRECTORY", dir)
          << key << " " << dir << " has mode " << octal << "; expected at most " << want;
    }
    // Search permission the mode asks for (stateDir: QEMU, running unprivileged, must traverse
    // it to its per-VMI files) is added to a directory made before it was needed.
    const mode_t search = mode & 0011;
    if (::stat(dir.c_str(), &raw) == 0 && (raw.st_mode & search) != search) {
      if (::chmod(dir.c_str(), (raw.st_mode & 07777) | search) != 0) {
        return ErrnoError("chmod " + key + " " + dir, errno);
      }
      EV_LOG(kNotice).Field("DIRECTORY", dir) << key << " " << dir << ": added search permission";
    }
    return Ok();
  }
  fs::create_directories(dir, ec);
  if (ec) return ErrnoError("create " + key + " " + dir, ec.value());
  if (::chmod(dir.c_str(), mode) != 0) return ErrnoError("chmod " + key + " " + dir, errno);
  EV_LOG(kInfo).Field("DIRECTORY", dir) << "created " << key << " " << dir;
  return Ok();
}

// The address the watchdog probes: a unix socket when there is one (no TCP TIME_WAIT
// churn from a probe every few hundred milliseconds), else a plain-HTTP one, else the first.
std::string ProbeAddress(const std::vector<std::string>& bound) {
  for (const auto& a : bound) {
    if (a.rfind("unix:", 0) == 0) return a;
  }
  // Plain HTTP gets a real answer; HTTPS only a close after the failed handshake.
  for (const auto& a : bound) {
    if (a.rfind("http://", 0) == 0) return a;
  }
  return bound.empty() ? std::string() : bound.front();
}

// SIGHUP: re-read the configuration (same file rules and flag overrides as at start), apply
// log.level, and report every other changed key as ignored until a restart.
void Reload(const CliOptions& cli, ResolvedConfig& running) {
  EV_LOG(kInfo) << "SIGHUP: re-reading the configuration";
  auto next = ResolveConfig(cli);
  if (!next) {
    EV_LOG(kError).Field("ERROR", next.error().message)
        << "configuration reload failed, keeping the running configuration: "
        << next.error().message;
    return;
  }
  const std::string source = next->source.empty() ? "(embedded defaults)" : next->source;
  std::vector<std::string> ignored;
  bool level_changed = false;
  for (const auto& key : ChangedKeys(running.config, next->config)) {
    if (key == "log.level") {
      level_changed = true;
    } else {
      ignored.push_back(key);
    }
  }
  if (level_changed) {
    const log::Level level = next->config.log.level;
    log::SetLevel(level);
    running.config.log.level = level;
    EV_LOG(kNotice).Field("LOG_LEVEL", log::LevelName(level)).Field("CONFIG_FILE", source)
        << "log level is now " << log::LevelName(level);
  } else if (cli.log_level) {
    EV_LOG(kInfo) << "log.level is set by --log-level; the file's value does not apply";
  }
  if (!ignored.empty()) {
    EV_LOG(kWarning).Field("IGNORED_KEYS", Join(ignored, ",")).Field("CONFIG_FILE", source)
        << "changed configuration keys take effect only after a restart and were ignored: "
        << Join(ignored, ", ");
  }
  if (!level_changed && ignored.empty()) {
    EV_LOG(kInfo).Field("CONFIG_FILE", source) << "configuration unchanged";
  }
  EV_LOG(kDebug).Field("CONFIG_FILE", source) << "configuration reload done";
}

int Fail(Notifier& notifier, const std::string& what, const Error& error) {
  EV_LOG(kError).Field("ERROR", error.message) << what << ": " << error.message;
  (void)notifier.SetStatus("Failed: " + what + ": " + error.message);
  return kExitFailure;
}

int Run(const CliOptions& cli, ResolvedConfig running, SignalWaiter& signals) {
  const Config& config = running.config;
  const auto started = Clock::now();
  log::Configure(config.log.level, config.log.target);
  Notifier notifier;
  (void)notifier.SetStatus("Opening state");

  if (Status s = EnsureDirectory("stateDir", config.state_dir, 0711); !s) {
    return Fail(notifier, "prepare state directory", s.error());
  }
  if (Status s = EnsureDirectory("runDir", config.run_dir, 0755); !s) {
    return Fail(notifier, "prepare run directory", s.error());
  }
  // The API's certificate (generated under <stateDir>/pki at first start) and token file
  // (an admin token at first start), before anything else is opened.
  api::TlsOptions tls_options;
  for (const auto& text : config.api.listen) {
    if (text.rfind("https://", 0) != 0) continue;
    auto tls = PrepareTls(config);
    if (!tls) return Fail(notifier, "api.tls", tls.error());
    tls_options = std::move(*tls);
    break;
  }
  if (Status s = EnsureTokenFile(config); !s) {
    return Fail(notifier, "api.auth.tokenFile", s.error());
  }

  store::Options store_options;
  store_options.dir = std::filesystem::path(config.state_dir) / "state";
  store_options.initial_map_size = config.store.initial_map_size;
  store_options.event_retention_count = config.store.event_retention.count;
  store_options.event_retention_age =
      std::chrono::duration_cast<std::chrono::seconds>(config.store.event_retention.age);
  auto opened = store::Store::Open(store_options);
  if (!opened) return Fail(notifier, "open store " + store_options.dir.string(), opened.error());
  std::unique_ptr<store::Store> store = std::move(*opened);
  // Read by the health checks on io threads; cleared before the store closes.
  std::atomic<bool> store_open{true};
  std::atomic<bool> serving{false};

  // The Kubernetes API: kubevirt.io/v1 (VirtualMachine, VirtualMachineInstance) and core/v1
  // Events, with the garbage collector and the watch hub.
  api::machinery::MachineryOptions machinery_options;
  machinery_options.discovery.kubevirt_version = config.api.kubevirt_version;
  machinery_options.watch.bookmark_interval = config.api.watch_bookmark_interval;
  machinery_options.watch.default_timeout = config.api.watch_timeout;
  machinery_options.gc.event_ttl = config.api.event_ttl;
  api::kubevirt::KubevirtOptions kubevirt_options;
  kubevirt_options.host_disk_dirs = config.vms.host_disk_dirs;
  kubevirt_options.host_disk_enabled = !config.vms.host_disk_dirs.empty();
  // core/v1 (Events, Secrets, PersistentVolumeClaims): new claims get the default class.
  api::machinery::CoreV1Options core_options;
  core_options.claims.default_storage_class = config.DefaultStorageClass();
  core_options.services.service_cidr = config.network.service_cidr;
  core_options.services.node_port_range = std::to_string(config.network.node_port_first) + "-" +
                                          std::to_string(config.network.node_port_last);
  auto created_machinery = api::machinery::Machinery::Create(
      *store, {api::kubevirt::KubevirtV1(kubevirt_options), api::machinery::CoreV1(core_options)},
      machinery_options);
  if (!created_machinery) {
    store->Close();
    return Fail(notifier, "start the API machinery", created_machinery.error());
  }
  std::unique_ptr<api::machinery::Machinery> machinery = std::move(*created_machinery);

  // The controller: libvirt (embedded QEMU driver by default), then every VM and VMI is
  // reconciled; QEMU processes that survived a previous daemon are reconnected.
  (void)notifier.SetStatus("Connecting to libvirt");
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  api::machinery::EventRecorderOptions recorder_options;
  recorder_options.component = "virt-handler";
  recorder_options.host = host;
  std::unique_ptr<api::machinery::EventRecorder> recorder =
      machinery->NewEventRecorder(recorder_options);
  // The claims controller provisions PersistentVolumeClaims from storage.classes; it runs
  // whether or not VMs are enabled.
  api::machinery::EventRecorderOptions claims_recorder_options;
  claims_recorder_options.component = "edgevirt-provisioner";
  claims_recorder_options.host = host;
  std::unique_ptr<api::machinery::EventRecorder> claims_recorder =
      machinery->NewEventRecorder(claims_recorder_options);
  ClaimsOptions claims_options;
  claims_options.classes = config.EffectiveStorageClasses();
  auto started_claims = Claims::Start(*machinery, claims_recorder.get(), std::move(claims_options));
  if (!started_claims) {
    claims_recorder.reset();
    recorder.reset();
    machinery.reset();
    store->Close();
    return Fail(notifier, "start the claims controller", started_claims.error());
  }
  std::unique_ptr<Claims> claims = std::move(*started_claims);

  // The containerDisk cache outlives the controller that pulls into it.
  std::unique_ptr<image::Cache> images;
  // /metrics: declared before the controller, which feeds its pull byte counter, so it outlives
  // it; reads the controller through `live_controller` (set while it runs) at scrape time.
  std::atomic<Controller*> live_controller{nullptr};
  metrics::Sources metric_sources;
  metric_sources.node = host;
  metric_sources.version = EDGEVIRT_VERSION;
  metric_sources.vmis = [lister = machinery->registry().Lister()] {
    return lister("kubevirt.io", "VirtualMachineInstance", "");
  };
  metric_sources.domain_stats = [&live_controller]() -> Result<std::vector<vmm::DomainStats>> {
    Controller* c = live_controller.load();
    if (c == nullptr) return std::vector<vmm::DomainStats>{};
    return c->DomainStats();
  };
  metric_sources.queue_depth = [&live_controller]() -> size_t {
    Controller* c = live_controller.load();
    return c ? c->QueueDepth() : 0;
  };
  metrics::Metrics daemon_metrics(std::move(metric_sources));
  std::unique_ptr<Controller> controller;
  if (config.vms.enabled) {
    auto opened_images = image::Cache::Open(ImageCacheOptions(config));
    if (opened_images) {
      images = std::move(*opened_images);
    } else {
      // VMs without containerDisks still run; those with one fail to start, saying why.
      EV_LOG(kError) << "image cache " << config.EffectiveImagesDir() << ": "
                     << opened_images.error().message << "; containerDisk volumes cannot be used";
    }
    ControllerOptions controller_options;
    controller_options.images = images.get();
    controller_options.pulls.workers = config.images.pull_workers;
    controller_options.pulls.pulled_bytes = &daemon_metrics.pull_bytes();
    controller_options.image_cache_budget = config.images.cache_budget;
    controller_options.hypervisor.root = config.state_dir + "/libvirt";
    controller_options.hypervisor.uri = config.libvirt.uri;
    controller_options.host.vms_dir = config.state_dir + "/vms";
    controller_options.host.host_disk_dirs = config.vms.host_disk_dirs;
    controller_options.node_name = host;
    controller_options.resync_period = config.vms.resync_period;
    controller_options.network = NetOptions(config);
    controller_options.isolation.cgroup_root = config.cgroups.root;
    controller_options.isolation.bpf_root = config.cgroups.bpf_root;
    // Volumes of Bound claims, from the claims controller's records; the access modes from the
    // claim itself (for volumeStatus).
    api::machinery::Registry& registry = machinery->registry();
    controller_options.claims = [&registry](const std::string& ns,
                                            const std::string& name) -> Result<ClaimSource> {
      ASSIGN_OR_RETURN(ClaimVolume v, ResolveClaim(registry.store(), ns, name));
      ClaimSource source{v.path, v.block, v.qcow2, v.capacity_bytes, {}};
      if (const api::ResourceType* rt = registry.ByKind("", "PersistentVolumeClaim")) {
        if (auto pvc = registry.GetObject(*rt, ns, name)) {
          const auto& spec = (*pvc)["spec"];
          if (spec.is_object() && spec.contains("accessModes") && spec["accessModes"].is_array()) {
            for (const auto& m : spec["accessModes"]) {
              if (m.is_string()) source.access_modes.push_back(m.get<std::string>());
            }
          }
        }
      }
      return source;
    };
    auto started_controller =
        Controller::Start(*machinery, recorder.get(), std::move(controller_options));
    if (!started_controller) {
      claims.reset();
      claims_recorder.reset();
      recorder.reset();
      machinery.reset();
      store->Close();
      return Fail(notifier, "start the controller", started_controller.error());
    }
    controller = std::move(*started_controller);
    live_controller = controller.get();
  } else {
    EV_LOG(kNotice) << "vms.enabled is false: serving the API only; no VM is reconciled";
  }

  (void)notifier.SetStatus("Starting the API server");
  api::ServerOptions server_options;
  for (const auto& text : config.api.listen) {
    auto addr = api::ListenAddress::Parse(text);
    if (!addr) return Fail(notifier, "api.listen", addr.error());  // validated already
    server_options.listen.push_back(std::move(*addr));
  }
  server_options.tls = tls_options;
  server_options.io_threads = config.api.io_threads;
  server_options.max_body_bytes = config.api.max_body_bytes;
  server_options.max_connections = config.api.max_connections;

  // /readyz: ready once the store is open and the server has started (and no longer while
  // stopping). /livez and /healthz carry only the server's own "ping": the watchdog does the
  // deeper liveness check.
  api::HealthChecks checks;
  checks.ready.push_back(api::HealthCheck::Flag("store", store_open));
  checks.ready.push_back(api::HealthCheck::Flag("api-server", serving));

  api::subresources::Subresources subresources(machinery->registry(), controller.get());
  auto started_server = api::HttpServer::Start(
      server_options,
      metrics::WithMetrics(
          api::WithAuth(
              {config.EffectiveTokenFile(), config.api.auth.plain_http_no_auth},
              MakeApiHandler(std::move(checks), machinery.get(), &subresources, &daemon_metrics)),
          daemon_metrics));
  if (!started_server) {
    store_open = false;
    controller.reset();
    claims.reset();
    claims_recorder.reset();
    recorder.reset();
    machinery.reset();
    store->Close();
    return Fail(notifier, "start API server", started_server.error());
  }
  std::unique_ptr<api::HttpServer> server = std::move(*started_server);
  serving = true;
  const std::vector<std::string> bound = server->BoundAddresses();

  // The watchdog proves liveness through the real parts: an LMDB read answers, and an io thread
  // answers /livez on a real socket.
  std::unique_ptr<Watchdog> watchdog;
  const auto ping_interval = WatchdogPingInterval();
  if (ping_interval) {
    const milliseconds probe_timeout =
        std::clamp(std::chrono::duration_cast<milliseconds>(*ping_interval), milliseconds(100),
                   milliseconds(5000));
    watchdog = std::make_unique<Watchdog>(
        notifier, *ping_interval, [&store, probe = ProbeAddress(bound), probe_timeout]() -> Status {
          auto read = store->GetRaw("daemon", "watchdog");
          if (!read && read.error().code != Code::kNotFound) {
            return Error(read.error()).Wrap("store read");
          }
          // Any complete answer proves an io thread works; a 503 from the connection limit
          // under a flood must not get the daemon killed.
          ASSIGN_OR_RETURN(int status, ProbeHttp(probe, "/livez", probe_timeout));
          if (status != 200) EV_LOG(kDebug) << "watchdog: GET /livez answered " << status;
          return Ok();
        });
  }

  EV_LOG(kInfo)
          .Field("VERSION", EDGEVIRT_VERSION)
          .Field("CONFIG_FILE", running.source.empty() ? "(embedded defaults)" : running.source)
          .Field("STATE_DIR", config.state_dir)
          .Field("RUN_DIR", config.run_dir)
          .Field("LISTEN", Join(bound, ","))
          .Field("LIBVIRT_URI", config.EffectiveLibvirtUri())
          .Field("ACCELERATOR", !controller                                           ? "none"
                                : controller->accelerator() == vmm::Accelerator::kKvm ? "kvm"
                                                                                      : "tcg")
          .Field("LOG_SINK", log::ActiveSink())
          .Field("WATCHDOG_USEC", ping_interval ? std::to_string(ping_interval->count() * 2) : "0")
      << "edgevirtd " << EDGEVIRT_VERSION << " serving on " << Join(bound, ", ");
  if (Status s = notifier.Send("READY=1\nSTATUS=Serving on " + Join(bound, ", ")); !s) {
    EV_LOG(kWarning) << s.error().message;
  }

  int stop_signal = 0;
  int exit_code = kExitOk;
  while (stop_signal == 0) {
    auto sig = signals.Wait(std::nullopt);
    if (!sig) {
      // Cannot happen short of a kernel or memory problem; stop rather than run deaf.
      EV_LOG(kError) << sig.error().message << "; stopping";
      stop_signal = SIGTERM;
      exit_code = kExitFailure;
      break;
    }
    if (!sig->has_value()) continue;
    if (**sig == SIGHUP) {
      // sd_notify(3) reload protocol (Type=notify-reload in systemd >= 253): RELOADING=1 with
      // the CLOCK_MONOTONIC time, then READY=1 once the reload is done.
      timespec now{};
      ::clock_gettime(CLOCK_MONOTONIC, &now);
      const uint64_t usec =
          static_cast<uint64_t>(now.tv_sec) * 1'000'000 + static_cast<uint64_t>(now.tv_nsec) / 1000;
      (void)notifier.Send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec) +
                          "\nSTATUS=Reloading the configuration");
      Reload(cli, running);
      (void)notifier.Send("READY=1\nSTATUS=Serving on " + Join(bound, ", "));
    } else {
      stop_signal = **sig;
    }
  }

  // Graceful stop, bounded by shutdown.timeout.
  const auto stop_started = Clock::now();
  EV_LOG(kInfo).Field("SIGNAL", SignalName(stop_signal))
      << SignalName(stop_signal) << ": stopping (at most "
      << FormatDuration(config.shutdown.timeout) << ")";
  (void)notifier.Send("STOPPING=1\nSTATUS=Stopping");
  if (watchdog) watchdog->EnterShutdown();
  const milliseconds timeout = config.shutdown.timeout;
  Deadline deadline(timeout, [timeout] {
    EV_LOG(kError) << "graceful stop did not finish within " << FormatDuration(timeout)
                   << "; exiting with status 1";
    ::_exit(kExitFailure);
  });
  serving = false;
  // Watch streams end cleanly first (clients re-watch elsewhere or later); the GC stops.
  machinery->Stop();
  // Half the budget for in-flight requests; the rest covers closing the store.
  server->Stop(timeout / 2);
  server.reset();
  // Running VMs keep running: only the controller's threads and libvirt connection stop.
  live_controller = nullptr;
  if (controller) controller->Stop();
  controller.reset();
  claims.reset();
  claims_recorder.reset();
  recorder.reset();
  machinery.reset();
  store_open = false;
  watchdog.reset();  // its check reads the store
  store->Close();
  store.reset();
  deadline.Disarm();

  const auto now = Clock::now();
  EV_LOG(kInfo)
          .Field("SIGNAL", SignalName(stop_signal))
          .Field(
              "STOP_MS",
              std::to_string(std::chrono::duration_cast<milliseconds>(now - stop_started).count()))
          .Field("UPTIME_SEC",
                 std::to_string(
                     std::chrono::duration_cast<std::chrono::seconds>(now - started).count()))
      << "edgevirtd stopped";
  return exit_code;
}

int CheckConfig(const std::string& path) {
  auto config = LoadConfigFile(path);
  if (!config) {
    std::fprintf(stderr, "%s\n", config.error().message.c_str());
    return kExitFailure;
  }
  std::printf("%s: ok\n", path.c_str());
  return kExitOk;
}

}  // namespace
}  // namespace edgevirt::daemon

int main(int argc, char** argv) {
  using namespace edgevirt::daemon;
  // First of all, before any thread exists: every later thread inherits this mask, so
  // SIGTERM/SIGINT/SIGHUP reach only the main thread's signalfd.
  auto signals = SignalWaiter::Create({SIGTERM, SIGINT, SIGHUP});
  if (!signals) {
    std::fprintf(stderr, "edgevirtd: %s\n", signals.error().message.c_str());
    return kExitFailure;
  }
  // A peer that closes its socket early must cost an EPIPE, not the process.
  ::signal(SIGPIPE, SIG_IGN);

  auto cli = ParseCommandLine(std::vector<std::string>(argv + 1, argv + argc));
  if (!cli) {
    std::fprintf(stderr, "edgevirtd: %s\n\n%s", cli.error().message.c_str(), UsageText().c_str());
    return kExitUsage;
  }
  switch (cli->command) {
    case CliOptions::Command::kHelp:
      std::fputs(UsageText().c_str(), stdout);
      return kExitOk;
    case CliOptions::Command::kVersion:
      std::printf("edgevirtd %s\n", EDGEVIRT_VERSION);
      return kExitOk;
    case CliOptions::Command::kCheckConfig:
      return CheckConfig(cli->check_config_path);
    case CliOptions::Command::kRun:
    case CliOptions::Command::kImage:
    case CliOptions::Command::kKubeconfig:
      break;
  }
  auto resolved = ResolveConfig(*cli);
  if (!resolved) {
    std::fprintf(stderr, "edgevirtd: %s\n", resolved.error().message.c_str());
    return kExitUsage;
  }
  if (cli->command == CliOptions::Command::kKubeconfig) {
    edgevirt::log::Configure(edgevirt::log::Level::kWarning, edgevirt::log::Target::kStderr);
    auto kubeconfig = MakeKubeconfig(resolved->config, cli->kubeconfig);
    if (!kubeconfig) {
      std::fprintf(stderr, "edgevirtd kubeconfig: %s\n", kubeconfig.error().message.c_str());
      return kExitFailure;
    }
    std::fputs(kubeconfig->c_str(), stdout);
    return kExitOk;
  }
  if (cli->command == CliOptions::Command::kImage) {
    edgevirt::log::Configure(resolved->config.log.level, edgevirt::log::Target::kStderr);
    return RunImageCommand(cli->image_args, resolved->config, stdout, stderr);
  }
  return Run(*cli, std::move(*resolved), *signals);
}
