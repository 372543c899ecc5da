// The daemon's configuration: /etc/edgevirt/edgevirtd.yaml (camelCase keys). Every key has a
// default, so an empty file, or no file at all, is a valid configuration.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/log.h"
#include "common/result.h"

namespace edgevirt::daemon {

inline constexpr std::string_view kDefaultConfigPath = "/etc/edgevirt/edgevirtd.yaml";

// One entry of storage.classes: where the claims controller (claims.h) provisions the volumes
// of PersistentVolumeClaims whose spec.storageClassName names it.
struct StorageClass {
  enum class Type { kFiles, kBlock };
  enum class Format { kQcow2, kRaw };
  std::string name;          // name: a DNS subdomain, unique
  bool is_default = false;   // default: claims without a class get this one (at most one)
  Type type = Type::kFiles;  // type: files | block
  // files: dir, an absolute directory (empty = <stateDir>/volumes), and the image format.
  std::string dir;
  Format format = Format::kQcow2;
  // block: volumeGroup, an LVM volume group (one logical volume per claim), or devices, whole
  // block devices handed out one per claim.
  std::string volume_group;
  std::vector<std::string> devices;
  bool operator==(const StorageClass&) const = default;
};

// One entry of images.registries.
struct RegistryHostConfig {
  std::string host;          // host: as written in image references ("reg.local:5000")
  bool insecure = false;     // insecure: plain HTTP
  bool skip_verify = false;  // skipVerify: HTTPS without certificate verification
  std::string ca_file;       // caFile: a PEM bundle trusted for this registry
  bool operator==(const RegistryHostConfig&) const = default;
};

// One entry of network.hostNetworks: a host network that a VMI's
// networks[].multus.networkName may name. Exactly one of bridge and macvtap is set.
struct HostNetworkConfig {
  std::string name;                     // name: a DNS-1123 label, unique
  std::string bridge;                   // bridge: an existing host bridge (NIC = tap on it)
  std::string macvtap;                  // macvtap: a host NIC (NIC = macvtap on it)
  std::string macvtap_mode = "bridge";  // macvtapMode: bridge | vepa | private | passthrough
  bool operator==(const HostNetworkConfig&) const = default;
};

// An IPv4 prefix ("10.208.0.0/24"): the network address (host byte order) and its length.
struct Ipv4Prefix {
  uint32_t address = 0;
  uint32_t length = 0;
  bool operator==(const Ipv4Prefix&) const = default;
  // True when the two prefixes share an address.
  bool Overlaps(const Ipv4Prefix& other) const;
};

// Parses "A.B.C.D/N" (dotted decimal without leading zeros, N 0..32, no host bits set).
// kInvalid with the reason otherwise.
Result<Ipv4Prefix> ParseIpv4Prefix(std::string_view text);

struct Config {
  std::string state_dir = "/var/lib/edgevirt";  // stateDir
  std::string run_dir = "/run/edgevirt";        // runDir

  struct Api {
    // api.listen: "unix:PATH" (root-only), "https://HOST:PORT", "http://HOST:PORT" (loopback
    // only).
    std::vector<std::string> listen = {"unix:/run/edgevirt/edgevirtd.sock", "https://0.0.0.0:8443"};
    int io_threads = 2;                 // api.ioThreads
    uint64_t max_body_bytes = 3 << 20;  // api.maxBodyBytes
    uint64_t max_connections = 1024;    // api.maxConnections
    // api.kubevirtVersion: gitVersion of /apis/subresources.kubevirt.io/v1/version (semver,
    // "vMAJOR.MINOR.PATCH[...]"); virtctl compares its major.minor with its own.
    std::string kubevirt_version = "v1.0.0";
    std::chrono::milliseconds watch_bookmark_interval{60'000};  // api.watchBookmarkInterval
    // api.watchTimeout: watches without timeoutSeconds end after a random time between this
    // and twice this (the apiserver's --min-request-timeout).
    std::chrono::milliseconds watch_timeout{1'800'000};
    std::chrono::milliseconds event_ttl{3'600'000};  // api.eventTTL: core/v1 Events expire
    // api.tls: the HTTPS listeners' certificate. Both files empty: a CA and a server
    // certificate are generated under <stateDir>/pki at first start (api/pki.h).
    struct Tls {
      std::string cert_file;  // api.tls.certFile: PEM certificate (and chain); with keyFile
      std::string key_file;   // api.tls.keyFile: its PEM private key
      // api.tls.caFile: with certFile, the CA that signed it: kubeconfigs carry it and client
      // certificates are verified against it (empty: no client certificates, kubeconfigs
      // without certificate-authority-data).
      std::string ca_file;
      // api.tls.extraSANs: more DNS names / IP addresses for the generated server certificate.
      std::vector<std::string> extra_sans;
      bool operator==(const Tls&) const = default;
    } tls;
    struct Auth {
      std::string token_file;  // api.auth.tokenFile: empty = <stateDir>/tokens.csv
      // api.auth.plainHttp: "token" (credentials as on https) or "none" (every request on a
      // plain-HTTP loopback listener is admin: tests, single-user development hosts).
      bool plain_http_no_auth = false;
      bool operator==(const Auth&) const = default;
    } auth;
    bool operator==(const Api&) const = default;
  } api;

  struct Libvirt {
    std::string uri;  // libvirt.uri; empty = qemu:///embed?root=<stateDir>/libvirt
    bool operator==(const Libvirt&) const = default;
  } libvirt;

  struct Vms {
    // vms.enabled: false serves the API alone: objects are stored and served, libvirt is not
    // opened and nothing is reconciled (API-only tests, inspecting a host's state).
    bool enabled = true;
    // vms.hostDiskDirs: the only directories hostDisk volumes may use (empty: hostDisk is
    // refused).
    std::vector<std::string> host_disk_dirs;
    // vms.resyncPeriod: every VM and VMI is reconciled at least this often.
    std::chrono::milliseconds resync_period{30'000};
    bool operator==(const Vms&) const = default;
  } vms;
  struct Cgroups {
    // cgroups.root: the cgroup VM cgroups are made under (<root>/vms/<vmi-uid>), as a path on
    // the cgroup2 mount or relative to it. Empty: under systemd the service's own (delegated)
    // cgroup, the daemon moving itself into <own>/daemon; otherwise <mount>/edgevirt.
    std::string root;
    // cgroups.bpfRoot: where each VM's device filter (map and link) is pinned, on bpffs.
    std::string bpf_root = "/sys/fs/bpf/edgevirt";
    bool operator==(const Cgroups&) const = default;
  } cgroups;
  struct Storage {
    // storage.classes: the embedded default is one files class "local" (qcow2 images under
    // <stateDir>/volumes), the default class. An empty list disables provisioning.
    std::vector<StorageClass> classes = {
        {"local", true, StorageClass::Type::kFiles, "", StorageClass::Format::kQcow2, "", {}}};
    bool operator==(const Storage&) const = default;
  } storage;

  // images: the containerDisk cache and its registry client (image/image.h).
  struct Images {
    std::string dir;        // images.dir: absolute; empty = <stateDir>/images
    std::string auth_file;  // images.authFile: a docker-style config.json with credentials
    // images.platform: "os/arch[/variant]" chosen from image indexes; empty = this host's.
    std::string platform;
    // images.registries: per-registry transport: [{host, insecure, skipVerify, caFile}].
    std::vector<RegistryHostConfig> registries;
    uint64_t max_virtual_size = 1ull << 40;  // images.maxVirtualSize: larger disks are refused
    // images.cacheBudget: unused images are pruned, least recently used first, while the cache
    // holds more than this (0: unused images are kept until `edgevirtd image prune`).
    uint64_t cache_budget = 20ull << 30;
    int pull_workers = 2;                             // images.pullWorkers: concurrent pulls
    std::chrono::milliseconds stall_timeout{60'000};  // images.stallTimeout: no byte for this long
    bool operator==(const Images&) const = default;
  } images;

  // network: the default (pod) network and the host networks VMIs may join.
  struct Network {
    // network.bridge: the default network's bridge, created and owned by the daemon.
    std::string bridge = "edgevirt0";
    // network.cidr: its IPv4 prefix (length <= 30); the gateway is the first host address.
    std::string cidr = "10.208.0.0/24";
    uint32_t mtu = 0;  // network.mtu: the bridge's and the pod NICs' MTU; 0: the kernel's
    // network.nodePortRange: "A-B", the ports NodePort Services are given.
    uint32_t node_port_first = 30000;
    uint32_t node_port_last = 32767;
    // network.serviceCIDR: the ClusterIPs of core/v1 Services; must not overlap cidr.
    std::string service_cidr = "10.96.0.0/16";
    // network.hostNetworks: what networks[].multus.networkName may name.
    std::vector<HostNetworkConfig> host_networks;
    bool operator==(const Network&) const = default;
  } network;

  struct Log {
    log::Level level = log::Level::kInfo;     // log.level
    log::Target target = log::Target::kAuto;  // log.target
    bool operator==(const Log&) const = default;
  } log;

  struct Store {
    uint64_t initial_map_size = 64ull << 20;  // store.initialMapSize
    struct EventRetention {
      uint64_t count = 100000;                  // store.eventRetention.count
      std::chrono::milliseconds age{3600'000};  // store.eventRetention.age
      bool operator==(const EventRetention&) const = default;
    } event_retention;
    bool operator==(const Store&) const = default;
  } store;

  struct Shutdown {
    std::chrono::milliseconds timeout{30'000};  // shutdown.timeout
    bool operator==(const Shutdown&) const = default;
  } shutdown;

  bool operator==(const Config&) const = default;

  // libvirt.uri, or the embedded QEMU driver rooted under stateDir when it is empty.
  std::string EffectiveLibvirtUri() const;
  // storage.classes with the defaults that depend on other keys applied (the dir of a files
  // class without one is <stateDir>/volumes).
  std::vector<StorageClass> EffectiveStorageClasses() const;
  // The name of the default storage class, "" when there is none.
  std::string DefaultStorageClass() const;
  // images.dir, or <stateDir>/images when it is empty.
  std::string EffectiveImagesDir() const;
  // api.auth.tokenFile, or <stateDir>/tokens.csv when it is empty.
  std::string EffectiveTokenFile() const;
  // <stateDir>/pki: the generated CA and server certificate.
  std::string PkiDir() const;
};

// Every key path the file may contain, leaves only ("api.listen", "store.eventRetention.age",
// ...), in documentation order.
const std::vector<std::string>& ConfigKeyPaths();

// Parses and validates YAML text. `source` names the text in error messages
// ("/etc/edgevirt/edgevirtd.yaml"). Errors are kInvalid and read
// "SOURCE:LINE:COLUMN: <what is wrong>", naming the key path, e.g.
//   /etc/edgevirt/edgevirtd.yaml:7:3: unknown key "api.listn"
//   edgevirtd.yaml:4:13: api.ioThreads: expected an integer, got "two"
Result<Config> ParseConfig(std::string_view yaml, std::string_view source);

// Reads and parses a file. A missing or unreadable file is an error (kNotFound / kPermission)
// that names the path.
Result<Config> LoadConfigFile(const std::filesystem::path& path);

// The key paths whose values differ between two configurations (for SIGHUP, which applies
// log.level only and reports the rest).
std::vector<std::string> ChangedKeys(const Config& a, const Config& b);

// "1h", "30m", "45s", "500ms", "1h30m". Used for every duration key.
Result<std::chrono::milliseconds> ParseDuration(std::string_view text);
// The shortest exact form: 90000ms -> "1m30s", 3600000ms -> "1h".
std::string FormatDuration(std::chrono::milliseconds d);

// Validates one api.listen entry with api::ListenAddress::Parse and returns its canonical form,
// which tells duplicates apart.
Result<std::string> CanonicalListenAddress(std::string_view text);

// Byte sizes: a plain integer or an integer with a binary suffix "Ki", "Mi", "Gi", "Ti".
Result<uint64_t> ParseByteSize(std::string_view text);

}  // namespace edgevirt::daemon
