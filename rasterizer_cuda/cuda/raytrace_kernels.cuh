// raytrace_kernels.cuh: the ray-tracing backend's CUDA kernels (included at the end of splat_cuda.cu,
// so that one library, and its host emulation in the tests, holds them). One thread per ray; the
// BVH is built on the host by the shared header's build_bvh (the CPU library) and copied over.
// Everything per ray is ../include/splat_raytrace.h, the code the CPU backend runs: the forward
// traces with a 16-hit k-buffer (3DGRT's size for a GPU thread's registers), the backward traces
// again and un-composites (no per-ray hit lists in GPU memory), adding gradients with atomics.
#include "../include/splat_raytrace.h"

namespace {

__global__ void rt_fwd_kernel(int R, const float* origins, const float* dirs, const float* tmin, const float* tmax,
                              int D, const float* feats, const float* bg, const rt::Node* nodes,
                              const rt::Prim* prims, const int32_t* ids, float* colors, float* trans,
                              int32_t* n_hits) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= R) return;
    const rt::Ray ray = rt::make_ray(origins + 3 * (int64_t)r, dirs + 3 * (int64_t)r, tmin[r], tmax[r]);
    float T = 1.f;
    n_hits[r] = rt::trace_forward(ray, nodes, prims, ids, feats, D, bg, colors + (int64_t)r * D, T,
                                  [](int, int) {});
    trans[r] = T;
}

__global__ void rt_bwd_kernel(int R, const float* origins, const float* dirs, const float* tmin, const float* tmax,
                              int D, const float* feats, const rt::Node* nodes, const rt::Prim* prims,
                              const int32_t* ids, const float* colors, const float* trans, const float* grad_colors,
                              const float* grad_alphas, float* g_means, float* g_precs, float* g_opac,
                              float* g_feats) {
    const int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= R) return;
    const rt::Ray ray = rt::make_ray(origins + 3 * (int64_t)r, dirs + 3 * (int64_t)r, tmin[r], tmax[r]);
    rt::trace_backward(ray, nodes, prims, ids, feats, D, colors + (int64_t)r * D, trans[r],
                       grad_colors + (int64_t)r * D, grad_alphas[r], g_means, g_precs, g_opac, g_feats,
                       [](float* p, float v) { atomicAdd(p, v); });
}

constexpr int kRayThreads = 128;

}  // namespace

// Largest feature count per ray (render.py splits wider features).
SPLAT_API int splatcu_rt_max_channels() { return rt::kMaxChannels; }

// R rays through the BVH (nodes, prims and ids from splat_rt_build, on the device) -> colors [R,D]
// (plus T * bg when bg != null), transmittance [R], Gaussians composited per ray [R].
SPLAT_API int splatcu_rt_fwd(int R, const float* origins, const float* dirs, const float* tmin, const float* tmax,
                             int D, const float* feats, const float* bg, const float* nodes, int n_nodes,
                             const float* prims, const int32_t* ids, float* colors, float* trans, int32_t* n_hits,
                             cudaStream_t stream) {
    if (R == 0 || n_nodes == 0 || D > rt::kMaxChannels) return D > rt::kMaxChannels ? (int)cudaErrorInvalidValue : 0;
    SPLAT_LAUNCH(rt_fwd_kernel, (unsigned)((R + kRayThreads - 1) / kRayThreads), kRayThreads, stream, R, origins, dirs,
                 tmin, tmax, D, feats, bg, reinterpret_cast<const rt::Node*>(nodes),
                 reinterpret_cast<const rt::Prim*>(prims), ids, colors, trans, n_hits);
    RETURN_LAUNCH_ERROR();
}

// Gradients of splat_rt_fwd's outputs (grad_colors [R,D], grad_alphas [R] of 1 - T) added into
// g_means [N,3], g_precs [N,6], g_opac [N], g_feats [N,D] (zeroed by the caller).
SPLAT_API int splatcu_rt_bwd(int R, const float* origins, const float* dirs, const float* tmin, const float* tmax,
                             int D, const float* feats, const float* nodes, int n_nodes, const float* prims,
                             const int32_t* ids, const float* colors, const float* trans, const float* grad_colors,
                             const float* grad_alphas, float* g_means, float* g_precs, float* g_opac, float* g_feats,
                             cudaStream_t stream) {
    if (R == 0 || n_nodes == 0 || D > rt::kMaxChannels) return D > rt::kMaxChannels ? (int)cudaErrorInvalidValue : 0;
    SPLAT_LAUNCH(rt_bwd_kernel, (unsigned)((R + kRayThreads - 1) / kRayThreads), kRayThreads, stream, R, origins, dirs,
                 tmin, tmax, D, feats, reinterpret_cast<const rt::Node*>(nodes),
                 reinterpret_cast<const rt::Prim*>(prims), ids, colors, trans, grad_colors, grad_alphas, g_means,
                 g_precs, g_opac, g_feats);
    RETURN_LAUNCH_ERROR();
}
