// Fault points: named places in multi-step protocols (write intent, change the kernel, record
// completion) where a test can make the daemon die, to prove that a restart converges from
// every intermediate state.
//
// Compiled in only with -DEDGEVIRT_FAULT_INJECTION=ON (the development and CI build; package
// builds leave it off, so there FaultPoint is an empty inline function). When compiled in, a
// process whose environment has EDGEVIRT_FAULT_POINT=<name> SIGKILLs itself the first time it
// reaches FaultPoint("<name>") — no cleanup, no flush, exactly what `kill -9` does.
#pragma once

#include <string_view>

namespace edgevirt {

#ifdef EDGEVIRT_FAULT_INJECTION
void FaultPoint(std::string_view name);
#else
inline void FaultPoint(std::string_view) {}
#endif

}  // namespace edgevirt
