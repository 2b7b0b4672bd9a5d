// host_emulation.h: just enough of CUDA to run splat_cuda.cu's kernels on the
// CPU, for tests on machines without a GPU. Not a build of the backend: g++
// compiles splat_cuda.cu with -DSPLAT_CUDA_HOST_EMULATION, which includes this
// instead of the CUDA headers.
//
// A kernel launch runs its blocks one after another. Each thread of a block is
// a fiber with its own stack; a fiber runs until it waits at a
// barrier (__syncthreads and its _and form for the block, the warp
// primitives __shfl_xor_sync and __any_sync for its 32 lanes) and then yields,
// round robin. So the kernels execute with their real indexing, batching,
// shared memory (`__shared__` becomes a function-local static, one per kernel
// instantiation, reused block after block) and warp reductions. A barrier
// that not every thread of its group reaches is reported as error 999 instead
// of hanging. Atomics are plain read-modify-writes (one fiber runs at a time).
// CUB's scan and radix sort become std::partial_sum and std::stable_sort.
//
// What this cannot show: real concurrency between warps (the fibers interleave
// only at barriers), the GPU's memory model, __expf's precision (the CPU
// exp of splat_math.h runs instead) and speed.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <vector>

// ------------------------------------------------------------------ types and qualifiers
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned x, y, z;
};
struct float4 {
    float x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

typedef int cudaError_t;
typedef void* cudaStream_t;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
constexpr cudaError_t kEmuDeadlock = 999;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

using std::max;
using std::min;

namespace emu {

constexpr size_t kStackBytes = 64 * 1024;

// Switching fibers. On x86-64 a 10-instruction switch of the callee-saved
// registers and the stack pointer (swapcontext also saves the signal mask, a
// system call per switch, which made the emulation ~50x slower); elsewhere
// ucontext.
#if defined(__x86_64__)
extern "C" void splat_emu_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .globl splat_emu_switch
    .hidden splat_emu_switch
    .type splat_emu_switch, @function
splat_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size splat_emu_switch, .-splat_emu_switch
)");
struct Context {
    void* sp = nullptr;
};
// A fresh stack whose first switch "returns" into entry() (16-byte aligned as after a call).
inline void make_context(Context& c, std::vector<char>& stack, void (*entry)()) {
    uintptr_t top = ((uintptr_t)(stack.data() + stack.size())) & ~(uintptr_t)15;
    void** sp = (void**)top;
    *--sp = nullptr;            // the slot of entry()'s own return address (it never returns)
    *--sp = (void*)entry;       // popped by `ret`
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp, rbx, r12-r15
    c.sp = sp;
}
inline void switch_context(Context& from, Context& to) { splat_emu_switch(&from.sp, to.sp); }
#else
struct Context {
    ucontext_t uc;
};
inline void make_context(Context& c, std::vector<char>& stack, void (*entry)()) {
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack.data();
    c.uc.uc_stack.ss_size = stack.size();
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
inline void switch_context(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

struct State {
    unsigned n = 0;  // threads in the block
    std::vector<Context> ctx;
    std::vector<std::vector<char>> stacks;
    std::vector<char> done;
    Context scheduler;
    std::function<void()> body;
    unsigned current = 0;
    // block barrier
    unsigned bar_count = 0, bar_gen = 0;
    std::vector<int> bar_vals;
    // warp barriers
    std::vector<unsigned> warp_count, warp_gen;
    std::vector<float> warp_f;
    std::vector<int> warp_i;
    // the barrier generation each fiber waits for to change (nullptr: runnable)
    std::vector<const unsigned*> wait_gen;
    std::vector<unsigned> wait_val;
    bool deadlock = false;  // every unfinished fiber waits: a barrier someone never reaches
    cudaError_t last_error = cudaSuccess;
};

inline State& st() {
    static State s;
    return s;
}

}  // namespace emu

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace emu {

// Wait until `target` arrivals open the barrier whose generation is `gen`.
// The scheduler does not resume a waiting fiber until the generation moves.
inline void arrive_and_wait(unsigned& count, unsigned& gen, unsigned target) {
    State& s = st();
    const unsigned my_gen = gen;
    if (++count == target) {
        count = 0;
        ++gen;
        return;
    }
    s.wait_gen[s.current] = &gen;
    s.wait_val[s.current] = my_gen;
    while (gen == my_gen && !s.deadlock) switch_context(s.ctx[s.current], s.scheduler);
    s.wait_gen[s.current] = nullptr;
}

[[noreturn]] inline void trampoline() {
    State& s = st();
    s.body();
    s.done[s.current] = 1;
    switch_context(s.ctx[s.current], s.scheduler);  // never resumed: the fiber is done
    __builtin_unreachable();
}

// Runs body() for every thread of every block.
inline void launch(dim3 grid, dim3 block, std::function<void()> body) {
    State& s = st();
    s.n = block.x;
    s.body = std::move(body);
    s.ctx.resize(s.n);
    if (s.stacks.size() < s.n) s.stacks.resize(s.n);
    s.done.assign(s.n, 0);
    s.wait_gen.assign(s.n, nullptr);
    s.wait_val.assign(s.n, 0);
    s.bar_vals.assign(s.n, 0);
    const unsigned warps = (s.n + 31) / 32;
    s.warp_count.assign(warps, 0);
    s.warp_gen.assign(warps, 0);
    s.warp_f.assign(warps * 32, 0.f);
    s.warp_i.assign(warps * 32, 0);
    gridDim = grid;
    blockDim = block;
    s.deadlock = false;
    for (unsigned b = 0; b < grid.x && !s.deadlock; ++b) {
        blockIdx = {b, 0, 0};
        s.bar_count = s.bar_gen = 0;
        std::fill(s.warp_count.begin(), s.warp_count.end(), 0u);
        std::fill(s.done.begin(), s.done.end(), 0);
        for (unsigned t = 0; t < s.n; ++t) {
            if (s.stacks[t].empty()) s.stacks[t].resize(kStackBytes);
            make_context(s.ctx[t], s.stacks[t], trampoline);
        }
        unsigned alive = s.n;
        while (alive) {
            alive = 0;
            unsigned ran = 0;
            for (unsigned t = 0; t < s.n; ++t) {
                if (s.done[t]) continue;
                ++alive;
                if (s.wait_gen[t] && *s.wait_gen[t] == s.wait_val[t] && !s.deadlock) continue;  // still blocked
                ++ran;
                s.current = t;
                threadIdx = {t, 0, 0};
                switch_context(s.scheduler, s.ctx[t]);
            }
            if (alive && !ran) s.deadlock = true;  // the next sweep lets every fiber run to its end
        }
    }
    if (s.deadlock) s.last_error = kEmuDeadlock;
}

inline cudaError_t inclusive_sum(void* temp, size_t& temp_bytes, int64_t* data, int64_t n) {
    if (!temp) {
        temp_bytes = 16;
        return cudaSuccess;
    }
    std::partial_sum(data, data + n, data);
    return cudaSuccess;
}

// Stable by key, like CUB's radix sort; the result goes to buffer b (which = 1).
inline cudaError_t sort_pairs(void* temp, size_t& temp_bytes, int64_t* keys_a, int32_t* ids_a, int64_t* keys_b,
                              int32_t* ids_b, int64_t M, int end_bit, int* which) {
    if (!temp) {
        temp_bytes = 16;
        return cudaSuccess;
    }
    const uint64_t mask = end_bit >= 64 ? ~0ull : ((1ull << end_bit) - 1);
    std::vector<int64_t> order(M);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
        return ((uint64_t)keys_a[x] & mask) < ((uint64_t)keys_a[y] & mask);
    });
    for (int64_t i = 0; i < M; ++i) {
        keys_b[i] = keys_a[order[i]];
        ids_b[i] = ids_a[order[i]];
    }
    *which = 1;
    return cudaSuccess;
}

}  // namespace emu

// ------------------------------------------------------------------ CUDA built-ins
inline void __syncthreads() {
    emu::State& s = emu::st();
    emu::arrive_and_wait(s.bar_count, s.bar_gen, s.n);
}

inline int __syncthreads_and(int pred) {
    emu::State& s = emu::st();
    s.bar_vals[threadIdx.x] = pred != 0;
    __syncthreads();
    int all = 1;
    for (unsigned t = 0; t < s.n; ++t) all &= s.bar_vals[t];
    __syncthreads();  // everyone has read before the values are reused
    return all;
}

inline void warp_barrier() {
    emu::State& s = emu::st();
    const unsigned w = threadIdx.x / 32;
    const unsigned members = std::min(32u, s.n - 32 * w);
    emu::arrive_and_wait(s.warp_count[w], s.warp_gen[w], members);
}

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    emu::State& s = emu::st();
    const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
    s.warp_f[32 * w + lane] = v;
    warp_barrier();
    const float r = s.warp_f[32 * w + (lane ^ (unsigned)lane_mask)];
    warp_barrier();
    return r;
}

inline int __any_sync(unsigned, int pred) {
    emu::State& s = emu::st();
    const unsigned w = threadIdx.x / 32, lane = threadIdx.x % 32;
    s.warp_i[32 * w + lane] = pred != 0;
    warp_barrier();
    int any = 0;
    for (unsigned l = 0; l < 32 && 32 * w + l < s.n; ++l) any |= s.warp_i[32 * w + l];
    warp_barrier();
    return any;
}

inline float atomicAdd(float* p, float v) {
    float old = *p;
    *p = old + v;
    return old;
}

inline int atomicMax(int* p, int v) {
    int old = *p;
    *p = std::max(old, v);
    return old;
}

inline cudaError_t cudaGetLastError() {
    emu::State& s = emu::st();
    cudaError_t e = s.last_error;
    s.last_error = cudaSuccess;
    s.deadlock = false;
    return e;
}

inline const char* cudaGetErrorString(cudaError_t e) {
    switch (e) {
        case cudaSuccess: return "no error";
        case cudaErrorInvalidValue: return "invalid argument";
        case kEmuDeadlock: return "host emulation: a barrier was not reached by every thread of its block or warp";
        default: return "unknown error";
    }
}

inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t) {
    memset(p, v, n);
    return cudaSuccess;
}

#define SPLAT_LAUNCH(KERNEL, GRID, BLOCK, STREAM, ...) \
    ::emu::launch(dim3(GRID), dim3(BLOCK), [&] { KERNEL(__VA_ARGS__); })
