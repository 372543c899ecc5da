#include "daemon/cli.h"

#include <set>
#include <system_error>

namespace edgevirt::daemon {
namespace {

Error Usage(std::string message) { return MakeError(Code::kInvalid, std::move(message)); }

}  // namespace

std::string UsageText() {
  return R"(Usage:
  edgevirtd [--config FILE] [--state-dir DIR] [--listen ADDR]... [--log-level LEVEL]
  edgevirtd check-config FILE
  edgevirtd [--config FILE] [--state-dir DIR] image list|import PATH|pull REF|prune [--budget SIZE]
  edgevirtd [--config FILE] [--state-dir DIR] kubeconfig [--user NAME] [--server URL]
            [--role admin|viewer] [--client-cert]
  edgevirtd --version
  edgevirtd --help

Serves a subset of the KubeVirt API on a standalone host.

Options:
  --config FILE      Configuration file. Without it, /etc/edgevirt/edgevirtd.yaml is read if
                     it exists, otherwise the embedded defaults are used.
  --state-dir DIR    Overrides stateDir (default /var/lib/edgevirt).
  --listen ADDR      Overrides api.listen; repeat it for several addresses. ADDR is
                     unix:PATH, https://HOST:PORT or http://HOST:PORT (loopback only), e.g.
                     --listen unix:/run/edgevirt/edgevirtd.sock --listen https://0.0.0.0:8443
  --log-level LEVEL  Overrides log.level: error, warning, notice, info or debug.
  --version          Prints "edgevirtd VERSION" and exits.
  -h, --help         Prints this help and exits.

Commands:
  check-config FILE  Parses and validates FILE, prints "FILE: ok" or the error; exits 0 if
                     the file is valid, 1 if not.
  image list         Lists the containerDisk images in the cache (images.dir): references,
                     digest, format, sizes and the VMIs using each.
  image import PATH  Imports every image of an OCI archive (a tar of an OCI layout, e.g. from
                     `skopeo copy docker://REF oci-archive:FILE:REF`) or an OCI layout
                     directory, for hosts without a registry. An image is named by its
                     org.opencontainers.image.ref.name when that is a full reference, and can
                     always be used as NAME@sha256:DIGEST.
  image pull REF     Pulls REF into the cache (with images.authFile's credentials).
  image prune [--budget SIZE]
                     Removes images no VMI uses, least recently used first, until the cache
                     holds at most SIZE (default 0: every unused image).
  The image commands work beside a running daemon: they open the same cache index.
  kubeconfig         Prints a kubeconfig for kubectl and virtctl: the server URL (--server,
                     default the first https listener, a wildcard address replaced by this
                     host's name), the API's CA, and a bearer token of user NAME (--user,
                     default admin) from the token file, added with --role (default admin) if
                     NAME has none. --client-cert: a client certificate (CN NAME, O role)
                     signed by the generated CA instead of a token. Works without the daemon
                     running (creates the CA and the token file like a first start).

Exit codes: 0 clean stop, 1 runtime failure, 2 usage or configuration error.
Signals: SIGTERM/SIGINT stop gracefully within shutdown.timeout; SIGHUP re-reads the
configuration file and applies log.level (other keys need a restart).
)";
}

Result<CliOptions> ParseCommandLine(const std::vector<std::string>& args) {
  CliOptions cli;
  // --help wins over everything else on the line, mistakes included.
  for (const auto& arg : args) {
    if (arg == "-h" || arg == "--help") {
      cli.command = CliOptions::Command::kHelp;
      return cli;
    }
  }
  std::set<std::string> seen_once;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--version") {
      cli.command = CliOptions::Command::kVersion;
      continue;
    }
    if (arg.rfind("--", 0) == 0) {
      std::string name = arg;
      std::optional<std::string> value;
      if (auto eq = arg.find('='); eq != std::string::npos) {
        name = arg.substr(0, eq);
        value = arg.substr(eq + 1);
      }
      if (name != "--config" && name != "--state-dir" && name != "--listen" &&
          name != "--log-level") {
        return Usage("unknown flag \"" + name + "\"");
      }
      if (!value) {
        if (i + 1 >= args.size()) return Usage(name + " needs a value");
        value = args[++i];
      }
      if (value->empty()) return Usage(name + " needs a non-empty value");
      if (name != "--listen" && !seen_once.insert(name).second) {
        return Usage(name + " given more than once");
      }
      if (name == "--config") {
        cli.config_path = *value;
      } else if (name == "--state-dir") {
        cli.state_dir = *value;
      } else if (name == "--listen") {
        auto canonical = CanonicalListenAddress(*value);
        if (!canonical) return Usage("--listen " + *value + ": " + canonical.error().message);
        cli.listen.push_back(*value);
      } else {
        auto level = log::ParseLevel(*value);
        if (!level) return Usage("--log-level: " + level.error().message);
        cli.log_level = *level;
      }
      continue;
    }
    if (arg.size() > 1 && arg[0] == '-') return Usage("unknown flag \"" + arg + "\"");
    if (arg == "image") {
      std::vector<std::string> rest(args.begin() + static_cast<long>(i) + 1, args.end());
      if (rest.empty()) return Usage("image needs a command: list, import, pull or prune");
      const std::string& sub = rest[0];
      if (sub == "list") {
        if (rest.size() != 1) return Usage("image list takes no arguments");
      } else if (sub == "import" || sub == "pull") {
        if (rest.size() != 2 || rest[1].empty()) {
          return Usage("image " + sub + " takes exactly one " + (sub == "pull" ? "REF" : "PATH"));
        }
      } else if (sub == "prune") {
        if (rest.size() == 2 && rest[1].rfind("--budget=", 0) == 0) {
          rest = {"prune", "--budget", rest[1].substr(9)};
        }
        if (rest.size() != 1 && !(rest.size() == 3 && rest[1] == "--budget")) {
          return Usage("image prune takes only --budget SIZE");
        }
        if (rest.size() == 3 && !ParseByteSize(rest[2])) {
          return Usage("image prune --budget: not a byte size: \"" + rest[2] + "\"");
        }
      } else {
        return Usage("unknown image command \"" + sub + "\" (list, import, pull or prune)");
      }
      cli.command = CliOptions::Command::kImage;
      cli.image_args = std::move(rest);
      return cli;
    }
    if (arg == "kubeconfig") {
      cli.command = CliOptions::Command::kKubeconfig;
      for (size_t j = i + 1; j < args.size(); ++j) {
        std::string name = args[j];
        std::optional<std::string> value;
        if (name == "--client-cert") {
          cli.kubeconfig.client_certificate = true;
          continue;
        }
        if (auto eq = name.find('='); eq != std::string::npos) {
          value = name.substr(eq + 1);
          name = name.substr(0, eq);
        }
        if (name != "--user" && name != "--server" && name != "--role") {
          return Usage("kubeconfig: unknown argument \"" + args[j] + "\"");
        }
        if (!value) {
          if (j + 1 >= args.size()) return Usage("kubeconfig: " + name + " needs a value");
          value = args[++j];
        }
        if (value->empty()) return Usage("kubeconfig: " + name + " needs a non-empty value");
        if (name == "--user") {
          cli.kubeconfig.user = *value;
        } else if (name == "--server") {
          if (value->rfind("https://", 0) != 0 && value->rfind("http://", 0) != 0) {
            return Usage("kubeconfig: --server must be an https:// or http:// URL");
          }
          cli.kubeconfig.server = *value;
        } else {
          auto role = api::ParseRole(*value);
          if (!role) return Usage("kubeconfig: --role: " + role.error().message);
          cli.kubeconfig.role = *role;
          cli.kubeconfig.role_given = true;
        }
      }
      return cli;
    }
    if (arg == "check-config") {
      if (cli.command != CliOptions::Command::kRun || i != 0) {
        return Usage("check-config must come first and takes only FILE");
      }
      if (i + 1 >= args.size()) return Usage("check-config needs a FILE");
      if (i + 2 < args.size()) return Usage("check-config takes exactly one FILE");
      cli.command = CliOptions::Command::kCheckConfig;
      cli.check_config_path = args[i + 1];
      return cli;
    }
    return Usage("unknown command \"" + arg + "\"");
  }
  return cli;
}

Status ApplyOverrides(const CliOptions& cli, Config& config) {
  if (cli.state_dir) {
    std::error_code ec;
    auto dir = std::filesystem::absolute(*cli.state_dir, ec);
    if (ec) return Usage("--state-dir " + *cli.state_dir + ": " + ec.message());
    config.state_dir = dir.lexically_normal().string();
    // "/x/y/" normalizes to "/x/y/"; keep the form without the trailing slash.
    while (config.state_dir.size() > 1 && config.state_dir.back() == '/') {
      config.state_dir.pop_back();
    }
  }
  if (!cli.listen.empty()) {
    std::set<std::string> seen;
    for (const auto& text : cli.listen) {
      ASSIGN_OR_RETURN(std::string canonical, CanonicalListenAddress(text));
      if (!seen.insert(canonical).second) return Usage("--listen " + text + " given twice");
    }
    config.api.listen = cli.listen;
  }
  if (cli.log_level) config.log.level = *cli.log_level;
  return Ok();
}

Result<ResolvedConfig> ResolveConfig(const CliOptions& cli,
                                     const std::filesystem::path& default_path) {
  ResolvedConfig resolved;
  if (cli.config_path) {
    ASSIGN_OR_RETURN(resolved.config, LoadConfigFile(*cli.config_path));
    resolved.source = *cli.config_path;
  } else {
    std::error_code ec;
    bool exists = std::filesystem::exists(default_path, ec);
    if (ec) return ErrnoError("stat " + default_path.string(), ec.value());
    if (exists) {
      ASSIGN_OR_RETURN(resolved.config, LoadConfigFile(default_path));
      resolved.source = default_path.string();
    }
  }
  RETURN_IF_ERROR(ApplyOverrides(cli, resolved.config));
  return resolved;
}

}  // namespace edgevirt::daemon
