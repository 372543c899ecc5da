// Network namespaces for tests and benchmarks of net/: named ones made with `ip netns add`
// (so `ip netns exec` reaches them) and a scope that moves the calling thread into one. No
// Catch2 dependency, so benchmarks can use it too.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <string>
#include <utility>
#include <vector>

#include "common/exec.h"
#include "common/fd.h"

namespace edgevirt::testing {

// A named network namespace ("ip netns add NAME"), deleted with `ip netns del` when the object
// goes. Processes still inside keep the namespace alive: stop them first.
class NetNs {
 public:
  explicit NetNs(std::string name) : name_(std::move(name)) {
    (void)Exec({"ip", "netns", "del", name_});  // a leftover of a killed run
    ok_ = ExecChecked({"ip", "netns", "add", name_}).has_value();
    if (ok_) (void)Run({"ip", "link", "set", "lo", "up"});
  }
  ~NetNs() {
    if (ok_) (void)Exec({"ip", "netns", "del", name_});
  }
  NetNs(const NetNs&) = delete;
  NetNs& operator=(const NetNs&) = delete;

  bool ok() const { return ok_; }
  const std::string& name() const { return name_; }
  std::string path() const { return "/run/netns/" + name_; }

  // Runs argv inside the namespace (`ip netns exec NAME argv...`).
  Result<ExecResult> Run(std::vector<std::string> argv, const ExecOptions& options = {}) const {
    argv.insert(argv.begin(), {"ip", "netns", "exec", name_});
    return ExecChecked(argv, options);
  }

 private:
  std::string name_;
  bool ok_ = false;
};

// Moves the calling thread into the namespace at `path` and back when the scope ends. Threads
// started and programs run from this thread meanwhile inherit the namespace.
class EnterNetNs {
 public:
  explicit EnterNetNs(const std::string& path)
      : old_(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)) {
    UniqueFd target(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    ok_ = old_ && target && ::setns(target.get(), CLONE_NEWNET) == 0;
  }
  ~EnterNetNs() {
    if (ok_) (void)::setns(old_.get(), CLONE_NEWNET);
  }
  EnterNetNs(const EnterNetNs&) = delete;
  EnterNetNs& operator=(const EnterNetNs&) = delete;
  bool ok() const { return ok_; }

 private:
  UniqueFd old_;
  bool ok_ = false;
};

}  // namespace edgevirt::testing
