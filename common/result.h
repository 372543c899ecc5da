// Errors as values. No exception crosses a module boundary: every fallible function returns
// Result<T> (or Status, which is Result<void>) and callers propagate with RETURN_IF_ERROR /
// ASSIGN_OR_RETURN. Member names follow std::expected so the type can be swapped once the
// toolchains in use ship it in C++20 mode.
#pragma once

#include <cassert>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace edgevirt {

// A small, closed set of error kinds. api/ maps each to one HTTP code and Kubernetes reason
// (in one function); keep the set small so that mapping stays total.
enum class Code {
  kInvalid,        // the caller's input is wrong (422/400)
  kNotFound,       // the named thing does not exist (404)
  kAlreadyExists,  // create of something that exists (409 AlreadyExists)
  kConflict,       // precondition failed: stale resourceVersion, wrong state (409)
  kGone,           // asked for history that is no longer retained (410)
  kUnavailable,    // a dependency is down or shutting down; retry later (503)
  kTimeout,        // a deadline passed (504)
  kTooLarge,       // a size limit was exceeded (413)
  kUnsupported,    // a well-formed request we do not implement (415/405)
  kPermission,     // not allowed (403)
  kInternal,       // a bug or an unexpected system failure (500)
};

std::string_view CodeName(Code code);

struct Error {
  Code code = Code::kInternal;
  std::string message;

  // Prefixes context, e.g. Error{...}.Wrap("open state") -> "open state: <message>".
  Error Wrap(std::string_view context) const& {
    return Error{code, std::string(context) + ": " + message};
  }
  Error Wrap(std::string_view context) && {
    message.insert(0, std::string(context) + ": ");
    return std::move(*this);
  }
  std::string ToString() const { return std::string(CodeName(code)) + ": " + message; }
};

inline Error MakeError(Code code, std::string message) { return Error{code, std::move(message)}; }

// Builds an Error from errno (or a negative errno as libsystemd/libbpf return them).
Error ErrnoError(std::string_view context, int err);

template <typename T>
class [[nodiscard]] Result {
 public:
  using value_type = T;

  Result(const T& v) : v_(std::in_place_index<0>, v) {}  // NOLINT(google-explicit-constructor)
  Result(T&& v) : v_(std::in_place_index<0>, std::move(v)) {}      // NOLINT
  Result(const Error& e) : v_(std::in_place_index<1>, e) {}        // NOLINT
  Result(Error&& e) : v_(std::in_place_index<1>, std::move(e)) {}  // NOLINT
  template <typename U,
            typename = std::enable_if_t<
                std::is_constructible_v<T, U&&> && !std::is_same_v<std::decay_t<U>, Result> &&
                !std::is_same_v<std::decay_t<U>, Error> && !std::is_same_v<std::decay_t<U>, T>>>
  Result(U&& u) : v_(std::in_place_index<0>, std::forward<U>(u)) {}  // NOLINT

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & {
    assert(has_value());
    return std::get<0>(v_);
  }
  const T& value() const& {
    assert(has_value());
    return std::get<0>(v_);
  }
  T&& value() && {
    assert(has_value());
    return std::get<0>(std::move(v_));
  }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& {
    assert(!has_value());
    return std::get<1>(v_);
  }
  Error&& error() && {
    assert(!has_value());
    return std::get<1>(std::move(v_));
  }

  template <typename U>
  T value_or(U&& fallback) const& {
    return has_value() ? value() : static_cast<T>(std::forward<U>(fallback));
  }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  using value_type = void;
  Result() = default;
  Result(const Error& e) : err_(e), ok_(false) {}        // NOLINT
  Result(Error&& e) : err_(std::move(e)), ok_(false) {}  // NOLINT

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  void value() const { assert(ok_); }
  const Error& error() const& {
    assert(!ok_);
    return err_;
  }
  Error&& error() && {
    assert(!ok_);
    return std::move(err_);
  }

 private:
  Error err_;
  bool ok_ = true;
};

using Status = Result<void>;

inline Status Ok() { return Status(); }

}  // namespace edgevirt

#define EDGEVIRT_CONCAT_INNER_(a, b) a##b
#define EDGEVIRT_CONCAT_(a, b) EDGEVIRT_CONCAT_INNER_(a, b)

// Returns the error of a Result/Status expression from the enclosing function.
#define RETURN_IF_ERROR(expr)                                        \
  do {                                                               \
    auto&& edgevirt_status_ = (expr);                                \
    if (!edgevirt_status_.has_value()) {                             \
      return ::edgevirt::Error(std::move(edgevirt_status_).error()); \
    }                                                                \
  } while (false)

// ASSIGN_OR_RETURN(auto x, Foo()); declares/assigns x from a Result or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(EDGEVIRT_CONCAT_(edgevirt_result_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr)        \
  auto tmp = (expr);                                  \
  if (!tmp.has_value()) {                             \
    return ::edgevirt::Error(std::move(tmp).error()); \
  }                                                   \
  lhs = std::move(tmp).value()
