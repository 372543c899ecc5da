#include "common/quantity.h"

#include <algorithm>
#include <limits>

namespace edgevirt {
namespace {

using i128 = QuantityInt;
constexpr i128 kMaxMantissa = (static_cast<i128>(1) << 126);

bool MulOverflows(i128 a, i128 b) {
  if (a == 0 || b == 0) return false;
  i128 abs_a = a < 0 ? -a : a;
  i128 abs_b = b < 0 ? -b : b;
  return abs_a > kMaxMantissa / abs_b;
}

std::string I128ToString(i128 v) {
  if (v == 0) return "0";
  bool negative = v < 0;
  std::string out;
  while (v != 0) {
    int digit = static_cast<int>(v % 10);
    out.push_back(static_cast<char>('0' + (digit < 0 ? -digit : digit)));
    v /= 10;
  }
  if (negative) out.push_back('-');
  std::reverse(out.begin(), out.end());
  return out;
}

int DigitCount(i128 v) {
  if (v < 0) v = -v;
  int n = 1;
  while (v >= 10) {
    v /= 10;
    ++n;
  }
  return n;
}

}  // namespace

std::optional<Quantity> Quantity::Parse(std::string_view text) {
  size_t pos = 0;
  bool negative = false;
  if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
    negative = text[pos] == '-';
    ++pos;
  }
  i128 mantissa = 0;
  int32_t exp10 = 0;
  int digits = 0;
  int significant = 0;
  auto take_digit = [&](char c, bool fraction) -> bool {
    ++digits;
    if (mantissa == 0 && c == '0') {
      if (fraction) --exp10;
      return true;
    }
    if (significant >= 38) {
      // Only trailing zeros can be absorbed once the mantissa is full.
      if (c != '0') return false;
      if (!fraction) ++exp10;
      return true;
    }
    mantissa = mantissa * 10 + (c - '0');
    ++significant;
    if (fraction) --exp10;
    return true;
  };
  while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
    if (!take_digit(text[pos], false)) return std::nullopt;
    ++pos;
  }
  if (pos < text.size() && text[pos] == '.') {
    ++pos;
    while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
      if (!take_digit(text[pos], true)) return std::nullopt;
      ++pos;
    }
  }
  if (digits == 0) return std::nullopt;

  std::string_view suffix = text.substr(pos);
  Format format = Format::kDecimalSI;
  int binary_power = 0;  // multiples of 2^10
  if (suffix.empty()) {
  } else if (suffix.size() == 2 && suffix[1] == 'i') {
    static constexpr std::string_view kBin = "KMGTPE";
    size_t idx = kBin.find(suffix[0]);
    if (idx == std::string_view::npos) return std::nullopt;
    binary_power = static_cast<int>(idx) + 1;
    format = Format::kBinarySI;
  } else if (suffix[0] == 'e' || suffix[0] == 'E') {
    std::string_view exp_text = suffix.substr(1);
    size_t i = 0;
    bool exp_negative = false;
    if (i < exp_text.size() && (exp_text[i] == '+' || exp_text[i] == '-')) {
      exp_negative = exp_text[i] == '-';
      ++i;
    }
    if (i == exp_text.size()) return std::nullopt;
    int64_t e = 0;
    for (; i < exp_text.size(); ++i) {
      if (exp_text[i] < '0' || exp_text[i] > '9') return std::nullopt;
      e = e * 10 + (exp_text[i] - '0');
      if (e > 1000) return std::nullopt;
    }
    exp10 += static_cast<int32_t>(exp_negative ? -e : e);
    format = Format::kDecimalExponent;
  } else if (suffix.size() == 1) {
    switch (suffix[0]) {
      case 'n':
        exp10 -= 9;
        break;
      case 'u':
        exp10 -= 6;
        break;
      case 'm':
        exp10 -= 3;
        break;
      case 'k':
        exp10 += 3;
        break;
      case 'M':
        exp10 += 6;
        break;
      case 'G':
        exp10 += 9;
        break;
      case 'T':
        exp10 += 12;
        break;
      case 'P':
        exp10 += 15;
        break;
      case 'E':
        exp10 += 18;
        break;
      default:
        return std::nullopt;
    }
  } else {
    return std::nullopt;
  }

  for (int i = 0; i < binary_power; ++i) {
    if (MulOverflows(mantissa, 1024)) return std::nullopt;
    mantissa *= 1024;
  }
  if (mantissa == 0) {
    Quantity q;
    q.format_ = format;
    return q;
  }
  // Kubernetes keeps at most nano precision and rounds up.
  if (exp10 < -9) {
    int drop = -9 - exp10;
    i128 divisor = 1;
    for (int i = 0; i < drop; ++i) {
      if (divisor > kMaxMantissa / 10) {
        divisor = 0;
        break;
      }
      divisor *= 10;
    }
    if (divisor == 0) {
      mantissa = 1;
    } else {
      i128 q = mantissa / divisor;
      if (q * divisor != mantissa) ++q;
      mantissa = q;
    }
    exp10 = -9;
  }
  while (mantissa % 10 == 0) {
    mantissa /= 10;
    ++exp10;
  }
  // Bound the magnitude so every later computation stays within 128 bits.
  if (DigitCount(mantissa) + exp10 > 38) return std::nullopt;
  Quantity q;
  q.mantissa_ = negative ? -mantissa : mantissa;
  q.exp10_ = exp10;
  q.format_ = format;
  return q;
}

int Quantity::Compare(const Quantity& other) const {
  int sign_a = mantissa_ > 0 ? 1 : (mantissa_ < 0 ? -1 : 0);
  int sign_b = other.mantissa_ > 0 ? 1 : (other.mantissa_ < 0 ? -1 : 0);
  if (sign_a != sign_b) return sign_a < sign_b ? -1 : 1;
  if (sign_a == 0) return 0;
  // Same sign: compare magnitudes through their decimal digits.
  std::string da = I128ToString(mantissa_ < 0 ? -mantissa_ : mantissa_);
  std::string db = I128ToString(other.mantissa_ < 0 ? -other.mantissa_ : other.mantissa_);
  int order_a = static_cast<int>(da.size()) + exp10_;
  int order_b = static_cast<int>(db.size()) + other.exp10_;
  int magnitude = 0;
  if (order_a != order_b) {
    magnitude = order_a < order_b ? -1 : 1;
  } else {
    size_t len = std::max(da.size(), db.size());
    da.resize(len, '0');
    db.resize(len, '0');
    magnitude = da < db ? -1 : (da > db ? 1 : 0);
  }
  return sign_a > 0 ? magnitude : -magnitude;
}

int64_t Quantity::ScaledCeil(int shift) const {
  int32_t exp = exp10_ + shift;
  i128 m = mantissa_;
  constexpr i128 kMax = std::numeric_limits<int64_t>::max();
  constexpr i128 kMin = std::numeric_limits<int64_t>::min();
  if (exp >= 0) {
    for (int i = 0; i < exp; ++i) {
      if (m > kMax || m < kMin) break;
      m *= 10;
    }
  } else {
    i128 divisor = 1;
    for (int i = 0; i < -exp && divisor <= kMax; ++i) divisor *= 10;
    i128 q = m / divisor;
    if (q * divisor != m) q += (m > 0 ? 1 : -1);
    m = q;
  }
  if (m > kMax) return std::numeric_limits<int64_t>::max();
  if (m < kMin) return std::numeric_limits<int64_t>::min();
  return static_cast<int64_t>(m);
}

std::string Quantity::String() const {
  if (mantissa_ == 0) return "0";
  Format format = format_;
  if (format == Format::kBinarySI) {
    // Fractional and small binary quantities are written in decimal so nothing is rounded.
    if (exp10_ < 0) {
      format = Format::kDecimalSI;
    } else {
      i128 v = mantissa_;
      for (int i = 0; i < exp10_; ++i) v *= 10;
      if (v > -1024 && v < 1024) format = Format::kDecimalSI;
    }
  }
  if (format == Format::kBinarySI) {
    i128 v = mantissa_;
    for (int i = 0; i < exp10_; ++i) v *= 10;
    int power = 0;
    while (power < 6 && v % 1024 == 0) {
      v /= 1024;
      ++power;
    }
    static constexpr const char* kBin[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
    return I128ToString(v) + kBin[power];
  }
  i128 m = mantissa_;
  int32_t exp = exp10_;
  switch (exp % 3) {
    case 1:
    case -2:
      m *= 10;
      exp -= 1;
      break;
    case 2:
    case -1:
      m *= 100;
      exp -= 2;
      break;
    default:
      break;
  }
  std::string number = I128ToString(m);
  if (exp == 0) return number;
  if (format == Format::kDecimalSI) {
    switch (exp) {
      case -9:
        return number + "n";
      case -6:
        return number + "u";
      case -3:
        return number + "m";
      case 3:
        return number + "k";
      case 6:
        return number + "M";
      case 9:
        return number + "G";
      case 12:
        return number + "T";
      case 15:
        return number + "P";
      case 18:
        return number + "E";
      default:
        break;
    }
  }
  return number + "e" + std::to_string(exp);
}

}  // namespace edgevirt
