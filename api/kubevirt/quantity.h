// Kubernetes resource.Quantity for api/kubevirt: the parser lives in common/quantity.h (shared
// with api/machinery and daemon/); this header keeps the api/kubevirt names working.
#pragma once

#include "common/quantity.h"

namespace edgevirt::api::kubevirt {

using ::edgevirt::Quantity;
using ::edgevirt::QuantityInt;

}  // namespace edgevirt::api::kubevirt
