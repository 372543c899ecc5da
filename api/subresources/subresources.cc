#include "api/subresources/subresources.h"

#include <chrono>
#include <string>
#include <vector>

#include "api/machinery/errors.h"

namespace edgevirt::api::subresources {

using machinery::ApiError;
using machinery::Outcome;

namespace {

// The names and texts of kubevirt.io/kubevirt v1.0 pkg/virt-api/rest/subresource.go.
constexpr char kGroup[] = "kubevirt.io";
constexpr char kVm[] = "virtualmachine";  // v1.Resource("virtualmachine"): the singular
constexpr char kVmi[] = "virtualmachineinstance";
constexpr char kVmNotRunning[] = "VM is not running";
constexpr char kVmiNotRunning[] = "VMI is not running";
constexpr char kVmiGuestAgentErr[] = "VMI does not have guest agent connected";
constexpr char kJsonPatchTestErr[] = "jsonpatch test operation does not apply";
constexpr char kUnmarshalErr[] = "Can not unmarshal Request body to struct, error: ";
// The field manager of virt-api's writes (its User-Agent prefix on a real cluster).
constexpr char kFieldManager[] = "virt-api";

constexpr char kHalted[] = "Halted";
constexpr char kAlways[] = "Always";
constexpr char kManual[] = "Manual";
constexpr char kRerunOnFailure[] = "RerunOnFailure";
constexpr char kOnce[] = "Once";

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

HttpResponse Empty(int status) {
  HttpResponse r;
  r.status = status;
  return r;
}

const Json* Find(const Json& o, std::initializer_list<const char*> path) {
  const Json* v = &o;
  for (const char* k : path) {
    if (!v->is_object()) return nullptr;
    auto it = v->find(k);
    if (it == v->end() || it->is_null()) return nullptr;
    v = &*it;
  }
  return v;
}

std::string Str(const Json& o, std::initializer_list<const char*> path) {
  const Json* v = Find(o, path);
  return v != nullptr && v->is_string() ? v->get<std::string>() : "";
}

std::string Phase(const Json& vmi) { return Str(vmi, {"status", "phase"}); }
bool IsFinal(const Json& vmi) {
  const std::string p = Phase(vmi);
  return p == "Succeeded" || p == "Failed";
}

// KubeVirt's condition managers test presence (virt-handler removes a condition rather than
// setting it False); a condition written with status "False" is treated as absent too.
const Json* Condition(const Json& object, std::string_view type) {
  const Json* conds = Find(object, {"status", "conditions"});
  if (conds == nullptr || !conds->is_array()) return nullptr;
  for (const auto& c : *conds) {
    if (c.is_object() && c.value("type", "") == type) return &c;
  }
  return nullptr;
}
bool HasCondition(const Json& object, std::string_view type) {
  const Json* c = Condition(object, type);
  return c != nullptr && c->value("status", "") != "False";
}
bool HasConditionTrue(const Json& object, std::string_view type) {
  const Json* c = Condition(object, type);
  return c != nullptr && c->value("status", "") == "True";
}

// VirtualMachine.RunStrategy() of KubeVirt v1.0.
Result<std::string> RunStrategy(const Json& vm) {
  const Json* running = Find(vm, {"spec", "running"});
  const Json* strategy = Find(vm, {"spec", "runStrategy"});
  if (running != nullptr && strategy != nullptr) {
    return MakeError(Code::kInternal, "running and runstrategy are mutually exclusive");
  }
  if (running != nullptr)
    return std::string(running->is_boolean() && running->get<bool>() ? kAlways : kHalted);
  if (strategy != nullptr && strategy->is_string()) return strategy->get<std::string>();
  return std::string(kHalted);
}

std::string GoType(const Json& j) {
  if (j.is_object()) return "object";
  if (j.is_array()) return "array";
  if (j.is_string()) return "string";
  if (j.is_number()) return "number";
  if (j.is_boolean()) return "bool";
  return "null";
}

// StartOptions, StopOptions, RestartOptions, MigrateOptions, PauseOptions, UnpauseOptions: the
// fields edgevirt reads; others are ignored as Go's decoder ignores unknown fields.
struct Options {
  bool paused = false;               // StartOptions.paused
  std::optional<int64_t> grace;      // StopOptions.gracePeriod, RestartOptions.gracePeriodSeconds
  std::vector<std::string> dry_run;  // every kind: dryRun
};

// yaml.NewYAMLOrJSONDecoder(body).Decode(&options): an empty body (io.EOF) and `{}` are the
// defaults; anything else that does not decode is 400 `Can not unmarshal Request body to
// struct, error: ...`.
Outcome<Options> ParseOptions(std::string_view body, std::string_view kind) {
  Options o;
  size_t first = body.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return o;
  Json j = Json::parse(body, nullptr, false);
  if (j.is_discarded()) {
    return machinery::BadRequest(std::string(kUnmarshalErr) +
                                 "error converting YAML to JSON: invalid JSON request body");
  }
  if (j.is_null()) return o;
  if (!j.is_object()) {
    return machinery::BadRequest(std::string(kUnmarshalErr) + "json: cannot unmarshal " +
                                 GoType(j) + " into Go value of type v1." + std::string(kind));
  }
  auto type_error = [&](const char* field, const Json& v, const char* go_type) {
    return machinery::BadRequest(std::string(kUnmarshalErr) + "json: cannot unmarshal " +
                                 GoType(v) + " into Go struct field " + std::string(kind) + "." +
                                 field + " of type " + go_type);
  };
  if (auto it = j.find("dryRun"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return type_error("dryRun", *it, "[]string");
    for (const auto& v : *it) {
      if (!v.is_string()) return type_error("dryRun", v, "string");
      o.dry_run.push_back(v.get<std::string>());
    }
  }
  if (kind == "StartOptions") {
    if (auto it = j.find("paused"); it != j.end() && !it->is_null()) {
      if (!it->is_boolean()) return type_error("paused", *it, "bool");
      o.paused = it->get<bool>();
    }
  }
  const char* grace_field = kind == "StopOptions"      ? "gracePeriod"
                            : kind == "RestartOptions" ? "gracePeriodSeconds"
                                                       : nullptr;
  if (grace_field != nullptr) {
    if (auto it = j.find(grace_field); it != j.end() && !it->is_null()) {
      if (!it->is_number_integer()) return type_error(grace_field, *it, "int64");
      o.grace = it->get<int64_t>();
    }
  }
  return o;
}

// The VM subresources hand dryRun to the apiserver, which accepts only "All".
std::optional<ApiError> CheckDryRun(const Options& o) {
  for (const auto& v : o.dry_run) {
    if (v != "All") {
      return machinery::BadRequest("dryRun: Unsupported value: " + machinery::Quote(v) +
                                   ": supported values: \"All\"");
    }
  }
  return std::nullopt;
}

struct Change {
  std::string action;   // "Start" | "Stop"
  std::string uid;      // Stop: the VMI's uid
  bool paused = false;  // Start: data {paused: "true"}
};

// v1.VirtualMachineStateChangeRequest: {action, data (omitempty), uid (omitempty)}.
Json ChangeJson(const Change& c) {
  Json j = Json::object();
  j["action"] = c.action;
  if (c.paused) j["data"] = {{"paused", "true"}};
  if (!c.uid.empty()) j["uid"] = c.uid;
  return j;
}

ApiError RuntimeError(const Error& e, const std::string& name) {
  switch (e.code) {
    case Code::kConflict:
      return machinery::Conflict(kGroup, kVmi, name, e.message);
    case Code::kNotFound:
      return machinery::NotFound(kGroup, kVmi, name);
    case Code::kUnavailable:
      return machinery::Unavailable(e.message);
    default:
      return machinery::Internal(e.message);
  }
}

// KubeVirt answers a failed patch with Conflict when it is a lost race and InternalError
// otherwise.
ApiError PatchError(const ApiError& e) {
  if (e.code == 409) return e;
  return machinery::Internal(e.message);
}

}  // namespace

struct Subresources::Target {
  std::string ns;
  std::string name;
  std::string sub;
};

Subresources::Subresources(machinery::Registry& registry, VmiRuntime* runtime)
    : registry_(registry),
      runtime_(runtime),
      vms_(registry.ByKind(kGroup, "VirtualMachine")),
      vmis_(registry.ByKind(kGroup, "VirtualMachineInstance")) {}

std::optional<HttpResponse> Subresources::Serve(const HttpRequest& request) {
  static constexpr std::string_view kPrefix = "/apis/subresources.kubevirt.io/";
  std::string_view path = request.path;
  if (path.substr(0, kPrefix.size()) != kPrefix) return std::nullopt;
  path.remove_prefix(kPrefix.size());
  std::vector<std::string> parts;
  while (true) {
    size_t slash = path.find('/');
    parts.emplace_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  // {version}/namespaces/{ns}/{resource}/{name}/{subresource}
  if (parts.size() < 6 || (parts[0] != "v1" && parts[0] != "v1alpha3") ||
      parts[1] != "namespaces" || parts[2].empty() || parts[4].empty()) {
    return std::nullopt;
  }
  Target t{parts[2], parts[4], parts[5]};
  const std::string& resource = parts[3];
  {
    // console, vnc, vnc/screenshot, portforward/{port}[/{protocol}]
    std::vector<std::string> extra(parts.begin() + 6, parts.end());
    const bool vmi = resource == "virtualmachineinstances";
    const bool stream = (vmi && (t.sub == "console" || t.sub == "vnc") && extra.empty()) ||
                        (vmi && t.sub == "vnc" && extra.size() == 1 && extra[0] == "screenshot") ||
                        ((vmi || resource == "virtualmachines") && t.sub == "portforward" &&
                         (extra.size() == 1 || extra.size() == 2));
    if (stream) {
      if (request.method != "GET") return machinery::MethodNotAllowed().ToResponse();
      if (vms_ == nullptr || vmis_ == nullptr) {
        return machinery::Unavailable("kubevirt.io/v1 is not served").ToResponse();
      }
      return Streaming(t, resource, extra, request);
    }
    if (parts.size() != 6) return std::nullopt;
  }
  enum class Kind { kVmPut, kVmiPut, kVmiGet, kVolume } kind;
  if ((resource == "virtualmachines" || resource == "virtualmachineinstances") &&
      (t.sub == "addvolume" || t.sub == "removevolume")) {
    kind = Kind::kVolume;
  } else if (resource == "virtualmachines" &&
             (t.sub == "start" || t.sub == "stop" || t.sub == "restart" || t.sub == "migrate")) {
    kind = Kind::kVmPut;
  } else if (resource == "virtualmachineinstances" && (t.sub == "pause" || t.sub == "unpause" ||
                                                       t.sub == "softreboot" || t.sub == "reset")) {
    kind = Kind::kVmiPut;
  } else if (resource == "virtualmachineinstances" &&
             (t.sub == "guestosinfo" || t.sub == "userlist" || t.sub == "filesystemlist")) {
    kind = Kind::kVmiGet;
  } else {
    return std::nullopt;
  }
  if (request.method != (kind == Kind::kVmiGet ? "GET" : "PUT")) {
    return machinery::MethodNotAllowed().ToResponse();
  }
  if (vms_ == nullptr || vmis_ == nullptr) {
    return machinery::Unavailable("kubevirt.io/v1 is not served").ToResponse();
  }
  if (kind == Kind::kVolume) return Volume(t, resource == "virtualmachineinstances", request);
  if (kind == Kind::kVmiGet) return GuestAgent(t);
  if (kind == Kind::kVmiPut) return VmiAction(t, request);
  if (t.sub == "start") return Start(t, request);
  if (t.sub == "stop") return Stop(t, request);
  if (t.sub == "restart") return Restart(t, request);
  return Migrate(t, request);
}

namespace {

// Reads, writes and error texts shared by the VM handlers.
class VmOps {
 public:
  VmOps(machinery::Registry& registry, const ResourceType& vms, const ResourceType& vmis,
        const std::string& ns, const std::string& name)
      : registry_(registry), vms_(vms), vmis_(vmis), ns_(ns), name_(name) {}

  // fetchVirtualMachine: 404 `virtualmachine.kubevirt.io "x" not found`.
  Outcome<Json> Vm() {
    auto vm = registry_.GetObject(vms_, ns_, name_);
    if (vm) return std::move(*vm);
    if (vm.error().code == 404) return machinery::NotFound(kGroup, kVm, name_);
    return machinery::Internal("unable to retrieve vm [" + name_ + "]: " + vm.error().message);
  }
  // The VMI of the same name; nullopt when there is none.
  Outcome<std::optional<Json>> Vmi() {
    auto vmi = registry_.GetObject(vmis_, ns_, name_);
    if (vmi) return std::optional<Json>(std::move(*vmi));
    if (vmi.error().code == 404) return std::optional<Json>();
    return machinery::Internal(vmi.error().message);
  }

  ApiError Conflict(std::string_view detail) const {
    return machinery::Conflict(kGroup, kVm, name_, detail);
  }

  // getChangeRequestJson + PatchStatus: replaces status.stateChangeRequests with `changes`,
  // provided they are still what `vm` showed (the JSON patch `test`); an empty status gets
  // them as its only member; status.startFailure is dropped. A pending request refuses a new
  // one, except a single Stop, which replaces it.
  std::optional<ApiError> PutStateChanges(const Json& vm, const std::vector<Change>& changes,
                                          bool dry_run) {
    const Json* status = Find(vm, {"status"});
    const bool empty_status = status == nullptr || !status->is_object() || status->empty();
    Json old_requests = nullptr;
    if (!empty_status) {
      if (const Json* r = Find(*status, {"stateChangeRequests"})) old_requests = *r;
      const bool pending = old_requests.is_array() && !old_requests.empty();
      const bool single_stop = changes.size() == 1 && changes[0].action == "Stop";
      if (pending && !single_stop) {
        return machinery::Internal("unable to complete request: stop/start already underway");
      }
    }
    Json requests = Json::array();
    for (const auto& c : changes) requests.push_back(ChangeJson(c));
    const bool drop_start_failure = status != nullptr && Find(*status, {"startFailure"});
    bool test_failed = false;
    auto mutate = [&](Json& current) -> Status {
      Json& st = current["status"];
      if (!st.is_object()) st = Json::object();
      if (!empty_status) {
        Json now = nullptr;
        if (const Json* r = Find(st, {"stateChangeRequests"})) now = *r;
        if (now != old_requests) {
          test_failed = true;
          return MakeError(Code::kConflict, kJsonPatchTestErr);
        }
      }
      st["stateChangeRequests"] = requests;
      if (drop_start_failure) st.erase("startFailure");
      return Ok();
    };
    machinery::WriteOptions options;
    options.dry_run = dry_run;
    options.field_manager = kFieldManager;
    auto r = registry_.Mutate(vms_, ns_, name_, /*status=*/true, mutate, options);
    if (test_failed) return Conflict(kJsonPatchTestErr);
    if (!r) return PatchError(r.error());
    return std::nullopt;
  }

  // getRunningJson as a merge patch of the main resource (so admission runs and the spec change
  // bumps metadata.generation); spec.running when the VM uses it. Unconditional, as KubeVirt
  // sends it: the controller writes the VM's status all the time (printableStatus, conditions),
  // and a resourceVersion precondition turned such a write between the read and the patch into
  // a 409 that virtctl does not retry (seen as a flake of `virtctl start` right after a stop).
  std::optional<ApiError> PatchRunning(const Json& vm, bool running, bool dry_run) {
    Json patch = Json::object();
    if (Find(vm, {"spec", "runStrategy"}) != nullptr) {
      patch["spec"]["runStrategy"] = running ? kAlways : kHalted;
    } else {
      patch["spec"]["running"] = running;
    }
    machinery::WriteOptions options;
    options.dry_run = dry_run;
    options.field_manager = kFieldManager;
    auto r = registry_.Patch(vms_, ns_, name_, machinery::PatchType::kMerge, patch,
                             /*status=*/false, /*force=*/false, options);
    if (!r) return PatchError(r.error());
    return std::nullopt;
  }

  // The VMI's spec.terminationGracePeriodSeconds. KubeVirt's VMI update webhook lets only its
  // own service accounts change the spec; here admission is skipped for the same reason.
  std::optional<ApiError> SetVmiGrace(int64_t grace, bool dry_run) {
    machinery::WriteOptions options;
    options.admit = false;
    options.dry_run = dry_run;
    options.field_manager = kFieldManager;
    auto r = registry_.Mutate(
        vmis_, ns_, name_, /*status=*/false,
        [&](Json& vmi) -> Status {
          vmi["spec"]["terminationGracePeriodSeconds"] = grace;
          return Ok();
        },
        options);
    if (!r && r.error().code != 404) return machinery::Internal(r.error().message);
    return std::nullopt;
  }

 private:
  machinery::Registry& registry_;
  const ResourceType& vms_;
  const ResourceType& vmis_;
  const std::string& ns_;
  const std::string& name_;
};

bool DryRunAll(const Options& o) { return !o.dry_run.empty(); }

}  // namespace

HttpResponse Subresources::Start(const Target& t, const HttpRequest& request) {
  VmOps ops(registry_, *vms_, *vmis_, t.ns, t.name);
  auto vm = ops.Vm();
  if (!vm) return vm.error().ToResponse();
  auto vmi = ops.Vmi();
  if (!vmi) return vmi.error().ToResponse();
  const Json* instance = vmi->has_value() ? &**vmi : nullptr;
  if (instance != nullptr) {
    const std::string phase = Phase(*instance);
    if (!IsFinal(*instance) && phase != "Unknown" && !phase.empty()) {
      return ops.Conflict("VM is already running").ToResponse();
    }
  }
  auto opts = ParseOptions(request.body, "StartOptions");
  if (!opts) return opts.error().ToResponse();
  if (auto e = CheckDryRun(*opts)) return e->ToResponse();
  const bool dry_run = DryRunAll(*opts);
  auto strategy = RunStrategy(*vm);
  if (!strategy) return machinery::Internal(strategy.error().message).ToResponse();

  std::optional<ApiError> err;
  const std::string& rs = *strategy;
  if (rs == kHalted) {
    // A paused start is a request for the controller (which then sets runStrategy itself).
    // KubeVirt v1.0 compares the template's startStrategy by pointer, so the request is sent
    // whenever paused is asked for.
    if (opts->paused) {
      err = ops.PutStateChanges(*vm, {{"Start", "", true}}, dry_run);
    } else {
      err = ops.PatchRunning(*vm, true, dry_run);
    }
  } else if (rs == kRerunOnFailure || rs == kManual) {
    const std::string phase = instance ? Phase(*instance) : "";
    bool needs_restart = false;
    if ((rs == kRerunOnFailure && instance && phase == "Succeeded") ||
        (rs == kManual && instance && IsFinal(*instance))) {
      needs_restart = true;
    } else if (rs == kRerunOnFailure && instance && phase == "Failed") {
      return ops.Conflict("RerunOnFailure does not support starting VM from failed state")
          .ToResponse();
    }
    std::vector<Change> changes;
    if (needs_restart) {
      changes.push_back({"Stop", Str(*instance, {"metadata", "uid"}), false});
    }
    changes.push_back({"Start", "", opts->paused});
    err = ops.PutStateChanges(*vm, changes, dry_run);
  } else if (rs == kAlways || rs == kOnce) {
    return ops.Conflict(rs + " does not support manual start requests").ToResponse();
  }
  if (err) return err->ToResponse();
  return Empty(202);
}

HttpResponse Subresources::Stop(const Target& t, const HttpRequest& request) {
  VmOps ops(registry_, *vms_, *vmis_, t.ns, t.name);
  auto opts = ParseOptions(request.body, "StopOptions");
  if (!opts) return opts.error().ToResponse();
  if (auto e = CheckDryRun(*opts)) return e->ToResponse();
  const bool dry_run = DryRunAll(*opts);
  auto vm = ops.Vm();
  if (!vm) return vm.error().ToResponse();
  auto strategy = RunStrategy(*vm);
  if (!strategy) return machinery::Internal(strategy.error().message).ToResponse();
  auto vmi = ops.Vmi();
  if (!vmi) return vmi.error().ToResponse();
  const Json* instance = vmi->has_value() ? &**vmi : nullptr;

  // A forced stop first shortens the VMI's grace period, whatever the run strategy.
  int64_t old_grace = 0;
  const Json* vmi_grace =
      instance ? Find(*instance, {"spec", "terminationGracePeriodSeconds"}) : nullptr;
  if (instance && !IsFinal(*instance) && opts->grace) {
    if (vmi_grace != nullptr && vmi_grace->is_number_integer()) {
      old_grace = vmi_grace->get<int64_t>();
    }
    if (auto e = ops.SetVmiGrace(*opts->grace, dry_run)) return e->ToResponse();
  }

  std::optional<ApiError> err;
  const std::string& rs = *strategy;
  if (rs == kHalted) {
    if (!instance || IsFinal(*instance)) return ops.Conflict(kVmNotRunning).ToResponse();
    if (!opts->grace || (vmi_grace != nullptr && *opts->grace >= old_grace)) {
      return ops.Conflict("Halted only supports manual stop requests with a shorter graceperiod")
          .ToResponse();
    }
    err = ops.PutStateChanges(*vm, {{"Stop", Str(*instance, {"metadata", "uid"}), false}}, dry_run);
  } else if (rs == kManual) {
    if (!instance || IsFinal(*instance)) return ops.Conflict(kVmNotRunning).ToResponse();
    err = ops.PutStateChanges(*vm, {{"Stop", Str(*instance, {"metadata", "uid"}), false}}, dry_run);
  } else if (rs == kRerunOnFailure || rs == kAlways || rs == kOnce) {
    err = ops.PatchRunning(*vm, false, dry_run);
  }
  if (err) return err->ToResponse();
  return Empty(202);
}

HttpResponse Subresources::Restart(const Target& t, const HttpRequest& request) {
  VmOps ops(registry_, *vms_, *vmis_, t.ns, t.name);
  auto opts = ParseOptions(request.body, "RestartOptions");
  if (!opts) return opts.error().ToResponse();
  if (opts->grace && *opts->grace > 0) {
    return machinery::BadRequest("For force restart, only gracePeriod=0 is supported for now")
        .ToResponse();
  }
  if (opts->grace && *opts->grace < 0) {
    return machinery::BadRequest("gracePeriod has to be greater or equal to 0").ToResponse();
  }
  if (auto e = CheckDryRun(*opts)) return e->ToResponse();
  const bool dry_run = DryRunAll(*opts);
  auto vm = ops.Vm();
  if (!vm) return vm.error().ToResponse();
  auto strategy = RunStrategy(*vm);
  if (!strategy) return machinery::Internal(strategy.error().message).ToResponse();
  if (*strategy == kHalted || *strategy == kOnce) {
    // "RunStategy" is KubeVirt's spelling.
    return ops.Conflict("RunStategy " + *strategy + " does not support manual restart requests")
        .ToResponse();
  }
  auto vmi = ops.Vmi();
  if (!vmi) return vmi.error().ToResponse();
  if (!vmi->has_value()) {
    return ops.Conflict(std::string(kVmNotRunning) + ": " + kHalted).ToResponse();
  }
  const Json& instance = **vmi;
  if (auto e = ops.PutStateChanges(
          *vm, {{"Stop", Str(instance, {"metadata", "uid"}), false}, {"Start", "", false}},
          dry_run)) {
    return e->ToResponse();
  }
  // KubeVirt deletes the virt-launcher pod with gracePeriodSeconds 0; edgevirt's controller
  // destroys the domain without grace when the VMI says 0.
  if (opts->grace && *opts->grace == 0 && !dry_run) {
    if (auto e = ops.SetVmiGrace(0, false)) return e->ToResponse();
  }
  return Empty(202);
}

HttpResponse Subresources::Migrate(const Target& t, const HttpRequest& request) {
  VmOps ops(registry_, *vms_, *vmis_, t.ns, t.name);
  auto opts = ParseOptions(request.body, "MigrateOptions");
  if (!opts) return opts.error().ToResponse();
  auto vm = ops.Vm();
  if (!vm) return vm.error().ToResponse();
  auto vmi = ops.Vmi();
  if (!vmi) return vmi.error().ToResponse();
  if (!vmi->has_value()) return machinery::NotFound(kGroup, kVmi, t.name).ToResponse();
  if (Phase(**vmi) != "Running") return ops.Conflict(kVmNotRunning).ToResponse();
  if (HasConditionTrue(*vm, "Paused")) return ops.Conflict("VM is paused").ToResponse();
  return ops
      .Conflict(
          "live migration is not possible: edgevirt runs every VMI on a single host, there is "
          "no other node to migrate to")
      .ToResponse();
}

HttpResponse Subresources::VmiAction(const Target& t, const HttpRequest& request) {
  // pause/unpause read PauseOptions/UnpauseOptions (dryRun: validate only); softreboot and
  // reset take no body.
  bool dry_run = false;
  if (t.sub == "pause" || t.sub == "unpause") {
    auto opts = ParseOptions(request.body, t.sub == "pause" ? "PauseOptions" : "UnpauseOptions");
    if (!opts) return opts.error().ToResponse();
    dry_run = !opts->dry_run.empty() && opts->dry_run[0] == "All";
  }
  auto vmi = registry_.GetObject(*vmis_, t.ns, t.name);
  if (!vmi) {
    if (vmi.error().code == 404) return machinery::NotFound(kGroup, kVmi, t.name).ToResponse();
    return machinery::Internal("unable to retrieve vmi [" + t.name + "]: " + vmi.error().message)
        .ToResponse();
  }
  const Json& instance = *vmi;
  auto conflict = [&](std::string_view detail) {
    return machinery::Conflict(kGroup, kVmi, t.name, detail).ToResponse();
  };
  const bool running = Phase(instance) == "Running";
  if (t.sub == "pause") {
    // KubeVirt v1.0 says "VM", not "VMI", here.
    if (!running) return conflict(kVmNotRunning);
    if (Find(instance, {"spec", "livenessProbe"}) != nullptr) {
      return machinery::Forbidden(kGroup, kVmi, t.name,
                                  "Pausing VMIs with LivenessProbe is currently not supported")
          .ToResponse();
    }
    if (HasCondition(instance, "Paused")) return conflict("VMI is already paused");
  } else if (t.sub == "unpause") {
    if (!running || !HasCondition(instance, "Paused")) return conflict("VMI is not paused");
  } else if (t.sub == "softreboot") {
    if (!running) return conflict(kVmNotRunning);
    if (HasConditionTrue(instance, "Paused")) return conflict("VMI is paused");
    const Json* acpi = Find(instance, {"spec", "domain", "features", "acpi", "enabled"});
    if (!HasCondition(instance, "AgentConnected") && acpi != nullptr && acpi->is_boolean() &&
        !acpi->get<bool>()) {
      return conflict("VMI neither have the agent connected nor the ACPI feature enabled");
    }
  } else {  // reset
    if (!running) return conflict(kVmiNotRunning);
  }
  if (dry_run) return Empty(200);
  if (runtime_ == nullptr) {
    return machinery::Unavailable("no VMI runtime: host actions are not available").ToResponse();
  }
  Status s = t.sub == "pause"        ? runtime_->Pause(instance)
             : t.sub == "unpause"    ? runtime_->Unpause(instance)
             : t.sub == "softreboot" ? runtime_->SoftReboot(instance)
                                     : runtime_->Reset(instance);
  if (!s) return RuntimeError(s.error(), t.name).ToResponse();
  return Empty(200);
}

HttpResponse Subresources::GuestAgent(const Target& t) {
  auto vmi = registry_.GetObject(*vmis_, t.ns, t.name);
  if (!vmi) {
    if (vmi.error().code == 404) return machinery::NotFound(kGroup, kVmi, t.name).ToResponse();
    return machinery::Internal("unable to retrieve vmi [" + t.name + "]: " + vmi.error().message)
        .ToResponse();
  }
  auto conflict = [&](std::string_view detail) {
    return machinery::Conflict(kGroup, kVmi, t.name, detail).ToResponse();
  };
  if (Phase(*vmi) != "Running") return conflict(kVmiNotRunning);
  if (!HasCondition(*vmi, "AgentConnected")) return conflict(kVmiGuestAgentErr);
  if (runtime_ == nullptr) {
    return machinery::Unavailable("no VMI runtime: host actions are not available").ToResponse();
  }
  auto info = runtime_->GuestAgent(*vmi, t.sub);
  if (!info) return RuntimeError(info.error(), t.name).ToResponse();
  return HttpResponse::Json(200, Dump(*info));
}

// ---------------------------------------------------------------------------------------------
// addvolume / removevolume (KubeVirt v1.0 pkg/virt-api/rest/subresource.go
// addVolumeRequestHandler, removeVolumeRequestHandler, vmVolumePatchStatus, vmiVolumePatch).

namespace {

const Json* FindByName(const Json* list, const std::string& name) {
  if (list == nullptr || !list->is_array()) return nullptr;
  for (const auto& v : *list) {
    if (v.is_object() && v.value("name", "") == name) return &v;
  }
  return nullptr;
}

// The AddVolumeOptions / RemoveVolumeOptions body as a v1.VirtualMachineVolumeRequest, with
// KubeVirt's checks and texts, then what edgevirt can hot-plug: a persistentVolumeClaim on a
// disk (or lun) of bus scsi or virtio.
Outcome<Json> ParseVolumeRequest(std::string_view body, bool add) {
  const char* kind = add ? "AddVolumeOptions" : "RemoveVolumeOptions";
  Json j = Json::object();
  if (body.find_first_not_of(" \t\r\n") != std::string_view::npos) {
    j = Json::parse(body, nullptr, false);
    if (j.is_discarded()) {
      return machinery::BadRequest(std::string(kUnmarshalErr) +
                                   "error converting YAML to JSON: invalid JSON request body");
    }
    if (j.is_null()) j = Json::object();
    if (!j.is_object()) {
      return machinery::BadRequest(std::string(kUnmarshalErr) + "json: cannot unmarshal " +
                                   GoType(j) + " into Go value of type v1." + kind);
    }
  }
  const Json* name = Find(j, {"name"});
  if (name != nullptr && !name->is_string()) {
    return machinery::BadRequest(std::string(kUnmarshalErr) + "json: cannot unmarshal " +
                                 GoType(*name) + " into Go struct field " + kind +
                                 ".name of type string");
  }
  const std::string volume = Str(j, {"name"});
  if (volume.empty()) return machinery::BadRequest(std::string(kind) + " requires name to be set");
  if (!add) return Json{{"removeVolumeOptions", j}};
  Json* disk = j.contains("disk") && j["disk"].is_object() ? &j["disk"] : nullptr;
  Json* source =
      j.contains("volumeSource") && j["volumeSource"].is_object() ? &j["volumeSource"] : nullptr;
  if (disk == nullptr) return machinery::BadRequest("AddVolumeOptions requires disk to not be nil");
  if (source == nullptr) {
    return machinery::BadRequest("AddVolumeOptions requires VolumeSource to not be nil");
  }
  (*disk)["name"] = volume;
  std::vector<StatusCause> causes;
  auto invalid = [&](const std::string& field, const std::string& message) {
    causes.push_back({"FieldValueInvalid", field + ": " + message, field});
  };
  if (source->contains("dataVolume")) {
    invalid("volumeSource.dataVolume",
            "dataVolume needs CDI, which edgevirt does not serve; use a persistentVolumeClaim");
  } else if (!source->contains("persistentVolumeClaim") ||
             !(*source)["persistentVolumeClaim"].is_object()) {
    invalid("volumeSource", "a persistentVolumeClaim is required");
  } else {
    Json& pvc = (*source)["persistentVolumeClaim"];
    if (!pvc.contains("claimName") || !pvc["claimName"].is_string() ||
        pvc["claimName"].get<std::string>().empty()) {
      causes.push_back({"FieldValueRequired",
                        "volumeSource.persistentVolumeClaim.claimName: Required value",
                        "volumeSource.persistentVolumeClaim.claimName"});
    }
    pvc["hotpluggable"] = true;
  }
  if (disk->contains("cdrom")) {
    invalid("disk.cdrom", "hot-plugged CD-ROMs are not supported");
  } else {
    const char* target = disk->contains("lun") ? "lun" : "disk";
    Json& t = (*disk)[target];
    if (!t.is_object()) t = Json::object();
    const std::string bus = t.value("bus", "scsi");
    if (bus != "scsi" && bus != "virtio") {
      invalid(std::string("disk.") + target + ".bus",
              "hotplugged Disk " + volume + " does not use a scsi or virtio bus");
    }
    if (!t.contains("bus")) t["bus"] = "scsi";
  }
  if (disk->contains("bootOrder")) invalid("disk.bootOrder", "a hot-plugged disk cannot boot");
  if (!causes.empty()) return machinery::InvalidOptions(kind, std::move(causes));
  return Json{{"addVolumeOptions", j}};
}

}  // namespace

// KubeVirt's ApplyVolumeRequestOnVMISpec: adds the volume and its disk (each only if absent) or
// removes both, on a VMI spec or a VM's spec.template.spec.
void ApplyVolumeRequest(Json& spec, const Json& request) {
  if (!spec.is_object()) spec = Json::object();
  Json& volumes = spec["volumes"];
  if (!volumes.is_array()) volumes = Json::array();
  Json& devices = spec["domain"]["devices"];
  if (!devices.is_object()) devices = Json::object();
  Json& disks = devices["disks"];
  if (!disks.is_array()) disks = Json::array();
  if (const Json* add = Find(request, {"addVolumeOptions"})) {
    const std::string name = add->value("name", "");
    if (FindByName(&volumes, name) == nullptr) {
      Json volume = {{"name", name}};
      if (const Json* src = Find(*add, {"volumeSource"}); src && src->is_object()) {
        for (const auto& [k, v] : src->items()) volume[k] = v;
      }
      volumes.push_back(std::move(volume));
    }
    if (FindByName(&disks, name) == nullptr) {
      Json disk = add->contains("disk") ? (*add)["disk"] : Json::object();
      disk["name"] = name;
      disks.push_back(std::move(disk));
    }
  } else if (const Json* rm = Find(request, {"removeVolumeOptions"})) {
    const std::string name = rm->value("name", "");
    auto erase = [&](Json& list) {
      Json kept = Json::array();
      for (auto& v : list) {
        if (!(v.is_object() && v.value("name", "") == name)) kept.push_back(std::move(v));
      }
      list = std::move(kept);
    };
    erase(volumes);
    erase(disks);
  }
}

HttpResponse Subresources::Volume(const Target& t, bool on_vmi, const HttpRequest& request) {
  const bool add = t.sub == "addvolume";
  auto parsed = ParseVolumeRequest(request.body, add);
  if (!parsed) return parsed.error().ToResponse();
  const Json& vr = *parsed;
  const Json& opts = add ? vr["addVolumeOptions"] : vr["removeVolumeOptions"];
  const std::string volume = opts.value("name", "");
  bool dry_run = false;
  if (const Json* d = Find(opts, {"dryRun"}); d && d->is_array() && !d->empty()) {
    if (!(*d)[0].is_string() || (*d)[0] != "All") {
      return machinery::BadRequest("dryRun: Unsupported value: " + Dump((*d)[0]) +
                                   ": supported values: \"All\"")
          .ToResponse();
    }
    dry_run = true;
  }
  machinery::WriteOptions options;
  options.dry_run = dry_run;
  options.field_manager = kFieldManager;
  options.admit = false;  // the request was validated above; the controller applies it

  if (on_vmi) {
    // vmiVolumePatch: the running VMI's spec gets the volume and disk (or loses them).
    std::optional<ApiError> refused;
    auto mutate = [&](Json& vmi) -> Status {
      if (Phase(vmi) != "Running") {
        refused = machinery::Conflict(kGroup, kVmi, t.name, kVmiNotRunning);
        return MakeError(Code::kConflict, kVmiNotRunning);
      }
      const Json* existing = FindByName(Find(vmi, {"spec", "volumes"}), volume);
      if (add && existing != nullptr) {
        refused =
            machinery::Conflict(kGroup, kVmi, t.name,
                                "Unable to add volume [" + volume + "] because it already exists");
        return MakeError(Code::kConflict, "exists");
      }
      if (!add && existing == nullptr) {
        refused = machinery::Conflict(
            kGroup, kVmi, t.name,
            "Unable to remove volume [" + volume + "] because it does not exist");
        return MakeError(Code::kConflict, "missing");
      }
      if (!add && !IsHotplugVolume(*existing)) {
        refused = machinery::Conflict(
            kGroup, kVmi, t.name,
            "Unable to remove volume [" + volume + "] because it is not hotpluggable");
        return MakeError(Code::kConflict, "not hotpluggable");
      }
      ApplyVolumeRequest(vmi["spec"], vr);
      return Ok();
    };
    auto r = registry_.Mutate(*vmis_, t.ns, t.name, /*status=*/false, mutate, options);
    if (refused) return refused->ToResponse();
    if (!r) {
      if (r.error().code == 404) return machinery::NotFound(kGroup, kVmi, t.name).ToResponse();
      return PatchError(r.error()).ToResponse();
    }
    return Empty(202);
  }

  // vmVolumePatchStatus: the request joins status.volumeRequests; the controller applies it to
  // the VM's template and the running VMI, then drops it.
  std::optional<ApiError> refused;
  auto mutate = [&](Json& vm) -> Status {
    Json& status = vm["status"];
    if (!status.is_object()) status = Json::object();
    Json& requests = status["volumeRequests"];
    if (!requests.is_array()) requests = Json::array();
    Json next = Json::array();
    for (const auto& r : requests) {
      const bool same_add = Str(r, {"addVolumeOptions", "name"}) == volume;
      const bool same_remove = Str(r, {"removeVolumeOptions", "name"}) == volume;
      std::string error;
      if (add && same_add) {
        error = "add volume request for volume [" + volume + "] already exists";
      } else if (add && same_remove) {
        error = "unable to add volume since a remove volume request for volume [" + volume +
                "] already exists and is still being processed";
      } else if (!add && same_remove) {
        error = "a remove volume request for volume [" + volume +
                "] already exists and is still being processed";
      }
      if (!error.empty()) {
        refused = machinery::Conflict(kGroup, kVm, t.name, error);
        return MakeError(Code::kConflict, error);
      }
      if (!add && same_add) continue;  // a pending add of the same volume is withdrawn
      next.push_back(r);
    }
    if (!add) {
      // The VM webhook's check: only a hot-plugged volume of the VM can be removed.
      const Json* tmpl_volumes = Find(vm, {"spec", "template", "spec", "volumes"});
      const Json* v = FindByName(tmpl_volumes, volume);
      bool pending_add = false;
      for (const auto& r : requests) pending_add |= Str(r, {"addVolumeOptions", "name"}) == volume;
      if ((v == nullptr || !IsHotplugVolume(*v)) && !pending_add) {
        const std::string error =
            v == nullptr
                ? "Unable to remove volume [" + volume + "] because it does not exist"
                : "Unable to remove volume [" + volume + "] because it is not hotpluggable";
        refused = machinery::Conflict(kGroup, kVm, t.name, error);
        return MakeError(Code::kConflict, error);
      }
    } else if (FindByName(Find(vm, {"spec", "template", "spec", "volumes"}), volume) != nullptr) {
      const std::string error = "Unable to add volume [" + volume + "] because it already exists";
      refused = machinery::Conflict(kGroup, kVm, t.name, error);
      return MakeError(Code::kConflict, error);
    }
    next.push_back(vr);
    requests = std::move(next);
    return Ok();
  };
  auto r = registry_.Mutate(*vms_, t.ns, t.name, /*status=*/true, mutate, options);
  if (refused) return refused->ToResponse();
  if (!r) {
    if (r.error().code == 404) return machinery::NotFound(kGroup, kVm, t.name).ToResponse();
    return PatchError(r.error()).ToResponse();
  }
  return Empty(202);
}

bool IsHotplugVolume(const Json& volume) {
  for (const char* src : {"persistentVolumeClaim", "dataVolume"}) {
    const Json* h = Find(volume, {src, "hotpluggable"});
    if (h != nullptr && h->is_boolean() && h->get<bool>()) return true;
  }
  return false;
}

// ---------------------------------------------------------------------------------------------
// console, vnc, vnc/screenshot, portforward (KubeVirt v1.0 pkg/virt-api/rest/subresource.go and
// console/vnc/portforward handlers: the VMI must be Running; port-forward refuses a paused VMI).

Result<std::unique_ptr<Stream>> VmiRuntime::OpenStream(const Json&, StreamKind, uint16_t,
                                                       std::string_view) {
  return MakeError(Code::kUnsupported, "streams are not implemented by this runtime");
}

Result<std::string> VmiRuntime::Screenshot(const Json&) {
  return MakeError(Code::kUnsupported, "screenshots are not implemented by this runtime");
}

namespace {

constexpr char kStreamSubprotocol[] = "plain.kubevirt.io";
// virt-api's port-forward: pings every second, the connection is dropped after a minute
// without anything from the client.
constexpr std::chrono::seconds kPortForwardReadTimeout{60};
// The serial console's send queue: a UART delivers tens of KB/s, so the server's default
// (1 MiB, sized for VNC and port-forward) would let a client that falls behind see output up to
// a MiB late (and the effect of its keys, Ctrl-C, that late) while the daemon holds it. 64 KiB
// is four console reads; beyond it the guest is held back (back-pressure).
constexpr size_t kConsoleSendQueueBytes = 64 * 1024;

ApiError StreamError(const Error& e, const std::string& name) {
  switch (e.code) {
    case Code::kUnavailable:
      return machinery::BadRequest(e.message);
    case Code::kNotFound:
      return machinery::NotFound(kGroup, kVmi, name);
    case Code::kConflict:
      return machinery::Conflict(kGroup, kVmi, name, e.message);
    default:
      return machinery::Internal(e.message);
  }
}

// "22" → 22; nullopt for anything but a decimal 1-65535.
std::optional<uint16_t> ParsePort(const std::string& s) {
  if (s.empty() || s.size() > 5) return std::nullopt;
  uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v < 1 || v > 65535) return std::nullopt;
  return static_cast<uint16_t>(v);
}

}  // namespace

HttpResponse Subresources::Streaming(const Target& t, const std::string& resource,
                                     const std::vector<std::string>& extra,
                                     const HttpRequest& request) {
  const bool port_forward = t.sub == "portforward";
  const bool screenshot = t.sub == "vnc" && !extra.empty();
  uint16_t port = 0;
  std::string protocol;
  if (port_forward) {
    auto p = ParsePort(extra[0]);
    if (!p) {
      return machinery::BadRequest("invalid port \"" + extra[0] + "\": must be 1-65535")
          .ToResponse();
    }
    port = *p;
    protocol = extra.size() == 2 ? extra[1] : "tcp";
    if (protocol != "tcp" && protocol != "udp") {
      return machinery::BadRequest("invalid protocol \"" + protocol + "\": must be tcp or udp")
          .ToResponse();
    }
  }
  if (resource == "virtualmachines") {
    auto vm = registry_.GetObject(*vms_, t.ns, t.name);
    if (!vm) {
      if (vm.error().code == 404) return machinery::NotFound(kGroup, kVm, t.name).ToResponse();
      return machinery::Internal("unable to retrieve vm [" + t.name + "]: " + vm.error().message)
          .ToResponse();
    }
  }
  auto vmi = registry_.GetObject(*vmis_, t.ns, t.name);
  if (!vmi) {
    if (vmi.error().code == 404) return machinery::NotFound(kGroup, kVmi, t.name).ToResponse();
    return machinery::Internal("unable to retrieve vmi [" + t.name + "]: " + vmi.error().message)
        .ToResponse();
  }
  const std::string phase = Phase(*vmi);
  if (phase != "Running") {
    return machinery::BadRequest("Unable to connect to VM because phase is " + phase +
                                 " instead of Running")
        .ToResponse();
  }
  if (port_forward && HasConditionTrue(*vmi, "Paused")) {
    return machinery::Conflict(kGroup, kVmi, t.name, "VMI is paused").ToResponse();
  }
  if (runtime_ == nullptr) {
    return machinery::Unavailable("no VMI runtime: host actions are not available").ToResponse();
  }
  if (screenshot) {
    auto png = runtime_->Screenshot(*vmi);
    if (!png) return StreamError(png.error(), t.name).ToResponse();
    HttpResponse r;
    r.status = 200;
    r.headers.emplace_back("Content-Type", "image/png");
    r.body = std::move(*png);
    return r;
  }
  // Checked before opening: a plain GET must not take the console from a connected client.
  if (!IsWebSocketUpgrade(request)) {
    return machinery::BadRequest("this resource needs a WebSocket upgrade (" +
                                 std::string(kStreamSubprotocol) + ")")
        .ToResponse();
  }
  const auto kind = port_forward     ? VmiRuntime::StreamKind::kPortForward
                    : t.sub == "vnc" ? VmiRuntime::StreamKind::kVnc
                                     : VmiRuntime::StreamKind::kConsole;
  auto stream = runtime_->OpenStream(*vmi, kind, port, protocol);
  if (!stream) return StreamError(stream.error(), t.name).ToResponse();
  if (*stream == nullptr) return machinery::Internal("the runtime opened no stream").ToResponse();
  HttpResponse r;
  r.status = 101;
  r.websocket = std::shared_ptr<Stream>(std::move(*stream));
  r.websocket_options.subprotocol = kStreamSubprotocol;
  if (port_forward) r.websocket_options.read_timeout = kPortForwardReadTimeout;
  if (kind == VmiRuntime::StreamKind::kConsole) {
    r.websocket_options.send_queue_bytes = kConsoleSendQueueBytes;
  }
  return r;
}

}  // namespace edgevirt::api::subresources
