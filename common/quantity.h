// Kubernetes resource.Quantity (k8s.io/apimachinery/pkg/api/resource): parse, exact compare,
// the rounded-up integer views the apiserver and the KubeVirt webhooks use (Value, MilliValue)
// and the canonical string form that Go's Quantity.MarshalJSON writes. Shared by api/kubevirt
// (KubeVirt admission), api/machinery (core/v1 PersistentVolumeClaim) and daemon/ (sizes of
// volumes); it depends on nothing but the standard library.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace edgevirt {

// 128-bit mantissa; __extension__ keeps -Wpedantic quiet about the GCC/Clang builtin type.
__extension__ typedef __int128 QuantityInt;

class Quantity {
 public:
  // How the quantity was written; decides the suffix family of String().
  enum class Format { kDecimalSI, kBinarySI, kDecimalExponent };

  // Parses "<sign><number><suffix>": number is digits with an optional fraction, suffix one of
  // n u m "" k M G T P E | Ki Mi Gi Ti Pi Ei | e<int> E<int>. Precision below 1n is rounded up
  // (away from zero) as Kubernetes does. Returns nullopt for anything else, and for values whose
  // exact form needs more than 38 significant digits (Kubernetes would accept those; edgevirt
  // never needs them).
  static std::optional<Quantity> Parse(std::string_view text);

  // -1, 0, 1: exact comparison of the values, independent of format.
  int Compare(const Quantity& other) const;
  bool IsZero() const { return mantissa_ == 0; }
  bool IsNegative() const { return mantissa_ < 0; }

  // The value rounded up (away from zero) to an integer, saturated to int64; Quantity.Value().
  int64_t Value() const { return ScaledCeil(0); }
  // The value times 1000, rounded up; Quantity.MilliValue().
  int64_t MilliValue() const { return ScaledCeil(3); }

  // Canonical text as Kubernetes serialises it: "1Gi" stays "1Gi", "1.5Gi" becomes "1536Mi",
  // "0.5" becomes "500m", "1000Mi" stays "1000Mi", "1e3" stays "1e3", zero is "0".
  std::string String() const;
  Format format() const { return format_; }

 private:
  int64_t ScaledCeil(int shift) const;

  // value = mantissa_ * 10^exp10_, with mantissa_ free of trailing decimal zeros.
  QuantityInt mantissa_ = 0;
  int32_t exp10_ = 0;
  Format format_ = Format::kDecimalSI;
};

}  // namespace edgevirt
