#include "common/fault.h"

#ifdef EDGEVIRT_FAULT_INJECTION

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <string>

#include "common/log.h"

namespace edgevirt {

void FaultPoint(std::string_view name) {
  static const std::string selected = [] {
    const char* v = ::getenv("EDGEVIRT_FAULT_POINT");
    return std::string(v != nullptr ? v : "");
  }();
  if (selected.empty() || selected != name) return;
  // One line on stderr (unbuffered) so a test log shows where the process died.
  std::string line = "edgevirt: fault point " + std::string(name) + ": SIGKILL\n";
  (void)!::write(STDERR_FILENO, line.data(), line.size());
  ::kill(::getpid(), SIGKILL);
  ::pause();
}

}  // namespace edgevirt

#endif
