// optim_kernels.cuh: the fused Adam step on the GPU (included by splat_cuda.cu;
// per-element math from ../include/splat_optim.h, shared with cpu/optim_cpu.cpp).
#include "../include/splat_optim.h"

// One thread per element of a [N, D] parameter; rows (nullable) [N]: only rows
// with a non-zero entry are updated (sparse Adam over the visible Gaussians).
__global__ void adam_rows_kernel(int64_t N, int64_t D, float* __restrict__ param, const float* __restrict__ grad,
                                 float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                                 const uint8_t* __restrict__ rows, splat::AdamCoefs c) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= N * D) return;
    if (rows && !rows[i / D]) return;
    splat::adam_element(param[i], grad[i], exp_avg[i], exp_avg_sq[i], c);
}

SPLAT_API int splatcu_adam_rows(int64_t N, int64_t D, float* param, const float* grad, float* exp_avg,
                                float* exp_avg_sq, const uint8_t* rows, double beta1, double beta2, float eps,
                                float step_size, float bc2_sqrt, void* stream) {
    const int64_t n = N * D;
    if (n == 0) return 0;
    const splat::AdamCoefs c = splat::adam_coefs(beta1, beta2, eps, step_size, bc2_sqrt);
    SPLAT_LAUNCH(adam_rows_kernel, blocks_for(n), kThreads, (cudaStream_t)stream, N, D, param, grad, exp_avg,
                 exp_avg_sq, rows, c);
    RETURN_LAUNCH_ERROR();
}
