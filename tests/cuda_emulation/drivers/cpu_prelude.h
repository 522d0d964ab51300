// Force-included into the CPU kernels (the reference side): one build of each hot loop
// instead of an ISA clone per instruction set (common/cpu.h), which only costs compile time
// here. cpu.h is #pragma once, so the kernels' own #include of it keeps this definition.
#pragma once

#include "common/cpu.h"

#undef MEDMETA_CPU_CLONES
#define MEDMETA_CPU_CLONES
