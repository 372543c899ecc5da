// The public header of common/: errors as values, RAII handles, logging, time and ids.
#pragma once

#include "common/clock.h"
#include "common/exec.h"
#include "common/fd.h"
#include "common/log.h"
#include "common/result.h"
