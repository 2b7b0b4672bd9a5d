// optim_cpu.cpp: fused optimizer steps on the CPU (C ABI, OpenMP), per element
// math from ../include/splat_optim.h (shared with the CUDA kernels).
#include <omp.h>

#include <cstdint>

#include "../include/splat_optim.h"

#include "flush_denormals.h"

using namespace splat;

extern "C" {

// One Adam step over a parameter of N rows of D floats each ([N, D] contiguous):
// param, exp_avg, exp_avg_sq updated in place from grad. `rows` [N] (nullable):
// only rows with a non-zero entry are updated, the others keep their parameter
// and moments (sparse Adam over the Gaussians a step's views see: Taming 3DGS,
// gsplat's SelectiveAdam). One pass over memory; deterministic (each element is
// updated by exactly one thread).
void splat_adam_rows(int64_t N, int64_t D, float* param, const float* grad, float* exp_avg, float* exp_avg_sq,
                     const uint8_t* rows, double beta1, double beta2, float eps, float step_size, float bc2_sqrt) {
    const AdamCoefs c = adam_coefs(beta1, beta2, eps, step_size, bc2_sqrt);
    if (rows == nullptr) {
        const int64_t n = N * D;
#pragma omp parallel
        {
            FlushDenormals ftz;
#pragma omp for schedule(static)
            for (int64_t i = 0; i < n; ++i) adam_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], c);
        }
        return;
    }
#pragma omp parallel
    {
        FlushDenormals ftz;
#pragma omp for schedule(static)
        for (int64_t r = 0; r < N; ++r) {
            if (!rows[r]) continue;
            const int64_t o = r * D;
#pragma omp simd
            for (int64_t j = 0; j < D; ++j)
                adam_element(param[o + j], grad[o + j], exp_avg[o + j], exp_avg_sq[o + j], c);
        }
    }
}

}  // extern "C"
