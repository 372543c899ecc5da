// The command line of edgevirtd and how it combines with the configuration file.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/log.h"
#include "common/result.h"
#include "daemon/access.h"
#include "daemon/config.h"

namespace edgevirt::daemon {

// Exit codes of the binary.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // a runtime failure (store, sockets, shutdown overrun)
inline constexpr int kExitUsage = 2;    // bad command line or bad configuration

struct CliOptions {
  enum class Command {
    kRun,          // serve (the default)
    kHelp,         // --help / -h
    kVersion,      // --version
    kCheckConfig,  // check-config FILE
    kImage,        // image list | import PATH | pull REF | prune [--budget SIZE]
    kKubeconfig,   // kubeconfig [--user NAME] [--server URL] [--role R] [--client-cert]
  };
  Command command = Command::kRun;
  std::optional<std::string> config_path;  // --config FILE
  std::optional<std::string> state_dir;    // --state-dir DIR
  std::vector<std::string> listen;      // --listen ADDR (repeatable); non-empty replaces api.listen
  std::optional<log::Level> log_level;  // --log-level L
  std::string check_config_path;        // FILE of check-config
  std::vector<std::string> image_args;  // image: the subcommand and its arguments
  KubeconfigRequest kubeconfig;         // kubeconfig: its flags
};

// Parses argv[1..]. Accepts "--flag VALUE" and "--flag=VALUE". Errors (kInvalid) name the
// offending argument; the caller prints them with UsageText() and exits with kExitUsage.
Result<CliOptions> ParseCommandLine(const std::vector<std::string>& args);

// The --help text: every flag and subcommand.
std::string UsageText();

// The configuration the daemon runs with, and where it came from.
struct ResolvedConfig {
  Config config;
  // The file that was read; empty when the embedded defaults are used. SIGHUP re-reads it.
  std::string source;
};

// Reads --config FILE if given, else `default_path` if that file exists, else uses the
// embedded defaults; then applies the command-line overrides (--state-dir, --listen,
// --log-level), validating them like the file's values. Errors are kInvalid (bad values) or
// the file's read error.
Result<ResolvedConfig> ResolveConfig(
    const CliOptions& cli,
    const std::filesystem::path& default_path = std::filesystem::path(kDefaultConfigPath));

// Applies the command-line overrides to a configuration (also used by SIGHUP's re-read so that
// flags keep winning over the file).
Status ApplyOverrides(const CliOptions& cli, Config& config);

}  // namespace edgevirt::daemon
