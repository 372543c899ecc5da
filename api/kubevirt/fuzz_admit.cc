// libFuzzer target: request-body bytes (JSON, or YAML when not starting with '{') admitted as a
// VirtualMachine and as a VirtualMachineInstance, for every operation and fieldValidation mode.
// Checks admit never crashes and that an accepted object is accepted again unchanged (defaulting
// is idempotent). Built and run by run_fuzz.sh (CTest test `kubevirt_fuzz`).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "api/kubevirt/kubevirt.h"
#include "api/kubevirt/yaml_json.h"

namespace {

using edgevirt::api::AdmitRequest;
using edgevirt::api::FieldValidation;
using edgevirt::api::Json;
using edgevirt::api::Operation;

const edgevirt::api::ApiGroupVersion& Gv() {
  static const edgevirt::api::ApiGroupVersion gv = [] {
    edgevirt::api::kubevirt::KubevirtOptions options;
    options.random_uuid = [] { return std::string("5d307ca9-b3ef-428c-8861-06e72d69f223"); };
    options.host_disk_dirs = {"/var/lib/edgevirt/hostdisks"};
    return edgevirt::api::kubevirt::KubevirtV1(options);
  }();
  return gv;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  Json doc;
  if (!text.empty() && text.front() == '{') {
    doc = Json::parse(text, nullptr, false);
    if (doc.is_discarded()) return 0;
  } else {
    auto parsed = edgevirt::api::kubevirt::YamlToJson(text, nullptr);
    if (!parsed) return 0;
    doc = std::move(*parsed);
  }
  for (const auto& resource : Gv().resources) {
    for (FieldValidation fv :
         {FieldValidation::kStrict, FieldValidation::kWarn, FieldValidation::kIgnore}) {
      Json created = doc;
      AdmitRequest create;
      create.op = Operation::kCreate;
      create.field_validation = fv;
      create.object = &created;
      auto result = resource.admit(create);
      resource.cells(created);
      if (!result.invalid.empty()) continue;
      // Updating with the accepted object must be accepted and leave it as it is.
      Json updated = created;
      AdmitRequest update;
      update.op = Operation::kUpdate;
      update.field_validation = fv;
      update.old_object = &created;
      update.object = &updated;
      auto again = resource.admit(update);
      if (!again.invalid.empty() || updated != created) std::abort();
      // Status subresource write with the same body.
      Json status_write = created;
      AdmitRequest status;
      status.op = Operation::kUpdate;
      status.old_object = &created;
      status.object = &status_write;
      status.status_subresource = resource.status_subresource;
      resource.admit(status);
    }
  }
  return 0;
}
