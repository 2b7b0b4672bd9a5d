// splat_optim.h: the per-element math of the fused optimizer steps, shared by the
// CPU library (cpu/optim_cpu.cpp) and the CUDA kernels (cuda/optim_kernels.cuh).
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define SPLAT_OPT_HD __host__ __device__ __forceinline__
#else
#define SPLAT_OPT_HD inline __attribute__((always_inline))
#endif

namespace splat {

// The step's scalars of Adam (Kingma & Ba 2015) in torch.optim.Adam's form:
// step_size = lr / (1 - beta1^t), bc2_sqrt = sqrt(1 - beta2^t). The complements
// 1 - beta are formed in double from the double betas (as torch does with Python
// floats): in float, 1 - 0.999f is 0.00099998713, 1.3e-5 off 0.001.
struct AdamCoefs {
    float beta1, beta2, one_minus_beta1, one_minus_beta2, eps, step_size, bc2_sqrt;
};

SPLAT_OPT_HD AdamCoefs adam_coefs(double beta1, double beta2, float eps, float step_size, float bc2_sqrt) {
    return {(float)beta1, (float)beta2, (float)(1.0 - beta1), (float)(1.0 - beta2), eps, step_size, bc2_sqrt};
}

// One element of Adam, as torch.optim.Adam (no weight decay, no amsgrad) computes it:
//   m <- m + (1 - beta1) (g - m)        (torch: exp_avg.lerp_(grad, 1 - beta1))
//   v <- beta2 v + (1 - beta2) g g      (exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2))
//   p <- p - step_size (m / (sqrt(v) / bc2_sqrt + eps))   (param.addcdiv_(m, denom, -step_size))
SPLAT_OPT_HD void adam_element(float& p, float g, float& m, float& v, const AdamCoefs& c) {
    const float mn = m + c.one_minus_beta1 * (g - m);
    const float vn = c.beta2 * v + c.one_minus_beta2 * g * g;
    m = mn;
    v = vn;
    p -= c.step_size * (mn / (sqrtf(vn) / c.bc2_sqrt + c.eps));
}

}  // namespace splat
