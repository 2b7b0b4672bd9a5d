// Self-test of rasterizer_cuda/cuda/host_emulation.h: the emulator must run
// warp shuffles and votes, block barriers and shared memory as a GPU would, and
// must report a barrier that a thread never reaches instead of hanging.
#include "host_emulation.h"

// out[t] = sum over t's warp of (t + 1), by a butterfly of __shfl_xor_sync;
// any[t] = whether some lane of t's warp is lane 5 of block 1; all[block] =
// whether every thread of the block has t < 1000.
__global__ void warp_kernel(float* out, int* any, int* all) {
    float v = (float)(blockIdx.x * blockDim.x + threadIdx.x + 1);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    out[t] = v;
    any[t] = __any_sync(0xffffffffu, (threadIdx.x % 32) == 5 && blockIdx.x == 1);
    const int a = __syncthreads_and(t < 1000);
    if (threadIdx.x == 0) all[blockIdx.x] = a;
}

// Reverses each block's values through shared memory.
__global__ void shared_kernel(const int* in, int* out) {
    __shared__ int buf[256];
    const unsigned base = blockIdx.x * blockDim.x;
    buf[threadIdx.x] = in[base + threadIdx.x];
    __syncthreads();
    out[base + threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

// Thread 0 leaves before the barrier the others wait at.
__global__ void broken_kernel(int* out) {
    if (threadIdx.x == 0) return;
    __syncthreads();
    out[threadIdx.x] = 1;
}

extern "C" {
int emu_warp(int blocks, int threads, float* out, int* any, int* all) {
    SPLAT_LAUNCH(warp_kernel, blocks, threads, nullptr, out, any, all);
    return cudaGetLastError();
}
int emu_shared(int blocks, int threads, const int* in, int* out) {
    SPLAT_LAUNCH(shared_kernel, blocks, threads, nullptr, in, out);
    return cudaGetLastError();
}
int emu_broken(int* out) {
    SPLAT_LAUNCH(broken_kernel, 1, 64, nullptr, out);
    return cudaGetLastError();
}
}
