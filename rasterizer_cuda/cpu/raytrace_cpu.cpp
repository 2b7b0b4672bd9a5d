// raytrace_cpu.cpp: the ray-tracing backend on the CPU (C++17, OpenMP). All of the per-ray math,
// the k-buffer traversal and the BVH build come from ../include/splat_raytrace.h, shared with the
// CUDA kernels (../cuda/raytrace_cuda.cu). Rays are independent: OpenMP over blocks of rays
// (dynamic schedule; neighbouring rays walk the same nodes). The backward accumulates gradients in
// one buffer per thread, summed at the end (no atomics; deterministic for a fixed thread count).
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "../include/splat_raytrace.h"
#include "flush_denormals.h"

using namespace splat;
using namespace splat::rt;

extern "C" {

int splat_rt_node_floats() { return (int)(sizeof(Node) / sizeof(float)); }

// BVH over N Gaussians (means [N,3], precisions [N,6], opacities [N]) into nodes [2N] and prims [N];
// returns the node count (0: nothing can be hit).
int splat_rt_build(int N, const float* means, const float* precs, const float* opacities, float* nodes,
                   int32_t* prims) {
    return build_bvh(N, means, precs, opacities, reinterpret_cast<Node*>(nodes), prims);
}

// R rays (origins, dirs [R,3], tmin, tmax [R]) -> colors [R,D] (plus T_final * bg when bg != null),
// transmittance [R], Gaussians composited per ray [R].
void splat_rt_fwd(int R, const float* origins, const float* dirs, const float* tmin, const float* tmax, int N,
                  const float* means, const float* precs, const float* opacities, int D, const float* feats,
                  const float* bg, const float* nodes, int n_nodes, const int32_t* prims, float* colors,
                  float* trans, int32_t* n_hits) {
    FlushDenormals ftz;
    const Node* nd = reinterpret_cast<const Node*>(nodes);
#pragma omp parallel for schedule(dynamic, 64)
    for (int r = 0; r < R; ++r) {
        FlushDenormals ftz_thread;
        float* col = colors + (int64_t)r * D;
        if (n_nodes == 0) {
            for (int c = 0; c < D; ++c) col[c] = bg ? bg[c] : 0.f;
            trans[r] = 1.f;
            n_hits[r] = 0;
            continue;
        }
        const Ray ray = make_ray(origins + 3 * (int64_t)r, dirs + 3 * (int64_t)r, tmin[r], tmax[r]);
        n_hits[r] = trace_forward(ray, nd, prims, means, precs, opacities, feats, D, bg, col, trans[r]);
    }
}

// Gradients of splat_rt_fwd's outputs: grad_colors [R,D], grad_alphas [R] (of 1 - T) ->
// grad_means [N,3], grad_precs [N,6], grad_opacities [N], grad_feats [N,D] (overwritten).
void splat_rt_bwd(int R, const float* origins, const float* dirs, const float* tmin, const float* tmax, int N,
                  const float* means, const float* precs, const float* opacities, int D, const float* feats,
                  const float* nodes, int n_nodes, const int32_t* prims, const float* colors, const float* trans,
                  const float* grad_colors, const float* grad_alphas, float* grad_means, float* grad_precs,
                  float* grad_opacities, float* grad_feats) {
    FlushDenormals ftz;
    const int64_t stride = 10 + (int64_t)D;  // per Gaussian: 3 mean, 6 precision, 1 opacity, D features
    std::memset(grad_means, 0, sizeof(float) * 3 * (size_t)N);
    std::memset(grad_precs, 0, sizeof(float) * 6 * (size_t)N);
    std::memset(grad_opacities, 0, sizeof(float) * (size_t)N);
    std::memset(grad_feats, 0, sizeof(float) * (size_t)D * N);
    if (n_nodes == 0 || R == 0 || N == 0) return;
    const Node* nd = reinterpret_cast<const Node*>(nodes);
    const int T = omp_get_max_threads();
    std::vector<float> buf((size_t)T * stride * N, 0.f);
#pragma omp parallel
    {
        FlushDenormals ftz_thread;
        float* mine = buf.data() + (size_t)omp_get_thread_num() * stride * N;
        float* gm = mine;
        float* gp = gm + 3 * (int64_t)N;
        float* go = gp + 6 * (int64_t)N;
        float* gf = go + N;
        auto add = [](float* p, float v) { *p += v; };
#pragma omp for schedule(dynamic, 64)
        for (int r = 0; r < R; ++r) {
            const Ray ray = make_ray(origins + 3 * (int64_t)r, dirs + 3 * (int64_t)r, tmin[r], tmax[r]);
            trace_backward(ray, nd, prims, means, precs, opacities, feats, D, colors + (int64_t)r * D, trans[r],
                           grad_colors + (int64_t)r * D, grad_alphas[r], gm, gp, go, gf, add);
        }
    }
    float* outs[4] = {grad_means, grad_precs, grad_opacities, grad_feats};
    const int64_t sizes[4] = {3 * (int64_t)N, 6 * (int64_t)N, N, (int64_t)D * N};
#pragma omp parallel for schedule(static)
    for (int k = 0; k < 4; ++k) {
        int64_t off = 0;
        for (int j = 0; j < k; ++j) off += sizes[j];
        for (int t = 0; t < T; ++t) {
            const float* src = buf.data() + (size_t)t * stride * N + off;
            for (int64_t i = 0; i < sizes[k]; ++i) outs[k][i] += src[i];
        }
    }
}

}  // extern "C"
