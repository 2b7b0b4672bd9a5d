// optim_cpu.cpp: fused optimizer steps on the CPU (C ABI, OpenMP), per element
// math from ../include/splat_optim.h (shared with the CUDA kernels).
#include <omp.h>

#include <cstdint>

#include "../include/splat_optim.h"

#include "flush_denormals.h"

using namespace splat;

namespace {

// Adam on the elements [i0, i1).
void adam_span(int64_t i0, int64_t i1, float* __restrict param, const float* __restrict grad,
               float* __restrict exp_avg, float* __restrict exp_avg_sq, const AdamCoefs& c) {
#pragma omp simd
    for (int64_t i = i0; i < i1; ++i) adam_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], c);
}

}  // namespace

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
            const int nt = omp_get_num_threads(), me = omp_get_thread_num();
            adam_span(n * me / nt, n * (me + 1) / nt, param, grad, exp_avg, exp_avg_sq, c);
        }
        return;
    }
    // Sparse: each thread takes a range of rows and updates each run of consecutive visible rows
    // as one flat vector loop (per-row loops over a few floats do not vectorise; this is within
    // a few tens of percent of the dense step at any visible fraction, faster at low ones).
#pragma omp parallel
    {
        FlushDenormals ftz;
        const int nt = omp_get_num_threads(), me = omp_get_thread_num();
        const int64_t lo = N * me / nt, hi = N * (me + 1) / nt;
        for (int64_t r = lo; r < hi;) {
            if (!rows[r]) {
                ++r;
                continue;
            }
            int64_t e = r + 1;
            while (e < hi && rows[e]) ++e;
            adam_span(r * D, e * D, param, grad, exp_avg, exp_avg_sq, c);
            r = e;
        }
    }
}

}  // extern "C"
