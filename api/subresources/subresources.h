// api/subresources — the public header of edgevirtd's subresources.kubevirt.io API: the REST
// subresources virtctl v1.0 calls on VirtualMachines (start, stop, restart, migrate) and
// VirtualMachineInstances (pause, unpause, softreboot, reset, guestosinfo, userlist,
// filesystemlist), with KubeVirt v1.0's virt-api semantics (pkg/virt-api/rest/subresource.go):
// request bodies, per-runStrategy rules, status codes and Status messages. See README.md.
//
// VM subresources only write the VM (spec.runStrategy / spec.running, or
// status.stateChangeRequests) and, for a forced stop/restart, the VMI's
// spec.terminationGracePeriodSeconds, through the machinery's registry; the controller acts on
// those writes. VMI subresources act on the running guest through an injected VmiRuntime: this
// library never calls a driver.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "api/http_server.h"
#include "api/machinery/registry.h"
#include "api/resource.h"
#include "api/stream.h"
#include "common/result.h"

namespace edgevirt::api::subresources {

// Host-side actions on a running VMI, implemented by the daemon's controller. Every call gets
// the stored VMI (decoded, full JSON). Errors: kConflict → 409 with the message, kNotFound → 404,
// kUnavailable → 503, other → 500.
class VmiRuntime {
 public:
  virtual ~VmiRuntime() = default;
  virtual Status Pause(const Json& vmi) = 0;
  virtual Status Unpause(const Json& vmi) = 0;
  virtual Status SoftReboot(const Json& vmi) = 0;
  virtual Status Reset(const Json& vmi) = 0;
  // Guest agent queries: kind is "guestosinfo", "userlist" or "filesystemlist"; returns the
  // JSON body KubeVirt returns (VirtualMachineInstanceGuestAgentInfo,
  // VirtualMachineInstanceGuestOSUserList, VirtualMachineInstanceFileSystemList). kConflict
  // "VMI does not have guest agent connected" when none.
  virtual Result<Json> GuestAgent(const Json& vmi, std::string_view kind) = 0;

  enum class StreamKind { kConsole, kVnc, kPortForward };
  // The VMI is running (the api side checked phase Running and, for port-forward, not paused).
  // kUnavailable → 400 (not running/not ready yet), kNotFound → 404, kConflict → 409.
  // `port` and `protocol` ("tcp" or "udp") only for kPortForward (else 0 and "").
  // The default answers kUnsupported (→ 500).
  virtual Result<std::unique_ptr<Stream>> OpenStream(const Json& vmi, StreamKind kind,
                                                     uint16_t port, std::string_view protocol);
  // PNG bytes of the VMI's screen. Errors as OpenStream. The default answers kUnsupported.
  virtual Result<std::string> Screenshot(const Json& vmi);
};

// KubeVirt's ApplyVolumeRequestOnVMISpec: applies one v1.VirtualMachineVolumeRequest
// ({addVolumeOptions} or {removeVolumeOptions}) to a VMI spec or a VM's spec.template.spec:
// adds the volume and its disk, each only if absent, or removes both. Idempotent.
void ApplyVolumeRequest(Json& spec, const Json& request);

// True for a volume KubeVirt hot-plugs (persistentVolumeClaim or dataVolume with
// hotpluggable: true).
bool IsHotplugVolume(const Json& volume);

class Subresources {
 public:
  // registry/runtime must outlive it. runtime may be null (then host actions answer 503). The
  // registry must serve kubevirt.io/v1 (api::kubevirt::KubevirtV1); without it every request
  // it answers gets 503.
  Subresources(machinery::Registry& registry, VmiRuntime* runtime);

  // Answers /apis/subresources.kubevirt.io/{v1,v1alpha3}/namespaces/{ns}/virtualmachines/{name}/
  // {start,stop,restart,migrate,addvolume,removevolume} (PUT), .../virtualmachineinstances/
  // {name}/{addvolume,removevolume} (PUT) and .../virtualmachineinstances/{name}/{pause,unpause,
  // softreboot,reset} (PUT) and {guestosinfo,userlist,filesystemlist} (GET); another method
  // gets 405. Success: 202 with an empty body for the VM subresources and add/removevolume,
  // 200 with an empty body for pause/unpause/softreboot/reset, 200 with the guest agent's JSON
  // for the queries. Errors are metav1.Status bodies.
  //
  // Streams (GET, WebSocket upgrade, subprotocol plain.kubevirt.io): .../virtualmachineinstances/
  // {name}/console and /vnc, .../{virtualmachines,virtualmachineinstances}/{name}/portforward/
  // {port}[/{tcp,udp}] (a VM's VMI of the same name); and the plain GET .../
  // virtualmachineinstances/{name}/vnc/screenshot (image/png, ?moveCursor ignored). Before the
  // upgrade, as KubeVirt: 404 when the VMI (VM) is missing, 400 "Unable to connect to VM because
  // phase is X instead of Running", 409 "VMI is paused" (port-forward only), 400 for a bad port
  // (1-65535) or protocol, 400 for a request that is not an upgrade; then
  // VmiRuntime::OpenStream, its errors mapped (kUnavailable 400, kNotFound 404, kConflict 409,
  // else 500). Port-forward sockets get a 60 s read deadline (the client answers the server's
  // 1 s pings).
  //
  // nullopt for every other path.
  //
  // Thread-safe. Blocks on store commits and on VmiRuntime calls: the daemon calls it from a
  // deferred (blocking-thread) handler, as it does for machinery writes.
  std::optional<HttpResponse> Serve(const HttpRequest& request);

 private:
  struct Target;
  HttpResponse Start(const Target& t, const HttpRequest& request);
  HttpResponse Stop(const Target& t, const HttpRequest& request);
  HttpResponse Restart(const Target& t, const HttpRequest& request);
  HttpResponse Migrate(const Target& t, const HttpRequest& request);
  HttpResponse VmiAction(const Target& t, const HttpRequest& request);
  HttpResponse GuestAgent(const Target& t);
  HttpResponse Volume(const Target& t, bool on_vmi, const HttpRequest& request);
  HttpResponse Streaming(const Target& t, const std::string& resource,
                         const std::vector<std::string>& extra, const HttpRequest& request);

  machinery::Registry& registry_;
  VmiRuntime* runtime_;
  const ResourceType* vms_;
  const ResourceType* vmis_;
};

}  // namespace edgevirt::api::subresources
