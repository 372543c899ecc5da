#include "api/kubevirt/kubevirt.h"

#include <memory>

#include "api/kubevirt/admit.h"
#include "api/kubevirt/schema.h"

namespace edgevirt::api::kubevirt {
namespace {

// KubeVirt's CRD verbs (pkg/virt-operator/resource/generate/components/crds.go).
const std::vector<std::string> kVerbs = {"delete", "deletecollection", "get",    "list",
                                         "patch",  "create",           "update", "watch"};

Json At(const Json& object, std::initializer_list<const char*> path) {
  const Json* v = &object;
  for (const char* key : path) {
    if (!v->is_object()) return nullptr;
    auto it = v->find(key);
    if (it == v->end()) return nullptr;
    v = &*it;
  }
  return *v;
}

// The jsonpath .status.conditions[?(@.type=='<type>')].status.
Json ConditionStatus(const Json& object, std::string_view type) {
  Json conditions = At(object, {"status", "conditions"});
  if (!conditions.is_array()) return nullptr;
  for (const Json& c : conditions) {
    if (c.is_object() && c.value("type", "") == type && c.contains("status")) return c["status"];
  }
  return nullptr;
}

Json FirstInterfaceIp(const Json& object) {
  Json interfaces = At(object, {"status", "interfaces"});
  if (!interfaces.is_array() || interfaces.empty() || !interfaces[0].is_object()) return nullptr;
  auto it = interfaces[0].find("ipAddress");
  return it == interfaces[0].end() ? Json(nullptr) : *it;
}

// Messages quote request data; a YAML body may carry invalid UTF-8, which must not make the
// Status body unserialisable. Invalid sequences become U+FFFD.
std::string ValidUtf8(const std::string& s) {
  return Json::parse(Json(s).dump(-1, ' ', false, Json::error_handler_t::replace))
      .get<std::string>();
}

AdmitResult Sanitized(AdmitResult r) {
  for (auto& c : r.invalid) {
    c.message = ValidUtf8(c.message);
    c.field = ValidUtf8(c.field);
  }
  for (auto& u : r.unknown_fields) u = ValidUtf8(u);
  for (auto& w : r.warnings) w = ValidUtf8(w);
  return r;
}

}  // namespace

api::ApiGroupVersion KubevirtV1(const KubevirtOptions& options) {
  std::shared_ptr<const SchemaModel> model = SchemaModel::Embedded();
  auto opts = std::make_shared<const AdmitOptions>(options);

  api::ApiGroupVersion gv;
  gv.group = "kubevirt.io";
  gv.version = "v1";
  gv.schemas = model->OpenApiSchemas();

  api::ResourceType vm;
  vm.group = "kubevirt.io";
  vm.version = "v1";
  vm.kind = "VirtualMachine";
  vm.list_kind = "VirtualMachineList";
  vm.plural = "virtualmachines";
  vm.singular = "virtualmachine";
  vm.short_names = {"vm", "vms"};
  vm.categories = {"all"};
  vm.status_subresource = true;
  vm.verbs = kVerbs;
  vm.schema_name = SchemaModel::OpenApiName("v1.VirtualMachine");
  vm.admit = [model, opts](const AdmitRequest& r) {
    return Sanitized(AdmitVirtualMachine(*model, *opts, r));
  };
  vm.columns = {
      {"Status", "string", "",
       "Human-readable state of the virtual machine (.status.printableStatus).", 0},
      {"Ready", "string", "", "Status of the Ready condition: the guest is running and ready.", 0},
  };
  vm.cells = [](const Json& o) {
    return std::vector<Json>{At(o, {"status", "printableStatus"}), ConditionStatus(o, "Ready")};
  };
  // KubeVirt v1.0's CRDs declare no selectable fields: only metadata.name/namespace work.
  vm.field_value = [](const Json&, const std::string&) { return std::optional<std::string>(); };

  api::ResourceType vmi;
  vmi.group = "kubevirt.io";
  vmi.version = "v1";
  vmi.kind = "VirtualMachineInstance";
  vmi.list_kind = "VirtualMachineInstanceList";
  vmi.plural = "virtualmachineinstances";
  vmi.singular = "virtualmachineinstance";
  vmi.short_names = {"vmi", "vmis"};
  vmi.categories = {"all"};
  vmi.status_subresource = false;
  vmi.verbs = kVerbs;
  vmi.schema_name = SchemaModel::OpenApiName("v1.VirtualMachineInstance");
  vmi.admit = [model, opts](const AdmitRequest& r) {
    return Sanitized(AdmitVirtualMachineInstance(*model, *opts, r));
  };
  vmi.columns = {
      {"Phase", "string", "", "Lifecycle phase of the instance (.status.phase).", 0},
      {"IP", "string", "", "IP address of the first network interface.", 0},
      {"NodeName", "string", "", "Host the instance runs on.", 0},
      {"Ready", "string", "", "Status of the Ready condition.", 0},
      {"Live-Migratable", "string", "", "Status of the LiveMigratable condition.", 1},
      {"Paused", "string", "", "Status of the Paused condition.", 1},
  };
  vmi.cells = [](const Json& o) {
    return std::vector<Json>{At(o, {"status", "phase"}),           FirstInterfaceIp(o),
                             At(o, {"status", "nodeName"}),        ConditionStatus(o, "Ready"),
                             ConditionStatus(o, "LiveMigratable"), ConditionStatus(o, "Paused")};
  };
  vmi.field_value = [](const Json&, const std::string&) { return std::optional<std::string>(); };

  gv.resources = {std::move(vm), std::move(vmi)};
  return gv;
}

}  // namespace edgevirt::api::kubevirt
