// core/v1 PersistentVolumeClaims end to end: the real edgevirtd (VMs disabled: only the API and
// the claims controller run), the real kubectl, the real qemu-img and a real loop device as a
// `devices` class. Needs root (losetup).
//
// LVM classes are not covered here: this machine's kernel has no device-mapper, so lvcreate
// cannot work; daemon/claims_test.cc checks the lvcreate/lvremove argv instead.
#include <fcntl.h>
#include <unistd.h>

#include <set>

#include "common/exec.h"
#include "tests/integration/kubectl_test_util.h"
#include "tests/support/loop_device.h"

namespace edgevirt::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

const std::string kClaims = "/api/v1/namespaces/default/persistentvolumeclaims";

// The first `n` bytes of a block device.
std::string Head(const std::string& device, size_t n) {
  std::string buf(n, '\0');
  UniqueFd fd(::open(device.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(fd.valid());
  REQUIRE(::pread(fd.get(), buf.data(), n, 0) == static_cast<ssize_t>(n));
  return buf;
}

void WriteHead(const std::string& device, const std::string& data) {
  UniqueFd fd(::open(device.c_str(), O_WRONLY | O_CLOEXEC));
  REQUIRE(fd.valid());
  REQUIRE(::pwrite(fd.get(), data.data(), data.size(), 0) == static_cast<ssize_t>(data.size()));
  REQUIRE(::fsync(fd.get()) == 0);
}

std::string ClaimYaml(const std::string& name, const std::string& size,
                      const std::string& storage_class = "") {
  return "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: " + name +
         "\nspec:\n  accessModes: [ReadWriteOnce]\n" +
         (storage_class.empty() ? "" : "  storageClassName: " + storage_class + "\n") +
         "  resources:\n    requests:\n      storage: " + size + "\n";
}

// The names in a directory (empty when it does not exist).
std::set<std::string> Listing(const fs::path& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) out.insert(e.path().filename().string());
  return out;
}

struct PvcFixture {
  PvcFixture()
      : tmp("ev-kubectl-pvc"),
        loop((tmp.path() / "disk.img").string(), 64 << 20),
        daemon(tmp.path() / "daemon", "",
               "vms:\n  enabled: false\n"
               "storage:\n  classes:\n"
               "    - name: local\n      default: true\n      type: files\n"
               "    - name: disks\n      type: block\n      devices: [" +
                   loop.path() + "]\n"),
        kubectl(tmp.path() / "kubectl") {
    daemon.Start();
    kubectl.SetServer(daemon.url());
  }
  ~PvcFixture() {
    if (daemon.Running()) daemon.Stop();
  }

  fs::path Volumes() const { return daemon.state_dir() / "volumes" / "default"; }

  KubectlResult Create(const std::string& yaml, const std::string& file) {
    WriteFile(tmp.path() / file, yaml);
    return kubectl.Run({"create", "-f", (tmp.path() / file).string()});
  }
  void WaitBound(const std::string& name) {
    MustRun(kubectl,
            {"wait", "pvc/" + name, "--for=jsonpath={.status.phase}=Bound", "--timeout=60s"}, 90s);
  }
  Json Get(const std::string& name) {
    return ParseJson(MustRun(kubectl, {"get", "pvc", name, "-o", "json"}).out);
  }
  std::string Uid(const std::string& name) { return Get(name)["metadata"]["uid"]; }

  TempDir tmp;
  LoopDevice loop;
  EdgevirtDaemon daemon;
  Kubectl kubectl;
};

const char kVm[] = R"(apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: vm1
spec:
  runStrategy: Halted
  template:
    spec:
      domain:
        resources:
          requests:
            memory: 128Mi
        devices:
          disks:
          - name: data
            disk:
              bus: virtio
      volumes:
      - name: data
        persistentVolumeClaim:
          claimName: data
)";

TEST_CASE("kubectl: PersistentVolumeClaims are provisioned, bound, protected and released") {
  PvcFixture f;

  // --- files class (the default): the example manifest, as a user applies it ---
  MustRun(f.kubectl,
          {"create", "-f", (fs::path(EDGEVIRT_SOURCE_DIR) / "examples/pvc.yaml").string()});
  f.WaitBound("data");
  const std::string uid = f.Uid("data");
  Json data = f.Get("data");
  CHECK(data["spec"]["volumeName"] == "pvc-" + uid);
  CHECK(data["spec"]["storageClassName"] == "local");
  CHECK(data["spec"]["volumeMode"] == "Filesystem");
  CHECK(data["status"]["capacity"]["storage"] == "1Gi");
  CHECK(data["status"]["accessModes"] == Json::array({"ReadWriteOnce"}));

  auto table = MustRun(f.kubectl, {"get", "pvc"});
  INFO(table.out);
  auto lines = Lines(table.out);
  REQUIRE(lines.size() == 2);
  CHECK(lines[0] == std::vector<std::string>{"NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS",
                                             "MODES", "STORAGECLASS", "VOLUMEATTRIBUTESCLASS",
                                             "AGE"});
  REQUIRE(lines[1].size() == 8);
  CHECK(lines[1][0] == "data");
  CHECK(lines[1][1] == "Bound");
  CHECK(lines[1][2] == "pvc-" + uid);
  CHECK(lines[1][3] == "1Gi");
  CHECK(lines[1][4] == "RWO");
  CHECK(lines[1][5] == "local");
  CHECK(lines[1][6] == "<unset>");
  auto wide = Lines(MustRun(f.kubectl, {"get", "pvc", "data", "-o", "wide"}).out);
  CHECK(wide[0].back() == "VOLUMEMODE");
  CHECK(wide[1].back() == "Filesystem");
  // The short name and the full resource name.
  CHECK(MustRun(f.kubectl, {"get", "persistentvolumeclaims", "-o", "name"}).out ==
        "persistentvolumeclaim/data\n");

  const fs::path image = f.Volumes() / (uid + ".qcow2");
  REQUIRE(fs::is_regular_file(image));
  auto info = ExecChecked({"qemu-img", "info", "--output=json", image.string()});
  REQUIRE(info.has_value());
  CHECK(ParseJson(info->stdout_text)["virtual-size"] == 1073741824);
  CHECK(ParseJson(info->stdout_text)["format"] == "qcow2");

  // --- devices class: the loop device, once; a second claim waits for it ---
  REQUIRE(f.Create(ClaimYaml("disk", "32Mi", "disks"), "disk.yaml").code == 0);
  f.WaitBound("disk");
  Json disk = f.Get("disk");
  CHECK(disk["status"]["capacity"]["storage"] == "64Mi");
  REQUIRE(f.Create(ClaimYaml("disk2", "16Mi", "disks"), "disk2.yaml").code == 0);
  REQUIRE(WaitUntil(
      [&] {
        auto ev =
            f.kubectl.Run({"get", "events", "--field-selector",
                           "involvedObject.name=disk2,reason=ProvisioningFailed", "-o", "json"});
        return ev.code == 0 && !ParseJson(ev.out)["items"].empty();
      },
      30s));
  auto events = ParseJson(MustRun(f.kubectl, {"get", "events", "--field-selector",
                                              "involvedObject.name=disk2", "-o", "json"})
                              .out);
  const std::string message = events["items"][0]["message"];
  CHECK(message.find("no free device of at least 16777216 bytes") != std::string::npos);
  CHECK(message.find(f.loop.path() + " is used by claim default/disk") != std::string::npos);
  CHECK(f.Get("disk2")["status"]["phase"] == "Pending");
  WriteHead(f.loop.path(), "a filesystem signature");

  // --- invalid claims: 422 with causes ---
  auto bad = f.Create(
      "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata:\n  name: bad\nspec:\n"
      "  accessModes: [Sometimes]\n  resources:\n    requests:\n      storage: 0\n",
      "bad.yaml");
  CHECK(bad.code != 0);
  CHECK_THAT(bad.err, Catch::Contains("The PersistentVolumeClaim \"bad\" is invalid:"));
  CHECK_THAT(bad.err, Catch::Contains("spec.accessModes: Unsupported value: \"Sometimes\""));
  CHECK_THAT(bad.err,
             Catch::Contains("spec.resources[storage]: Invalid value: \"0\": must be greater "
                             "than zero"));
  auto wire = Http(f.daemon.url(), "POST", kClaims,
                   R"({"apiVersion":"v1","kind":"PersistentVolumeClaim","metadata":)"
                   R"({"name":"bad"},"spec":{"resources":{"requests":{"storage":"1Gi"}}}})");
  REQUIRE(wire.ok);
  CHECK(wire.status == 422);
  Json status = ParseJson(wire.body);
  CHECK(status["reason"] == "Invalid");
  CHECK(status["details"]["causes"][0]["field"] == "spec.accessModes");
  CHECK(status["details"]["causes"][0]["reason"] == "FieldValueRequired");
  CHECK(f.kubectl.Run({"get", "pvc", "bad"}).code != 0);
  // Growing a Bound claim is refused, and says why.
  auto grow = f.kubectl.Run({"patch", "pvc", "data", "--type=merge", "-p",
                             R"({"spec":{"resources":{"requests":{"storage":"2Gi"}}}})"});
  CHECK(grow.code != 0);
  CHECK_THAT(grow.err, Catch::Contains("edgevirt cannot expand claims"));

  // --- a claim a VirtualMachine uses cannot be deleted ---
  REQUIRE(f.Create(kVm, "vm.yaml").code == 0);
  auto refused = f.kubectl.Run({"delete", "pvc", "data"});
  CHECK(refused.code != 0);
  CHECK_THAT(refused.err,
             Catch::Contains("Error from server (Conflict): persistentvolumeclaims \"data\" is in "
                             "use by VirtualMachine default/vm1"));
  CHECK(f.Get("data")["status"]["phase"] == "Bound");
  CHECK(fs::exists(image));
  auto refused_wire = Http(f.daemon.url(), "DELETE", kClaims + "/data");
  REQUIRE(refused_wire.ok);
  CHECK(refused_wire.status == 409);
  CHECK(ParseJson(refused_wire.body)["message"] ==
        "persistentvolumeclaims \"data\" is in use by VirtualMachine default/vm1");

  // --- once the VM is gone, deleting releases the file; the device is wiped and freed ---
  MustRun(f.kubectl, {"delete", "vm", "vm1"});
  MustRun(f.kubectl, {"delete", "pvc", "data"});
  CHECK(WaitUntil([&] { return !fs::exists(image); }, 30s));
  CHECK(Listing(f.Volumes()).empty());
  MustRun(f.kubectl, {"delete", "pvc", "disk"});
  // The freed device goes to the claim that waited for it, zeroed.
  f.WaitBound("disk2");
  CHECK(Head(f.loop.path(), 64) == std::string(64, '\0'));
  MustRun(f.kubectl, {"delete", "pvc", "disk2"});

  // --- kill -9 right after a create: the restarted daemon binds it, with one file ---
  for (const std::string name : {"crash1", "crash2"}) {
    REQUIRE(f.Create(ClaimYaml(name, "16Mi"), name + ".yaml").code == 0);
  }
  f.daemon.Kill();
  f.daemon.Start();
  f.kubectl.SetServer(f.daemon.url());
  f.WaitBound("crash1");
  f.WaitBound("crash2");
  std::set<std::string> expected;
  for (const std::string name : {"crash1", "crash2"}) expected.insert(f.Uid(name) + ".qcow2");
  CHECK(Listing(f.Volumes()) == expected);
  MustRun(f.kubectl, {"delete", "pvc", "crash1", "crash2"});
  CHECK(WaitUntil([&] { return Listing(f.Volumes()).empty(); }, 30s));
  CHECK(f.daemon.Stop() == 0);
}

}  // namespace
}  // namespace edgevirt::testing
