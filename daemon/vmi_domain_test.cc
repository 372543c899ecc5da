// daemon/vmi_domain: mapping of admitted VMIs (run through api::kubevirt admission first, so
// the test sees what the store holds) to vmm::DomainSpec, and the per-VMI files made by the real
// xorriso and qemu-img.
#include "daemon/vmi_domain.h"

#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "api/kubevirt/kubevirt.h"
#include "api/kubevirt/yaml_json.h"
#include "common/exec.h"
#include "tests/support/catch.h"
#include "tests/support/temp_dir.h"

namespace edgevirt::daemon {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

constexpr const char* kUid = "0b2c6c9e-4f5e-4e43-9d55-8f4b8b4f1a21";
constexpr const char* kFirmwareUuid = "5d307ca9-b3ef-428c-8861-06e72d69f223";

// Admits `yaml` as a VMI create, as the API server does, then adds the server-owned uid.
Json Admitted(const std::string& yaml) {
  static const api::ApiGroupVersion gv = [] {
    api::kubevirt::KubevirtOptions options;
    options.random_uuid = [] { return std::string(kFirmwareUuid); };
    return api::kubevirt::KubevirtV1(options);
  }();
  std::string error;
  auto doc = api::kubevirt::YamlToJson(yaml, &error);
  INFO(error);
  REQUIRE(doc.has_value());
  Json vmi = *doc;
  api::AdmitRequest r;
  r.op = api::Operation::kCreate;
  r.object = &vmi;
  api::AdmitResult result = gv.resources.at(1).admit(r);
  std::string causes;
  for (const auto& c : result.invalid) causes += c.field + ": " + c.message + "\n";
  INFO(causes);
  REQUIRE(result.invalid.empty());
  vmi["metadata"]["uid"] = kUid;
  return vmi;
}

std::string Read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A minimal VMI with the given volumes and disks (YAML flow sequences).
std::string Vmi(const std::string& disks, const std::string& volumes,
                const std::string& extra_domain = "") {
  return "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n"
         "metadata: {name: vm1, namespace: ns1}\n"
         "spec:\n  domain:\n    memory: {guest: 128Mi}\n" +
         extra_domain + "    devices:\n      disks: " + disks + "\n  volumes: " + volumes + "\n";
}

struct Fixture {
  TempDir tmp{"ev-vmi"};
  VmiHostOptions host;
  std::map<std::string, Json> secrets;
  SecretLookup lookup = [this](const std::string& ns, const std::string& name) -> Result<Json> {
    auto it = secrets.find(ns + "/" + name);
    if (it == secrets.end()) {
      return MakeError(Code::kNotFound, "secrets \"" + name + "\" not found");
    }
    return it->second;
  };
  Fixture() {
    host.vms_dir = tmp.Path("vms");
    host.host_disk_dirs = {tmp.Path("disks")};
    host.firmware = FindFirmware();
    fs::create_directories(tmp / "disks");
    if (::geteuid() != 0) host.qemu_group.clear();
  }
  Result<VmiPlan> Plan(const std::string& yaml) { return PlanVmi(Admitted(yaml), host, lookup); }
};

TEST_CASE("an admitted VMI maps onto an exact DomainSpec") {
  Fixture f;
  std::string yaml = R"(apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: web
  namespace: prod
spec:
  hostname: www
  domain:
    cpu: {sockets: 1, cores: 2, threads: 1}
    memory: {guest: 1000M}
    firmware: {serial: ABC-123}
    devices:
      disks:
      - name: data
        disk: {bus: virtio}
        bootOrder: 1
        serial: DATA1
      - name: seed
        cdrom: {bus: sata}
      - name: logs
        disk: {bus: scsi}
        cache: writeback
  volumes:
  - name: data
    hostDisk: {path: )" +
                     f.tmp.Path("disks") +
                     R"(/web.img, type: DiskOrCreate, capacity: 1Gi}
  - name: seed
    cloudInitNoCloud: {userData: "#cloud-config\nhello: world\n"}
  - name: logs
    emptyDisk: {capacity: 64Mi}
  - name: scratch
    emptyDisk: {capacity: 1Gi}
)";
  auto plan = f.Plan(yaml);
  INFO((plan ? "" : plan.error().ToString()));
  REQUIRE(plan.has_value());
  const std::string dir = f.host.vms_dir + "/" + kUid;
  CHECK(plan->dir == dir);
  CHECK(plan->uid == kUid);
  const vmm::DomainSpec& d = plan->domain;
  CHECK(d.name == "prod_web");
  CHECK(d.uuid == kFirmwareUuid);
  CHECK(d.firmware_serial == "ABC-123");
  CHECK(d.smbios.manufacturer == "KubeVirt");
  CHECK(d.smbios.product == "None");
  CHECK(d.smbios.family == "KubeVirt");
  CHECK(d.smbios.version.empty());
  CHECK(d.machine_type == "q35");
  CHECK(d.accelerator == vmm::Accelerator::kTcg);
  // Admission defaulted cpu.model to host-model; under TCG that becomes QEMU's default model.
  CHECK(d.cpu.mode == vmm::CpuMode::kNone);
  CHECK(d.cpu.sockets == 1);
  CHECK(d.cpu.cores == 2);
  CHECK(d.cpu.threads == 1);
  // 1000M = 1e9 bytes, rounded up to whole MiB (954 MiB).
  CHECK(d.memory_bytes == 954ull * 1024 * 1024);
  CHECK(d.firmware.kind == vmm::FirmwareKind::kBios);

  REQUIRE(d.disks.size() == 4);
  const auto& data = d.disks[0];
  CHECK(data.name == "data");
  CHECK(data.path == f.tmp.Path("disks") + "/web.img");
  CHECK(data.format == vmm::DiskFormat::kRaw);
  CHECK(data.device == vmm::DiskDevice::kDisk);
  CHECK(data.bus == vmm::DiskBus::kVirtio);
  CHECK(data.boot_order == 1);
  CHECK(data.serial == "DATA1");
  CHECK_FALSE(data.readonly);
  CHECK(data.cache == vmm::DiskCache::kNone);
  CHECK(data.error_policy == vmm::DiskErrorPolicy::kStop);
  const auto& seed = d.disks[1];
  CHECK(seed.path == dir + "/cloudinit-seed.iso");
  CHECK(seed.device == vmm::DiskDevice::kCdrom);
  CHECK(seed.bus == vmm::DiskBus::kSata);
  CHECK(seed.readonly);
  CHECK(seed.format == vmm::DiskFormat::kRaw);
  CHECK(seed.boot_order == 0);
  const auto& logs = d.disks[2];
  CHECK(logs.path == dir + "/emptydisk-logs.qcow2");
  CHECK(logs.format == vmm::DiskFormat::kQcow2);
  CHECK(logs.bus == vmm::DiskBus::kScsi);
  CHECK(logs.cache == vmm::DiskCache::kWriteback);
  // A volume without a disk got `disk: {bus: sata}` from admission.
  CHECK(d.disks[3].name == "scratch");
  CHECK(d.disks[3].bus == vmm::DiskBus::kSata);

  // A pty (the console is a libvirt stream) whose output QEMU also logs.
  CHECK(d.console.kind == vmm::ConsoleKind::kPty);
  CHECK(d.console.socket_path.empty());
  CHECK(d.console.log_path == dir + "/serial0.log");
  CHECK(d.vnc_socket_path == dir + "/vnc/vnc.sock");
  CHECK(d.guest_agent_socket_path == dir + "/qga.sock");
  CHECK_FALSE(d.tpm.has_value());

  REQUIRE(plan->tasks.size() == 4);
  CHECK(plan->tasks[0].kind == VolumeTaskKind::kHostDiskCreate);
  CHECK(plan->tasks[0].path == f.tmp.Path("disks") + "/web.img");
  CHECK(plan->tasks[0].capacity_bytes == 1024ull * 1024 * 1024);
  CHECK(plan->tasks[1].kind == VolumeTaskKind::kCloudInitNoCloud);
  CHECK(plan->tasks[1].user_data == "#cloud-config\nhello: world\n");
  CHECK(plan->tasks[1].network_data.empty());
  // KubeVirt v1.0: instance-id is the firmware UUID, local-hostname spec.hostname.
  CHECK(plan->tasks[1].meta_data ==
        std::string(R"({"instance-id":")") + kFirmwareUuid + R"(","local-hostname":"www"})");
  CHECK(plan->tasks[2].kind == VolumeTaskKind::kEmptyDisk);
  CHECK(plan->tasks[2].capacity_bytes == 64ull * 1024 * 1024);

  auto xml = vmm::DomainXml(d);
  REQUIRE(xml.has_value());
  for (const std::string& piece : std::vector<std::string>{
           "<domain type='qemu'>", "<name>prod_web</name>",
           "<entry name='manufacturer'>KubeVirt</entry>", "<entry name='serial'>ABC-123</entry>",
           "<source file='" + dir + "/cloudinit-seed.iso'/>", "<target dev='vda' bus='virtio'/>",
           "<alias name='ua-seed'/>", "<serial>DATA1</serial>",
           "<source mode='bind' path='" + dir + "/qga.sock'/>",
           "<listen type='socket' socket='" + dir + "/vnc/vnc.sock'/>",
           "<serial type='pty'>\n      <log file='" + dir + "/serial0.log' append='on'/>",
           "<console type='pty'>"}) {
    INFO(piece);
    CHECK(xml->find(piece) != std::string::npos);
  }
  CHECK(xml->find("<cpu mode") == std::string::npos);

  SECTION("KVM keeps host-model; host-passthrough maps too") {
    f.host.accelerator = vmm::Accelerator::kKvm;
    auto kvm = f.Plan(yaml);
    REQUIRE(kvm.has_value());
    CHECK(kvm->domain.cpu.mode == vmm::CpuMode::kHostModel);
    CHECK(kvm->domain.accelerator == vmm::Accelerator::kKvm);
  }
}

TEST_CASE("CPU models, autoattach switches, TPM and EFI") {
  Fixture f;
  const std::string disks = "[{name: seed, disk: {bus: virtio}}]";
  const std::string vols = "[{name: seed, cloudInitNoCloud: {userData: hi}}]";
  SECTION("named model and host-passthrough") {
    auto named = f.Plan(Vmi(disks, vols, "    cpu: {model: Skylake-Client-IBRS}\n"));
    REQUIRE(named.has_value());
    CHECK(named->domain.cpu.mode == vmm::CpuMode::kNamed);
    CHECK(named->domain.cpu.model == "Skylake-Client-IBRS");
    auto pt = f.Plan(Vmi(disks, vols, "    cpu: {model: host-passthrough}\n"));
    REQUIRE(pt.has_value());
    CHECK(pt->domain.cpu.mode == vmm::CpuMode::kNone);  // TCG
    f.host.accelerator = vmm::Accelerator::kKvm;
    pt = f.Plan(Vmi(disks, vols, "    cpu: {model: host-passthrough}\n"));
    REQUIRE(pt.has_value());
    CHECK(pt->domain.cpu.mode == vmm::CpuMode::kHostPassthrough);
  }
  SECTION("no serial console, no VNC") {
    std::string yaml =
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n"
        "metadata: {name: vm1, namespace: ns1}\n"
        "spec:\n  domain:\n    memory: {guest: 128Mi}\n    devices:\n"
        "      autoattachSerialConsole: false\n      autoattachGraphicsDevice: false\n"
        "      disks: " +
        disks + "\n  volumes: " + vols + "\n";
    auto plan = f.Plan(yaml);
    REQUIRE(plan.has_value());
    CHECK(plan->domain.console.kind == vmm::ConsoleKind::kNone);
    CHECK(plan->domain.console.log_path.empty());
    CHECK(plan->domain.vnc_socket_path.empty());
    auto none_xml = vmm::DomainXml(plan->domain);
    REQUIRE(none_xml.has_value());
    CHECK(none_xml->find("<serial") == std::string::npos);
    CHECK(none_xml->find("<console") == std::string::npos);
    CHECK_FALSE(plan->domain.guest_agent_socket_path.empty());
  }
  SECTION("TPM") {
    std::string yaml =
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n"
        "metadata: {name: vm1, namespace: ns1}\n"
        "spec:\n  domain:\n    memory: {guest: 128Mi}\n    devices:\n"
        "      tpm: {persistent: true}\n      disks: " +
        disks + "\n  volumes: " + vols + "\n";
    auto plan = f.Plan(yaml);
    REQUIRE(plan.has_value());
    REQUIRE(plan->domain.tpm.has_value());
    CHECK(plan->domain.tpm->persistent);
    auto ephemeral = f.Plan(std::string(yaml).replace(yaml.find("{persistent: true}"), 18, "{}"));
    REQUIRE(ephemeral.has_value());
    REQUIRE(ephemeral->domain.tpm.has_value());
    CHECK_FALSE(ephemeral->domain.tpm->persistent);
  }
  SECTION("EFI: secure boot by default, as KubeVirt v1.0") {
    REQUIRE_FALSE(f.host.firmware.ovmf_code_secure.empty());  // ovmf is a test dependency
    auto plan = f.Plan(Vmi(disks, vols,
                           "    firmware: {bootloader: {efi: {}}}\n"
                           "    features: {smm: {}}\n"));
    INFO((plan ? "" : plan.error().ToString()));
    REQUIRE(plan.has_value());
    const auto& fw = plan->domain.firmware;
    CHECK(fw.kind == vmm::FirmwareKind::kEfi);
    CHECK(fw.secure_boot);
    CHECK(fw.loader == f.host.firmware.ovmf_code_secure);
    CHECK(fw.nvram_template == f.host.firmware.ovmf_vars_secure);
    CHECK(fw.nvram == plan->dir + "/nvram.fd");
    auto insecure =
        f.Plan(Vmi(disks, vols, "    firmware: {bootloader: {efi: {secureBoot: false}}}\n"));
    REQUIRE(insecure.has_value());
    CHECK_FALSE(insecure->domain.firmware.secure_boot);
    CHECK(insecure->domain.firmware.loader == f.host.firmware.ovmf_code);

    f.host.firmware = FirmwarePaths{};
    auto missing =
        f.Plan(Vmi(disks, vols, "    firmware: {bootloader: {efi: {secureBoot: false}}}\n"));
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code == Code::kUnavailable);
    CHECK(missing.error().message ==
          "VMI ns1/vm1: EFI needs the OVMF code and variable images, which are not installed on "
          "this host (package ovmf / edk2-ovmf)");
  }
}

TEST_CASE("FindFirmware finds Debian's OVMF images") {
  FirmwarePaths fw = FindFirmware();
  if (fs::exists("/usr/share/OVMF/OVMF_CODE_4M.fd")) {
    CHECK(fw.ovmf_code == "/usr/share/OVMF/OVMF_CODE_4M.fd");
    CHECK(fw.ovmf_vars == "/usr/share/OVMF/OVMF_VARS_4M.fd");
    CHECK(fw.ovmf_code_secure == "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd");
    CHECK(fw.ovmf_vars_secure == "/usr/share/OVMF/OVMF_VARS_4M.ms.fd");
  } else {
    CHECK(fw.ovmf_code == "/usr/share/edk2/ovmf/OVMF_CODE.fd");
  }
}

TEST_CASE("cloud-init sources: inline, base64, Secrets, ConfigDrive") {
  Fixture f;
  const std::string disks = "[{name: ci, disk: {bus: virtio}}]";
  auto task = [&](const std::string& source) -> VolumeTask {
    auto plan = f.Plan(Vmi(disks, "[{name: ci, " + source + "}]"));
    INFO((plan ? "" : plan.error().ToString()));
    REQUIRE(plan.has_value());
    REQUIRE(plan->tasks.size() == 1);
    // KubeVirt leaves a virtio seed writable; edgevirt makes it read-only.
    CHECK(plan->domain.disks[0].readonly);
    return plan->tasks[0];
  };
  CHECK(task("cloudInitNoCloud: {userDataBase64: aGVsbG8K}").user_data == "hello\n");
  CHECK(task("cloudInitNoCloud: {networkData: 'version: 2'}").network_data == "version: 2");
  CHECK(task("cloudInitNoCloud: {networkData: 'version: 2'}").user_data.empty());

  f.secrets["ns1/ud"] = Json::parse(R"({"data":{"userdata":"c2VjcmV0IHVzZXIgZGF0YQ=="}})");
  f.secrets["ns1/ud2"] = Json::parse(R"({"data":{"userData":"Y2FtZWw="}})");
  f.secrets["ns1/nd"] = Json::parse(R"({"data":{"networkData":"bmV0"}})");
  f.secrets["ns1/empty"] = Json::parse(R"({"data":{"other":"eA=="}})");
  f.secrets["ns1/bad"] = Json::parse(R"({"data":{"userdata":"***"}})");
  CHECK(task("cloudInitNoCloud: {secretRef: {name: ud}}").user_data == "secret user data");
  CHECK(task("cloudInitNoCloud: {secretRef: {name: ud2}}").user_data == "camel");
  auto both = task("cloudInitNoCloud: {secretRef: {name: ud}, networkDataSecretRef: {name: nd}}");
  CHECK(both.user_data == "secret user data");
  CHECK(both.network_data == "net");

  auto cd = task("cloudInitConfigDrive: {userData: hi, networkData: '{}'}");
  CHECK(cd.kind == VolumeTaskKind::kCloudInitConfigDrive);
  CHECK(cd.path == f.host.vms_dir + "/" + kUid + "/cloudinit-ci.iso");
  CHECK(cd.meta_data == std::string(R"({"instance_id":"vm1.ns1","hostname":"vm1","uuid":")") +
                            kFirmwareUuid + "\"}");

  auto err = [&](const std::string& source) {
    auto plan = f.Plan(Vmi(disks, "[{name: ci, " + source + "}]"));
    REQUIRE_FALSE(plan.has_value());
    return plan.error();
  };
  Error missing = err("cloudInitNoCloud: {secretRef: {name: nope}}");
  CHECK(missing.code == Code::kNotFound);
  CHECK(missing.message ==
        "VMI ns1/vm1: volume ci: secretRef Secret ns1/nope: secrets \"nope\" not found");
  Error nokey = err("cloudInitNoCloud: {secretRef: {name: empty}}");
  CHECK(nokey.code == Code::kNotFound);
  CHECK(nokey.message ==
        "VMI ns1/vm1: volume ci: secretRef Secret ns1/empty has no key userdata or userData");
  Error bad = err("cloudInitNoCloud: {secretRef: {name: bad}}");
  CHECK(bad.code == Code::kInvalid);
  CHECK(bad.message ==
        "VMI ns1/vm1: volume ci: secretRef Secret ns1/bad: key userdata is not valid base64");
  // Admission checks inline base64, so feed the planner directly with an unchecked object.
  Json vmi = Admitted(Vmi(disks, "[{name: ci, cloudInitNoCloud: {userData: x}}]"));
  vmi["spec"]["volumes"][0]["cloudInitNoCloud"] = Json::parse(R"({"userDataBase64":"%%%"})");
  auto plan = PlanVmi(vmi, f.host, f.lookup);
  REQUIRE_FALSE(plan.has_value());
  CHECK(plan.error().message == "VMI ns1/vm1: volume ci: userDataBase64 is not valid base64");
  vmi["spec"]["volumes"][0]["cloudInitNoCloud"] = Json::object();
  plan = PlanVmi(vmi, f.host, f.lookup);
  REQUIRE_FALSE(plan.has_value());
  CHECK(plan.error().message ==
        "VMI ns1/vm1: volume ci: userDataBase64, userData, networkDataBase64 or networkData is "
        "required for a cloud-init data source");
}

TEST_CASE("a containerDisk boots from a qcow2 overlay over its cached image") {
  Fixture f;
  Json vmi = Admitted(Vmi("[{name: root, disk: {bus: virtio}}]",
                          "[{name: root, containerDisk: {image: reg.local/kv/disk:v1}}]"));
  ContainerDisks images{
      {"root", {"/var/lib/edgevirt/images/disks/abc/disk", vmm::DiskFormat::kRaw}}};
  auto plan = PlanVmi(vmi, f.host, f.lookup, {}, images);
  REQUIRE(plan.has_value());
  REQUIRE(plan->tasks.size() == 1);
  const VolumeTask& t = plan->tasks[0];
  CHECK(t.kind == VolumeTaskKind::kEphemeralOverlay);
  CHECK(t.path == plan->dir + "/containerdisk-root.qcow2");
  CHECK(t.backing == "/var/lib/edgevirt/images/disks/abc/disk");
  CHECK(t.backing_format == vmm::DiskFormat::kRaw);
  REQUIRE(plan->domain.disks.size() == 1);
  CHECK(plan->domain.disks[0].path == t.path);
  CHECK(plan->domain.disks[0].format == vmm::DiskFormat::kQcow2);
  CHECK_FALSE(plan->domain.disks[0].readonly);
  CHECK(plan->grants.empty());
}

TEST_CASE("volume types edgevirt does not serve yet are refused with their reason") {
  Fixture f;
  auto err = [&](const std::string& volume) {
    auto plan = f.Plan(Vmi("[{name: v, disk: {bus: virtio}}]", "[{name: v, " + volume + "}]"));
    REQUIRE_FALSE(plan.has_value());
    return plan.error();
  };
  // A containerDisk whose image the controller has not handed in yet.
  Error cd = err("containerDisk: {image: quay.io/kubevirt/cirros-container-disk-demo:v1.0.0}");
  CHECK(cd.code == Code::kUnavailable);
  CHECK(cd.message == "VMI ns1/vm1: volume v: the containerDisk image is not pulled yet");
  // Without a claim lookup (PVCs not served), a claim cannot be resolved.
  Error pvc = err("persistentVolumeClaim: {claimName: data}");
  CHECK(pvc.code == Code::kUnavailable);
  CHECK(pvc.message == "VMI ns1/vm1: volume v: PersistentVolumeClaims are not served");
  CHECK(err("ephemeral: {persistentVolumeClaim: {claimName: data}}").code == Code::kUnavailable);
  // (dataVolume is refused at admission already.)

  // Shapes admission already refuses, checked on the planner directly.
  Json vmi =
      Admitted(Vmi("[{name: v, disk: {bus: virtio}}]", "[{name: v, emptyDisk: {capacity: 1Mi}}]"));
  vmi["spec"]["volumes"][0] = Json::parse(R"({"name":"v","configMap":{"name":"x"}})");
  auto plan = PlanVmi(vmi, f.host, f.lookup);
  REQUIRE_FALSE(plan.has_value());
  CHECK(plan.error().code == Code::kUnsupported);
  CHECK(plan.error().message == "VMI ns1/vm1: volume v: volume type configMap is not supported");
  vmi =
      Admitted(Vmi("[{name: v, disk: {bus: virtio}}]", "[{name: v, emptyDisk: {capacity: 1Mi}}]"));
  vmi["spec"]["domain"]["devices"]["disks"][0]["disk"]["bus"] = "usb";
  plan = PlanVmi(vmi, f.host, f.lookup);
  REQUIRE_FALSE(plan.has_value());
  CHECK(plan.error().code == Code::kUnsupported);
  CHECK(plan.error().message ==
        "VMI ns1/vm1: disk v: bus usb is not supported (use virtio, sata or scsi)");
  // Admission maps a lun only to a PVC; the planner refuses one on a file on its own.
  vmi =
      Admitted(Vmi("[{name: v, disk: {bus: virtio}}]", "[{name: v, emptyDisk: {capacity: 1Mi}}]"));
  vmi["spec"]["domain"]["devices"]["disks"][0] =
      Json::parse(R"({"name":"v","lun":{"bus":"scsi"}})");
  plan = PlanVmi(vmi, f.host, f.lookup);
  REQUIRE_FALSE(plan.has_value());
  CHECK(plan.error().message ==
        "VMI ns1/vm1: disk v: a lun passes a block device through, but this volume is a file");
  vmi =
      Admitted(Vmi("[{name: v, disk: {bus: virtio}}]", "[{name: v, emptyDisk: {capacity: 1Mi}}]"));
  vmi["metadata"]["uid"] = "../../etc";
  plan = PlanVmi(vmi, f.host, f.lookup);
  REQUIRE_FALSE(plan.has_value());
  CHECK(plan.error().message == "VMI ns1/vm1: metadata.uid \"../../etc\" is not a UUID");
}

TEST_CASE("claims: file and block PVCs, ephemeral overlays, hotpluggable volumes left out") {
  Fixture f;
  std::map<std::string, Result<ClaimSource>> claims;
  claims.emplace(
      "ns1/img",
      ClaimSource{
          "/var/lib/edgevirt/volumes/ns1/a.qcow2", false, true, 1 << 30, {"ReadWriteOnce"}});
  claims.emplace("ns1/blk", ClaimSource{"/dev/loop7", true, false, 16 << 20, {"ReadWriteOnce"}});
  claims.emplace("ns1/base", ClaimSource{"/dev/loop8", true, false, 16 << 20, {"ReadOnlyMany"}});
  claims.emplace("ns1/pending",
                 Result<ClaimSource>(MakeError(Code::kUnavailable, "claim pending is not Bound")));
  ClaimLookup lookup = [&](const std::string& ns, const std::string& name) -> Result<ClaimSource> {
    auto it = claims.find(ns + "/" + name);
    if (it == claims.end()) {
      return MakeError(Code::kNotFound, "persistentvolumeclaims \"" + name + "\" not found");
    }
    return it->second;
  };
  const std::string yaml =
      Vmi("[{name: img, disk: {bus: virtio}}, {name: blk, disk: {bus: scsi}}, "
          "{name: base, disk: {bus: virtio}}, {name: hp, disk: {bus: scsi}}]",
          "[{name: img, persistentVolumeClaim: {claimName: img}}, "
          "{name: blk, persistentVolumeClaim: {claimName: blk}}, "
          "{name: base, ephemeral: {persistentVolumeClaim: {claimName: base}}}, "
          "{name: hp, persistentVolumeClaim: {claimName: blk, hotpluggable: true}}]");
  Json vmi = Admitted(yaml);
  auto plan = PlanVmi(vmi, f.host, f.lookup, lookup);
  INFO((plan ? "" : plan.error().message));
  REQUIRE(plan.has_value());
  const auto& disks = plan->domain.disks;
  REQUIRE(disks.size() == 3);
  CHECK(disks[0].path == "/var/lib/edgevirt/volumes/ns1/a.qcow2");
  CHECK(disks[0].format == vmm::DiskFormat::kQcow2);
  CHECK(disks[0].source_kind == vmm::DiskSourceKind::kFile);
  CHECK(disks[1].path == "/dev/loop7");
  CHECK(disks[1].source_kind == vmm::DiskSourceKind::kBlock);
  CHECK(disks[1].format == vmm::DiskFormat::kRaw);
  const std::string dir = f.host.vms_dir + "/" + kUid;
  CHECK(disks[2].path == dir + "/ephemeral-base.qcow2");
  CHECK(disks[2].format == vmm::DiskFormat::kQcow2);
  REQUIRE(plan->tasks.size() == 1);
  CHECK(plan->tasks[0].kind == VolumeTaskKind::kEphemeralOverlay);
  CHECK(plan->tasks[0].backing == "/dev/loop8");
  CHECK(plan->tasks[0].backing_format == vmm::DiskFormat::kRaw);
  // The block claim is granted read-write, the ephemeral base read-only.
  CHECK(plan->grants ==
        std::vector<DeviceGrant>{{"blk", "/dev/loop7", true}, {"base", "/dev/loop8", false}});
  CHECK(plan->hotplug_volumes == std::vector<std::string>{"hp"});
  CHECK(plan->domain.hotplug_scsi_controller);
  CHECK(plan->domain.spare_pcie_ports > 0);

  auto hp = PlanHotplugDisk(vmi, "hp", f.host, lookup);
  REQUIRE(hp.has_value());
  CHECK(hp->disk.name == "hp");
  CHECK(hp->disk.bus == vmm::DiskBus::kScsi);
  CHECK(hp->disk.path == "/dev/loop7");
  CHECK(hp->grants == std::vector<DeviceGrant>{{"hp", "/dev/loop7", true}});
  CHECK(hp->claim.capacity_bytes == 16u << 20);
  CHECK(PlanHotplugDisk(vmi, "nope", f.host, lookup).error().code == Code::kNotFound);

  // A claim that is not Bound, or missing, fails the start with the volume named.
  vmi["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "pending";
  auto waiting = PlanVmi(vmi, f.host, f.lookup, lookup);
  REQUIRE_FALSE(waiting.has_value());
  CHECK(waiting.error().code == Code::kUnavailable);
  CHECK(waiting.error().message == "VMI ns1/vm1: volume img: claim pending is not Bound");
  vmi["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "gone";
  auto missing = PlanVmi(vmi, f.host, f.lookup, lookup);
  REQUIRE_FALSE(missing.has_value());
  CHECK(missing.error().code == Code::kNotFound);
}

TEST_CASE("an ephemeral overlay is a qcow2 over its read-only backing") {
  Fixture f;
  const fs::path base = f.tmp / "base.raw";
  std::ofstream(base) << std::string(1 << 20, 'x');
  ClaimLookup lookup = [&](const std::string&, const std::string&) -> Result<ClaimSource> {
    return ClaimSource{base.string(), false, false, 1 << 20, {"ReadOnlyMany"}};
  };
  auto plan = PlanVmi(Admitted(Vmi("[{name: e, disk: {bus: virtio}}]",
                                   "[{name: e, ephemeral: {persistentVolumeClaim: "
                                   "{claimName: base}}}]")),
                      f.host, f.lookup, lookup);
  REQUIRE(plan.has_value());
  REQUIRE(PrepareVmiFiles(*plan));
  auto info = Exec({"qemu-img", "info", "--output", "json", plan->domain.disks[0].path});
  REQUIRE(info.has_value());
  Json j = Json::parse(info->stdout_text);
  CHECK(j["format"] == "qcow2");
  CHECK(j["backing-filename"] == base.string());
  CHECK(j["backing-filename-format"] == "raw");
}

TEST_CASE("cache none needs O_DIRECT; the default follows it") {
  Fixture f;
  f.host.direct_io = false;
  auto plan =
      f.Plan(Vmi("[{name: v, disk: {bus: virtio}}]", "[{name: v, emptyDisk: {capacity: 1Mi}}]"));
  REQUIRE(plan.has_value());
  CHECK(plan->domain.disks[0].cache == vmm::DiskCache::kWritethrough);
  auto none = f.Plan(Vmi("[{name: v, disk: {bus: virtio}, cache: none}]",
                         "[{name: v, emptyDisk: {capacity: 1Mi}}]"));
  REQUIRE_FALSE(none.has_value());
  CHECK(none.error().code == Code::kInvalid);
}

TEST_CASE("hostDisk paths must stay inside the host disk directories") {
  Fixture f;
  const std::string disks_dir = f.tmp.Path("disks");
  fs::create_directories(f.tmp / "outside");
  std::ofstream(f.tmp / "outside" / "secret.img") << "x";
  std::ofstream(fs::path(disks_dir) / "ok.img") << "disk";
  fs::create_symlink(f.tmp / "outside", fs::path(disks_dir) / "link-dir");
  fs::create_symlink(f.tmp / "outside" / "secret.img", fs::path(disks_dir) / "link.img");
  fs::create_directories(fs::path(disks_dir) / "sub");

  auto plan = [&](const std::string& path, const std::string& type = "Disk",
                  const std::string& cap = "") {
    std::string hd =
        "{path: '" + path + "', type: " + type + (cap.empty() ? "" : ", capacity: " + cap) + "}";
    Json vmi = Admitted(Vmi("[{name: hd, disk: {bus: virtio}}]",
                            "[{name: hd, hostDisk: {path: /placeholder, type: Disk}}]"));
    // Admission has its own (lexical) check when configured; the planner must hold alone.
    vmi["spec"]["volumes"][0]["hostDisk"] =
        Json::parse(R"({"path":")" + path + R"(","type":")" + type + "\"" +
                    (cap.empty() ? "" : R"(,"capacity":")" + cap + "\"") + "}");
    return PlanVmi(vmi, f.host, f.lookup);
  };
  auto ok = plan(disks_dir + "/ok.img");
  REQUIRE(ok.has_value());
  CHECK(ok->domain.disks[0].path == disks_dir + "/ok.img");
  CHECK(ok->domain.disks[0].format == vmm::DiskFormat::kRaw);
  CHECK(ok->tasks.empty());

  auto refused = [&](const std::string& path, const std::string& type = "Disk") {
    auto r = plan(path, type, type == "DiskOrCreate" ? "1Mi" : "");
    INFO(path);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == Code::kInvalid);
    return r.error().message;
  };
  CHECK(refused("relative/ok.img") ==
        "VMI ns1/vm1: volume hd: hostDisk.path \"relative/ok.img\" is not absolute");
  CHECK(refused(disks_dir + "/../outside/secret.img").find("is not a clean path") !=
        std::string::npos);
  CHECK(refused(disks_dir + "/./ok.img").find("is not a clean path") != std::string::npos);
  CHECK(refused(disks_dir + "//ok.img").find("is not a clean path") != std::string::npos);
  CHECK(refused(f.tmp.Path("outside") + "/secret.img") ==
        "VMI ns1/vm1: volume hd: hostDisk.path \"" + f.tmp.Path("outside") +
            "/secret.img\" is not under one of the host disk directories [" + disks_dir + "]");
  CHECK(refused(disks_dir + "/link.img") ==
        "VMI ns1/vm1: volume hd: hostDisk.path \"" + disks_dir + "/link.img\" (resolves to \"" +
            f.tmp.Path("outside") +
            "/secret.img\") is not under one of the host disk directories [" + disks_dir + "]");
  // Through a symlinked directory, also for a file that does not exist yet.
  CHECK(refused(disks_dir + "/link-dir/secret.img").find("resolves to") != std::string::npos);
  CHECK(refused(disks_dir + "/link-dir/new.img", "DiskOrCreate").find("resolves to") !=
        std::string::npos);
  CHECK(refused(disks_dir).find("is not under one of") != std::string::npos);
  CHECK(refused(disks_dir + "/sub") ==
        "VMI ns1/vm1: volume hd: hostDisk.path \"" + disks_dir + "/sub\" is not a regular file");
  CHECK(refused(disks_dir + "/missing.img") == "VMI ns1/vm1: volume hd: hostDisk.path \"" +
                                                   disks_dir +
                                                   "/missing.img\" does not exist (type Disk)");
  auto nocap = plan(disks_dir + "/new.img", "DiskOrCreate");
  REQUIRE_FALSE(nocap.has_value());
  CHECK(nocap.error().message ==
        "VMI ns1/vm1: volume hd: hostDisk.capacity (type DiskOrCreate) is missing");

  auto create = plan(disks_dir + "/sub/new.img", "DiskOrCreate", "3Mi");
  REQUIRE(create.has_value());
  REQUIRE(create->tasks.size() == 1);
  CHECK(create->tasks[0].kind == VolumeTaskKind::kHostDiskCreate);
  CHECK(create->tasks[0].capacity_bytes == 3u * 1024 * 1024);

  f.host.host_disk_dirs.clear();
  CHECK(refused(disks_dir + "/ok.img") ==
        "VMI ns1/vm1: volume hd: hostDisk.path: hostDisk volumes are not allowed on this host (no "
        "host disk directories configured)");
}

std::string RunOk(const std::vector<std::string>& argv) {
  auto r = ExecChecked(argv);
  INFO((r ? "" : r.error().ToString()));
  REQUIRE(r.has_value());
  return r->stdout_text;
}

TEST_CASE("PrepareVmiFiles makes the ISOs, disks and directories; RemoveVmiFiles deletes them") {
  Fixture f;
  const std::string disks_dir = f.tmp.Path("disks");
  auto plan =
      f.Plan(Vmi("[{name: seed, cdrom: {bus: sata}}, {name: cd, disk: {bus: virtio}}, "
                 "{name: scratch, disk: {bus: virtio}}, {name: data, disk: {bus: virtio}}]",
                 "[{name: seed, cloudInitNoCloud: {userData: \"#cloud-config\\nfirst line\\n\", "
                 "networkData: 'version: 2'}}, "
                 "{name: cd, cloudInitConfigDrive: {userData: \"config drive data\"}}, "
                 "{name: scratch, emptyDisk: {capacity: 64Mi}}, "
                 "{name: data, hostDisk: {path: " +
                     disks_dir + "/data.img, type: DiskOrCreate, capacity: 5Mi}}]"));
  INFO((plan ? "" : plan.error().ToString()));
  REQUIRE(plan.has_value());
  REQUIRE(PrepareVmiFiles(*plan).has_value());

  const fs::path dir = plan->dir;
  struct stat st {};
  REQUIRE(::stat(dir.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0750);
  if (!plan->qemu_group.empty()) {
    struct group* g = ::getgrnam(plan->qemu_group.c_str());
    REQUIRE(g != nullptr);
    CHECK(st.st_gid == g->gr_gid);
  }
  REQUIRE(::stat((dir / "vnc").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0770);

  // NoCloud seed: label cidata, user-data, meta-data, network-config.
  const std::string iso = (dir / "cloudinit-seed.iso").string();
  REQUIRE(::stat(iso.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0600);
  std::string pvd = RunOk({"xorriso", "-indev", iso, "-pvd_info"});
  CHECK(pvd.find("Volume Id    : cidata") != std::string::npos);
  TempDir out("ev-iso");
  RunOk({"xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/", out.Path("nocloud")});
  CHECK(Read(out / "nocloud" / "user-data") == "#cloud-config\nfirst line\n");
  CHECK(Read(out / "nocloud" / "meta-data") ==
        std::string(R"({"instance-id":")") + kFirmwareUuid + R"(","local-hostname":"vm1"})");
  CHECK(Read(out / "nocloud" / "network-config") == "version: 2");

  // ConfigDrive: label config-2, openstack/latest/{user_data,meta_data.json}.
  const std::string cd = (dir / "cloudinit-cd.iso").string();
  CHECK(RunOk({"xorriso", "-indev", cd, "-pvd_info"}).find("Volume Id    : config-2") !=
        std::string::npos);
  RunOk({"xorriso", "-osirrox", "on", "-indev", cd, "-extract", "/", out.Path("cd")});
  CHECK(Read(out / "cd" / "openstack" / "latest" / "user_data") == "config drive data");
  CHECK(Read(out / "cd" / "openstack" / "latest" / "meta_data.json")
            .find("\"instance_id\":\"vm1.ns1\"") != std::string::npos);
  CHECK_FALSE(fs::exists(out / "cd" / "openstack" / "latest" / "network_data.json"));

  // emptyDisk: qcow2 of the requested virtual size.
  const std::string qcow = (dir / "emptydisk-scratch.qcow2").string();
  Json info = Json::parse(RunOk({"qemu-img", "info", "--output=json", qcow}));
  CHECK(info["format"] == "qcow2");
  CHECK(info["virtual-size"] == 64 * 1024 * 1024);

  // hostDisk DiskOrCreate: sparse raw file, 0640.
  const std::string raw = disks_dir + "/data.img";
  REQUIRE(::stat(raw.c_str(), &st) == 0);
  CHECK(st.st_size == 5 * 1024 * 1024);
  CHECK(st.st_blocks == 0);
  CHECK((st.st_mode & 07777) == 0640);

  // No staging or temporary files are left behind.
  for (const auto& e : fs::directory_iterator(dir)) {
    std::string n = e.path().filename().string();
    CHECK(n.find("stage") == std::string::npos);
    CHECK(n.find(".tmp") == std::string::npos);
  }

  SECTION("idempotent: existing files are kept as they are") {
    struct stat before {};
    REQUIRE(::stat(qcow.c_str(), &before) == 0);
    std::ofstream(raw, std::ios::app) << "guest wrote this";
    REQUIRE(PrepareVmiFiles(*plan).has_value());
    struct stat after {};
    REQUIRE(::stat(qcow.c_str(), &after) == 0);
    CHECK(before.st_ino == after.st_ino);
    CHECK(before.st_mtime == after.st_mtime);
    REQUIRE(::stat(raw.c_str(), &after) == 0);
    CHECK(after.st_size == 5 * 1024 * 1024 + 16);
    // A file removed meanwhile is made again.
    fs::remove(iso);
    REQUIRE(PrepareVmiFiles(*plan).has_value());
    CHECK(fs::exists(iso));
  }

  SECTION("RemoveVmiFiles removes the directory, not the host disks") {
    REQUIRE(RemoveVmiFiles(f.host.vms_dir, kUid).has_value());
    CHECK_FALSE(fs::exists(dir));
    CHECK(fs::exists(raw));
    CHECK(RemoveVmiFiles(f.host.vms_dir, kUid).has_value());  // not found = success
    auto bad = RemoveVmiFiles(f.host.vms_dir, "..");
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error().code == Code::kInvalid);
    CHECK_FALSE(RemoveVmiFiles(f.host.vms_dir, "").has_value());
    CHECK_FALSE(RemoveVmiFiles("relative", kUid).has_value());
  }
}

TEST_CASE("PrepareVmiFiles reports a failing helper with its stderr") {
  Fixture f;
  VmiPlan plan;
  plan.uid = kUid;
  plan.dir = f.host.vms_dir + "/" + kUid;
  plan.qemu_group = f.host.qemu_group;
  VolumeTask t;
  t.kind = VolumeTaskKind::kEmptyDisk;
  t.volume = "huge";
  t.path = plan.dir + "/emptydisk-huge.qcow2";
  t.capacity_bytes = UINT64_MAX;  // more than qemu-img accepts
  plan.tasks.push_back(t);
  auto st = PrepareVmiFiles(plan);
  REQUIRE_FALSE(st.has_value());
  INFO(st.error().message);
  CHECK(st.error().message.rfind(
            "prepare volume huge: qemu-img create " + t.path + ".tmp: exit 1: ", 0) == 0);
  CHECK_FALSE(fs::exists(t.path));

  plan.dir = f.host.vms_dir + "/not-a-uid";
  CHECK_FALSE(PrepareVmiFiles(plan).has_value());
}

}  // namespace
}  // namespace edgevirt::daemon

// ---- networks and NICs ----

namespace edgevirt::daemon {
namespace {

// A VMI with the given interfaces and networks (YAML flow sequences), admitted.
std::string NetVmi(const std::string& interfaces, const std::string& networks,
                   const std::string& extra_devices = "", const std::string& extra_spec = "") {
  return "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\n"
         "metadata: {name: vm1, namespace: ns1}\n"
         "spec:\n  domain:\n    memory: {guest: 128Mi}\n    devices:\n" +
         extra_devices + "      interfaces: " + interfaces + "\n  networks: " + networks + "\n" +
         extra_spec;
}

NicAttachment Tap(const std::string& name, const std::string& bridge, const std::string& tap,
                  const std::string& mac) {
  NicAttachment a;
  a.interface_name = name;
  a.source = bridge;
  a.tap = tap;
  a.mac = mac;
  return a;
}

// A raw (not admitted) VMI: bindings and networks admission would refuse reach the mapping
// only through a store written by an older or newer edgevirt, and must still be refused there.
Json RawVmi(const Json& interfaces, const Json& networks) {
  Json vmi = {{"metadata", {{"name", "vm1"}, {"namespace", "ns1"}, {"uid", kUid}}},
              {"spec",
               {{"domain",
                 {{"memory", {{"guest", "128Mi"}}},
                  {"firmware", {{"uuid", kFirmwareUuid}}},
                  {"devices", {{"interfaces", interfaces}}}}},
                {"networks", networks}}}};
  return vmi;
}

TEST_CASE("autoattachPodInterface: an admitted VMI without interfaces asks for the pod network") {
  auto reqs = NetworkRequests(Admitted(NetVmi("[]", "[]")));
  REQUIRE(reqs);
  REQUIRE(reqs->size() == 1);
  NetworkRequest want;
  want.interface_name = "default";
  want.pod = true;
  want.masquerade = false;  // KubeVirt's default binding on the pod network is bridge
  CHECK((*reqs)[0] == want);

  // autoattachPodInterface: false: no interface, no request.
  reqs = NetworkRequests(Admitted(NetVmi("[]", "[]", "      autoattachPodInterface: false\n")));
  REQUIRE(reqs);
  CHECK(reqs->empty());
}

TEST_CASE("NetworkRequests: pod and host networks, ports and MACs, in interface order") {
  auto reqs = NetworkRequests(Admitted(
      NetVmi("[{name: lan, bridge: {}, macAddress: '52-54-00-AB-CD-EF'},"
             " {name: default, masquerade: {}, ports: [{port: 80}, {name: dns, port: 53, "
             "protocol: UDP}]},"
             " {name: other, bridge: {}, macAddress: 5254.00ab.cd01}]",
             "[{name: default, pod: {}}, {name: other, multus: {networkName: kube-system/uplink}},"
             " {name: lan, multus: {networkName: lan}}]")));
  REQUIRE(reqs);
  REQUIRE(reqs->size() == 3);
  const NetworkRequest& lan = (*reqs)[0];
  CHECK(lan.interface_name == "lan");
  CHECK_FALSE(lan.pod);
  CHECK(lan.host_network == "lan");
  CHECK_FALSE(lan.masquerade);
  CHECK(lan.mac == "52:54:00:ab:cd:ef");
  const NetworkRequest& pod = (*reqs)[1];
  CHECK(pod.interface_name == "default");
  CHECK(pod.pod);
  CHECK(pod.host_network.empty());
  CHECK(pod.masquerade);
  CHECK(pod.ports == std::vector<std::pair<std::string, uint16_t>>{{"TCP", 80}, {"UDP", 53}});
  CHECK(pod.mac.empty());
  // "namespace/name": host networks are global, the namespace part is ignored.
  CHECK((*reqs)[2].host_network == "uplink");
  CHECK((*reqs)[2].mac == "52:54:00:ab:cd:01");
}

TEST_CASE("NetworkRequests refuses what edgevirt does not serve, naming the interface") {
  struct Case {
    const char* what;
    Json iface;
    Json net;
    Code code;
    const char* want;
  };
  const Json pod = {{"name", "n"}, {"pod", Json::object()}};
  auto multus = [](Json m) { return Json{{"name", "n"}, {"multus", std::move(m)}}; };
  const std::vector<Case> cases = {
      {"sriov",
       {{"name", "n"}, {"sriov", Json::object()}},
       multus({{"networkName", "x"}}),
       Code::kUnsupported,
       "interface n: the sriov binding is not supported"},
      {"slirp",
       {{"name", "n"}, {"slirp", Json::object()}},
       pod,
       Code::kUnsupported,
       "interface n: the slirp binding is not supported"},
      {"macvtap binding",
       {{"name", "n"}, {"macvtap", Json::object()}},
       multus({{"networkName", "x"}}),
       Code::kUnsupported,
       "the macvtap binding"},
      {"passt",
       {{"name", "n"}, {"passt", Json::object()}},
       pod,
       Code::kUnsupported,
       "the passt binding"},
      {"binding plugin",
       {{"name", "n"}, {"binding", {{"name", "p"}}}},
       pod,
       Code::kUnsupported,
       "the binding binding"},
      {"multus default",
       {{"name", "n"}, {"bridge", Json::object()}},
       multus({{"networkName", "x"}, {"default", true}}),
       Code::kUnsupported,
       "interface n: multus.default"},
      {"no binding", {{"name", "n"}}, pod, Code::kInvalid, "interface n: no binding method"},
      {"two bindings",
       {{"name", "n"}, {"bridge", Json::object()}, {"masquerade", Json::object()}},
       pod,
       Code::kInvalid,
       "two binding methods"},
      {"masquerade on a host network",
       {{"name", "n"}, {"masquerade", Json::object()}},
       multus({{"networkName", "x"}}),
       Code::kInvalid,
       "masquerade is only implemented with the pod network"},
      {"no network",
       {{"name", "n"}, {"bridge", Json::object()}},
       {{"name", "m"}, {"pod", Json::object()}},
       Code::kInvalid,
       "interface n: no network of that name"},
      {"network without a type",
       {{"name", "n"}, {"bridge", Json::object()}},
       {{"name", "n"}},
       Code::kInvalid,
       "neither pod nor multus"},
      {"empty networkName",
       {{"name", "n"}, {"bridge", Json::object()}},
       multus({{"networkName", ""}}),
       Code::kInvalid,
       "multus.networkName \"\" is not"},
      {"networkName with two slashes",
       {{"name", "n"}, {"bridge", Json::object()}},
       multus({{"networkName", "a/b/c"}}),
       Code::kInvalid,
       "multus.networkName \"a/b/c\""},
      {"networkName not a label",
       {{"name", "n"}, {"bridge", Json::object()}},
       multus({{"networkName", "ns/Lan_1"}}),
       Code::kInvalid,
       "(DNS labels)"},
      {"bad MAC",
       {{"name", "n"}, {"bridge", Json::object()}, {"macAddress", "52:54:00:00:00"}},
       pod,
       Code::kInvalid,
       "interface n: macAddress \"52:54:00:00:00\" is not a MAC address"},
      {"port 0",
       {{"name", "n"}, {"masquerade", Json::object()}, {"ports", {{{"port", 0}}}}},
       pod,
       Code::kInvalid,
       "interface n: ports[0]: port must be 1-65535"},
      {"port protocol",
       {{"name", "n"},
        {"masquerade", Json::object()},
        {"ports", {{{"port", 1}, {"protocol", "SCTP"}}}}},
       pod,
       Code::kInvalid,
       "protocol \"SCTP\" is not TCP or UDP"},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.what) {
      auto r = NetworkRequests(RawVmi(Json::array({c.iface}), Json::array({c.net})));
      REQUIRE_FALSE(r);
      CHECK(r.error().code == c.code);
      INFO(r.error().message);
      CHECK(r.error().message.find(c.want) != std::string::npos);
    }
  }
  SECTION("two interfaces of one name") {
    Json iface = {{"name", "n"}, {"bridge", Json::object()}};
    auto r = NetworkRequests(RawVmi(Json::array({iface, iface}), Json::array({pod})));
    REQUIRE_FALSE(r);
    CHECK(r.error().message.find("two interfaces have this name") != std::string::npos);
  }
  SECTION("ports of a host-network interface are not read") {
    Json iface = {{"name", "n"}, {"bridge", Json::object()}, {"ports", {{{"port", 0}}}}};
    auto r = NetworkRequests(
        RawVmi(Json::array({iface}), Json::array({multus({{"networkName", "x"}})})));
    REQUIRE(r);
    CHECK((*r)[0].ports.empty());
  }
  SECTION("an absent interface is left out") {
    Json iface = {{"name", "n"}, {"sriov", Json::object()}, {"state", "absent"}};
    auto r = NetworkRequests(RawVmi(Json::array({iface}), Json::array({pod})));
    REQUIRE(r);
    CHECK(r->empty());
  }
}

TEST_CASE("PlanVmi renders one NIC per interface from the attachments") {
  Fixture f;
  Json vmi =
      Admitted(NetVmi("[{name: default, masquerade: {}},"
                      " {name: lan, bridge: {}, model: e1000e, macAddress: '52:54:00:AB:CD:EF', "
                      "pciAddress: '0000:00:0a.0', bootOrder: 3},"
                      " {name: wan, bridge: {}, model: rtl8139}]",
                      "[{name: default, pod: {}}, {name: lan, multus: {networkName: ns1/lan}},"
                      " {name: wan, multus: {networkName: wan}}]"));
  NicAttachment pod = Tap("default", "edgevirt0", "ev-0b2c6c9e-0", "02:ed:00:00:00:07");
  pod.mtu = 1400;
  NicAttachment lan = Tap("lan", "br0", "ev-0b2c6c9e-1", "");  // the interface's MAC
  NicAttachment wan;
  wan.interface_name = "wan";
  wan.kind = vmm::NicKind::kDirect;
  wan.source = "eth1";
  wan.direct_mode = "vepa";
  wan.tap = "evm-0b2c6c9e-2";
  wan.mac = "52:54:00:00:00:99";
  // Attachments in another order than the interfaces: the NICs follow the interfaces.
  auto plan = PlanVmi(vmi, f.host, f.lookup, {}, {}, std::vector<NicAttachment>{wan, pod, lan});
  if (!plan) FAIL(plan.error().message);
  const auto& nics = plan->domain.nics;
  REQUIRE(nics.size() == 3);
  CHECK(nics[0].name == "default");
  CHECK(nics[0].kind == vmm::NicKind::kBridge);
  CHECK(nics[0].source == "edgevirt0");
  CHECK(nics[0].target_dev == "ev-0b2c6c9e-0");
  CHECK(nics[0].mac == "02:ed:00:00:00:07");
  CHECK(nics[0].model == "virtio");
  CHECK_FALSE(nics[0].pci);
  CHECK(nics[0].boot_order == 0);
  CHECK(nics[0].mtu == 1400u);
  CHECK(nics[1].name == "lan");
  CHECK(nics[1].source == "br0");
  CHECK(nics[1].mac == "52:54:00:ab:cd:ef");
  CHECK(nics[1].model == "e1000e");
  REQUIRE(nics[1].pci);
  CHECK(*nics[1].pci == vmm::PciAddress{0, 0, 0x0a, 0});
  CHECK(nics[1].boot_order == 3u);
  CHECK(nics[2].kind == vmm::NicKind::kDirect);
  CHECK(nics[2].source.empty());  // the macvtap is opened by name; eth1 and vepa are net/'s
  CHECK(nics[2].target_dev == "evm-0b2c6c9e-2");
  CHECK(nics[2].model == "rtl8139");

  // The domain XML has them (PlanVmi already rendered it once).
  auto xml = vmm::DomainXml(plan->domain);
  REQUIRE(xml);
  CHECK(xml->find("<alias name='ua-lan'/>") != std::string::npos);
  CHECK(xml->find("<target dev='evm-0b2c6c9e-2' managed='no'/>") != std::string::npos);

  // Without attachments (std::nullopt, the existing callers) no NIC at all.
  plan = PlanVmi(vmi, f.host, f.lookup);
  REQUIRE(plan);
  CHECK(plan->domain.nics.empty());
}

TEST_CASE("PlanVmi refuses missing, extra and contradicting NIC attachments") {
  Fixture f;
  Json vmi =
      Admitted(NetVmi("[{name: default, bridge: {}}, {name: lan, bridge: {}, "
                      "macAddress: '52:54:00:ab:cd:ef', bootOrder: 1}]",
                      "[{name: default, pod: {}}, {name: lan, multus: {networkName: lan}}]",
                      "      disks: [{name: root, disk: {bus: virtio}, bootOrder: 2}]\n",
                      "  volumes: [{name: root, emptyDisk: {capacity: 1Gi}}]\n"));
  const NicAttachment pod = Tap("default", "edgevirt0", "ev-a", "02:ed:00:00:00:01");
  const NicAttachment lan = Tap("lan", "br0", "ev-b", "");
  auto plan_with = [&](std::vector<NicAttachment> nics) {
    return PlanVmi(vmi, f.host, f.lookup, {}, {}, std::move(nics));
  };
  auto fails = [&](std::vector<NicAttachment> nics, const std::string& want) {
    auto plan = plan_with(std::move(nics));
    REQUIRE_FALSE(plan);
    CHECK(plan.error().code == Code::kInvalid);
    INFO(plan.error().message);
    CHECK(plan.error().message.find(want) != std::string::npos);
    CHECK(plan.error().message.find("VMI ns1/vm1") == 0);
  };
  auto ok = plan_with({pod, lan});
  if (!ok) FAIL(ok.error().message);
  // NIC and disk boot orders share one sequence, in vmm too.
  CHECK(ok->domain.nics[1].boot_order == 1u);
  CHECK(ok->domain.disks[0].boot_order == 2u);

  fails({pod}, "interface lan has no NIC attachment (every interface must be attached)");
  fails({}, "interface default has no NIC attachment");
  fails({pod, lan, Tap("extra", "br0", "ev-c", "02:ed:00:00:00:02")},
        "NIC attachment for extra, which is not an interface");
  fails({pod, lan, lan}, "interface lan has two NIC attachments");
  NicAttachment wrong_mac = lan;
  wrong_mac.mac = "52:54:00:00:00:01";
  fails({pod, wrong_mac},
        "interface lan: the attachment's MAC 52:54:00:00:00:01 is not the interface's macAddress "
        "52:54:00:ab:cd:ef");
  NicAttachment same_mac = lan;
  same_mac.mac = "52:54:00:AB:CD:EF";  // the same address in upper case is fine
  CHECK(plan_with({pod, same_mac}));
  NicAttachment no_mac = pod;
  no_mac.mac.clear();
  fails({no_mac, lan}, "interface default: neither the interface nor its attachment has a MAC");
  NicAttachment bad_bridge = pod;
  bad_bridge.source = "no/such/bridge";
  fails({bad_bridge, lan}, "nic \"default\" source: \"no/such/bridge\" is not a valid bridge name");
  NicAttachment vnet = pod;
  vnet.tap = "vnet0";
  fails({vnet, lan}, "starts with \"vnet\"");
  NicAttachment macvtap = pod;
  macvtap.kind = vmm::NicKind::kDirect;
  macvtap.source = "eth1";
  macvtap.tap.clear();
  fails({macvtap, lan}, "needs the name of its existing macvtap device");
}

TEST_CASE("PlanVmi: a NIC boot order that a disk has is refused") {
  Fixture f;
  Json vmi =
      Admitted(NetVmi("[{name: default, bridge: {}, bootOrder: 1}]", "[{name: default, pod: {}}]"));
  // Admission checks disk and interface boot orders together; a stored object written around
  // it must still not reach libvirt.
  vmi["spec"]["domain"]["devices"]["disks"] =
      Json::array({{{"name", "root"}, {"disk", {{"bus", "virtio"}}}, {"bootOrder", 1}}});
  vmi["spec"]["volumes"] = Json::array({{{"name", "root"}, {"emptyDisk", {{"capacity", "1Gi"}}}}});
  auto plan =
      PlanVmi(vmi, f.host, f.lookup, {}, {},
              std::vector<NicAttachment>{Tap("default", "edgevirt0", "", "02:ed:00:00:00:01")});
  REQUIRE_FALSE(plan);
  CHECK(plan.error().message.find(
            "nic \"default\": boot order 1 is already used by disk \"root\"") != std::string::npos);
  // A malformed pciAddress in a stored object: kInvalid naming the interface.
  vmi["spec"]["domain"]["devices"]["disks"] = Json::array();
  vmi["spec"]["volumes"] = Json::array();
  vmi["spec"]["domain"]["devices"]["interfaces"][0]["pciAddress"] = "0000:00:20.0";
  plan = PlanVmi(vmi, f.host, f.lookup, {}, {},
                 std::vector<NicAttachment>{Tap("default", "edgevirt0", "", "02:ed:00:00:00:01")});
  REQUIRE_FALSE(plan);
  CHECK(plan.error().message.find("interface default: pciAddress") != std::string::npos);
}

}  // namespace
}  // namespace edgevirt::daemon
