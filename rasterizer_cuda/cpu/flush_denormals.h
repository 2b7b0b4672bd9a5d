// flush_denormals.h: FlushDenormals, a scope guard of the CPU kernels.
#pragma once

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
// Flush denormals to zero (FTZ) and read them as zero (DAZ) inside the blend
// loops, restoring the caller's mode after. Far from its centre a Gaussian's
// alpha is exp(-sigma) * opacity, which underflows into the denormal range;
// x86 handles those in microcode at ~100x the cost, which made the backward
// several times slower on partly transparent scenes. Values under 1.2e-38 are
// far below the 1/255 alpha threshold, so results do not change.
struct FlushDenormals {
    unsigned int saved;
    FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040u); }
    ~FlushDenormals() { _mm_setcsr(saved); }
};
#else
struct FlushDenormals {};
#endif
