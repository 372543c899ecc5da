// Includes Catch2 whatever its major version (Debian 12 ships v2, newer distros v3).
#pragma once
#if defined(EDGEVIRT_CATCH3)
#include <catch2/catch_all.hpp>
#else
#include <catch2/catch.hpp>
#endif
