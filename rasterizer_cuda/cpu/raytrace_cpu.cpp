// raytrace_cpu.cpp: the ray-tracing backend on the CPU (C++17, OpenMP). The per-ray math, the
// k-buffer traversal and the BVH build come from ../include/splat_raytrace.h, shared with the CUDA
// kernels (../cuda/raytrace_kernels.cuh, built into the CUDA library). Rays are independent: OpenMP
// over blocks of rays (dynamic schedule; the caller orders rays by image tile so that neighbours walk
// the same nodes).
//
// Two CPU-specific choices, both measured (bench/raytrace.py):
// - a k-buffer of 64 hits per round instead of the GPU's 16: rounds restart at the root, and a CPU
//   core has registers and cache to spare for the longer buffer (4x fewer rounds on a random
//   initialisation of ~280 hits per ray, 2.2x faster);
// - the forward keeps each ray's list of composited Gaussians, so the backward walks the lists
//   instead of tracing again (3DGRT's GPU scheme, `trace_backward`, kept for the CUDA kernels).
// The backward accumulates gradients in one buffer per thread, summed at the end (no atomics); rays
// go to threads dynamically, so the order of the float sums, and the last bits, vary from run to run.
#define SPLAT_RT_KBUFFER 64

#include <omp.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "../include/splat_raytrace.h"
#include "flush_denormals.h"

using namespace splat;
using namespace splat::rt;

namespace {
// Each ray's composited records, written by whichever thread traced it.
struct HitLists {
    std::vector<std::vector<int32_t>> per_thread;
    std::vector<int32_t> thread_of;
    std::vector<int64_t> start;
};
}  // namespace

extern "C" {

int splat_rt_node_floats() { return (int)(sizeof(Node) / sizeof(float)); }
int splat_rt_prim_floats() { return (int)(sizeof(Prim) / sizeof(float)); }
int splat_rt_kbuffer() { return kBufferSize; }

// BVH over N Gaussians (means [N,3], precisions [N,6], opacities [N]) into nodes [2N], records
// [N] in leaf order and their Gaussian ids [N]; returns the node count (0: nothing can be hit).
int splat_rt_build(int N, const float* means, const float* precs, const float* opacities, float* nodes, float* prims,
                   int32_t* ids) {
    return build_bvh(N, means, precs, opacities, reinterpret_cast<Node*>(nodes), reinterpret_cast<Prim*>(prims), ids);
}

// R rays (origins, dirs [R,3], tmin, tmax [R]) -> colors [R,D] (plus T_final * bg when bg != null),
// transmittance [R], Gaussians composited per ray [R]. With keep_lists, returns a handle to the
// rays' lists of composited records (splat_rt_take_lists copies them out and frees it), else null.
void* splat_rt_fwd(int R, const float* origins, const float* dirs, const float* tmin, const float* tmax, int D,
                   const float* feats, const float* bg, const float* nodes, int n_nodes, const float* prims,
                   const int32_t* ids, float* colors, float* trans, int32_t* n_hits, int keep_lists) {
    FlushDenormals ftz;
    const Node* nd = reinterpret_cast<const Node*>(nodes);
    const Prim* pr = reinterpret_cast<const Prim*>(prims);
    HitLists* lists = keep_lists ? new HitLists : nullptr;
    if (lists) {
        lists->per_thread.resize(omp_get_max_threads());
        lists->thread_of.assign(R, 0);
        lists->start.assign(R, 0);
    }
#pragma omp parallel
    {
        FlushDenormals ftz_thread;
        const int me = omp_get_thread_num();
        std::vector<int32_t>* buf = lists ? &lists->per_thread[me] : nullptr;
#pragma omp for schedule(dynamic, 64)
        for (int r = 0; r < R; ++r) {
            float* col = colors + (int64_t)r * D;
            if (lists) {
                lists->thread_of[r] = me;
                lists->start[r] = (int64_t)buf->size();
            }
            if (n_nodes == 0) {
                for (int c = 0; c < D; ++c) col[c] = bg ? bg[c] : 0.f;
                trans[r] = 1.f;
                n_hits[r] = 0;
                continue;
            }
            const Ray ray = make_ray(origins + 3 * (int64_t)r, dirs + 3 * (int64_t)r, tmin[r], tmax[r]);
            n_hits[r] = trace_forward(ray, nd, pr, ids, feats, D, bg, col, trans[r], [&](int, int rec) {
                if (buf) buf->push_back(rec);
            });
        }
    }
    return lists;
}

// Copy the lists of splat_rt_fwd into list [sum n_hits] (ray after ray) and free them.
void splat_rt_take_lists(void* handle, int R, const int32_t* n_hits, int32_t* list) {
    HitLists* lists = static_cast<HitLists*>(handle);
    if (!lists) return;
    int64_t off = 0;
    for (int r = 0; r < R; ++r) {
        const int32_t* src = lists->per_thread[lists->thread_of[r]].data() + lists->start[r];
        std::memcpy(list + off, src, sizeof(int32_t) * (size_t)n_hits[r]);
        off += n_hits[r];
    }
    delete lists;
}

void splat_rt_free_lists(void* handle) { delete static_cast<HitLists*>(handle); }

// Gradients of splat_rt_fwd's outputs: grad_colors [R,D], grad_alphas [R] (of 1 - T), from the
// rays' lists (list, offsets [R] into it, n_hits) -> grad_means [N,3], grad_precs [N,6],
// grad_opacities [N], grad_feats [N,D] (overwritten).
void splat_rt_bwd(int R, const float* origins, const float* dirs, const float* tmin, const float* tmax, int N, int D,
                  const float* feats, const float* prims, const int32_t* ids, const int32_t* list,
                  const int64_t* offsets, const int32_t* n_hits, const float* colors, const float* trans,
                  const float* grad_colors, const float* grad_alphas, float* grad_means, float* grad_precs,
                  float* grad_opacities, float* grad_feats) {
    FlushDenormals ftz;
    const int64_t stride = 10 + (int64_t)D;  // per Gaussian: 3 mean, 6 precision, 1 opacity, D features
    std::memset(grad_means, 0, sizeof(float) * 3 * (size_t)N);
    std::memset(grad_precs, 0, sizeof(float) * 6 * (size_t)N);
    std::memset(grad_opacities, 0, sizeof(float) * (size_t)N);
    std::memset(grad_feats, 0, sizeof(float) * (size_t)D * N);
    if (R == 0 || N == 0) return;
    const Prim* pr = reinterpret_cast<const Prim*>(prims);
    const int T = omp_get_max_threads();
    std::vector<float> buf((size_t)T * stride * N, 0.f);
#pragma omp parallel
    {
        FlushDenormals ftz_thread;
        float* gm = buf.data() + (size_t)omp_get_thread_num() * stride * N;
        float* gp = gm + 3 * (int64_t)N;
        float* go = gp + 6 * (int64_t)N;
        float* gf = go + N;
        auto add = [](float* p, float v) { *p += v; };
#pragma omp for schedule(dynamic, 64)
        for (int r = 0; r < R; ++r) {
            if (n_hits[r] == 0) continue;
            const Ray ray = make_ray(origins + 3 * (int64_t)r, dirs + 3 * (int64_t)r, tmin[r], tmax[r]);
            list_backward(ray, pr, ids, list + offsets[r], n_hits[r], feats, D, colors + (int64_t)r * D, trans[r],
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
