// splat_raytrace.h: Gaussian ray tracing (3DGRT: Moenne-Loccoz et al., "3D Gaussian Ray Tracing:
// Fast Tracing of Particle Scenes", SIGGRAPH Asia 2024), header-only and shared by the CPU backend
// (rasterizer_cuda/cpu/raytrace_cpu.cpp) and the CUDA kernels (rasterizer_cuda/cuda/raytrace_kernels.cuh).
//
// A Gaussian is (mean mu, precision P = Sigma^-1 as 6 floats xx xy xz yy yz zz, opacity o). Along a ray
// o + t d its response peaks at t* = d.P(mu - o) / d.P d; with y = o + t* d - mu the peak is
// G = exp(-y.P y / 2), and the hit's alpha is min(0.99, o G), kept where o G >= 1/255 (the
// rasterizer's constants, splat_math.h). That set is the ellipsoid y.P y <= 2 ln(255 o): its
// axis-aligned box (half-size sqrt(2 ln(255 o) Sigma_ii)) is the proxy the BVH is built over, a
// tight box at an opacity-adaptive extent.
//
// Traversal: rounds of a k-buffer. Each round walks the BVH for the kBufferSize hits nearest after
// the last one composited (ordered by (t*, id), so equal depths are neither lost nor repeated),
// skipping boxes that end before it or start after the k-th hit found so far; the round's hits are
// composited front to back; rounds continue until the buffer comes back short or the transmittance
// would fall to 1e-4 (that hit and all behind it are left out, as the rasterizer does).
// The backward pass traces the same rounds again and un-composites (3DGRT's scheme): with the
// forward colour C and transmittance T_final, the colour behind hit i is C - (accumulated up to i).
//
// The BVH build (host only) is a median split on the longest centroid axis, leaves of <= 4. It also
// packs each Gaussian's mean, precision, opacity and hit bound into one 48-byte record in leaf order
// (`Prim`), so that a leaf's tests read contiguous memory; prims[j] maps record j to the Gaussian's id.
#pragma once

#include <math.h>
#include <stdint.h>

#include "splat_math.h"

#if !defined(__CUDA_ARCH__)
#include <algorithm>
#include <vector>
#endif

namespace splat {
namespace rt {

#ifndef SPLAT_RT_KBUFFER
#define SPLAT_RT_KBUFFER 16
#endif
constexpr int kBufferSize = SPLAT_RT_KBUFFER;  // hits per traversal round (the k-buffer; a compile-time size)
constexpr int kLeafSize = 4;      // Gaussians per BVH leaf (at most)
constexpr int kStackSize = 64;    // traversal stack (the median-split tree is ~log2(N/4) deep)
constexpr int kMaxChannels = 64;  // feature channels per ray in one pass

struct Node {          // 32 bytes
    float lo[3];
    int32_t left_first;  // internal: index of the left child (right = left + 1); leaf: first primitive
    float hi[3];
    int32_t count;       // 0: internal node; > 0: leaf with `count` primitives
};

// Extent (in standard deviations) at which o G = 1/255; <= 0 when the Gaussian can never reach it.
SPLAT_HD float extent2(float opacity) { return 2.f * logf(opacity / kAlphaThreshold); }

// Inverse of a symmetric 3x3 given as (xx xy xz yy yz zz); false when not positive definite.
SPLAT_HD bool sym_inverse(const float* p, float* out) {
    const float a = p[0], b = p[1], c = p[2], d = p[3], e = p[4], f = p[5];
    const float A = d * f - e * e, B = c * e - b * f, Cc = b * e - c * d;
    const float det = a * A + b * B + c * Cc;
    if (!(det > 0.f) || !(a > 0.f) || !(a * d - b * b > 0.f)) return false;
    const float inv = 1.f / det;
    out[0] = A * inv;
    out[1] = B * inv;
    out[2] = Cc * inv;
    out[3] = (a * f - c * c) * inv;
    out[4] = (b * c - a * e) * inv;
    out[5] = (a * d - b * b) * inv;
    return true;
}

SPLAT_HD void sym_mul(const float* P, const float* v, float* out) {
    out[0] = P[0] * v[0] + P[1] * v[1] + P[2] * v[2];
    out[1] = P[1] * v[0] + P[3] * v[1] + P[4] * v[2];
    out[2] = P[2] * v[0] + P[4] * v[1] + P[5] * v[2];
}

// Box of a Gaussian's hit ellipsoid; false when it can never be hit (opacity below 1/255, P not
// positive definite, or non-finite input).
SPLAT_HD bool gaussian_box(const float* mu, const float* P, float opacity, float* lo, float* hi) {
    const float k2 = extent2(opacity);
    float S[6];
    if (!(k2 > 0.f) || !sym_inverse(P, S)) return false;
    const float h[3] = {sqrtf(k2 * S[0]), sqrtf(k2 * S[3]), sqrtf(k2 * S[5])};
    for (int i = 0; i < 3; ++i) {
        lo[i] = mu[i] - h[i];
        hi[i] = mu[i] + h[i];
        if (!(lo[i] <= hi[i]) || !isfinite(lo[i]) || !isfinite(hi[i])) return false;
    }
    return true;
}

// One Gaussian as the traversal reads it (leaf order).
struct Prim {
    float mu[3];
    float P[6];
    float opacity;
    float qmax;  // 2 ln(255 opacity): the hit ellipsoid is y.P y <= qmax
    float pad;
};

// The ray's hit on one Gaussian: depth t (of the peak response), the unclamped alpha o G and y.
struct Hit {
    float t, raw_alpha, G;
    float y[3];
};

SPLAT_HD bool ray_gaussian(const float* o, const float* d, const Prim& g, Hit& h) {
    const float x[3] = {g.mu[0] - o[0], g.mu[1] - o[1], g.mu[2] - o[2]};
    float Pd[3];
    sym_mul(g.P, d, Pd);
    const float a = d[0] * Pd[0] + d[1] * Pd[1] + d[2] * Pd[2];
    if (!(a > 0.f)) return false;
    const float t = (x[0] * Pd[0] + x[1] * Pd[1] + x[2] * Pd[2]) / a;
    const float y[3] = {o[0] + t * d[0] - g.mu[0], o[1] + t * d[1] - g.mu[1], o[2] + t * d[2] - g.mu[2]};
    float Py[3];
    sym_mul(g.P, y, Py);
    const float q = max_f(0.f, y[0] * Py[0] + y[1] * Py[1] + y[2] * Py[2]);
    if (q > g.qmax * 1.001f + 1e-3f) return false;  // clearly outside: skip the exp (the exact test follows)
    const float G = fast_exp(-0.5f * q);  // the rasterizer's exp (splat_math.h): no libm call
    const float raw = g.opacity * G;
    if (!(raw >= kAlphaThreshold)) return false;
    h.t = t;
    h.raw_alpha = raw;
    h.G = G;
    h.y[0] = y[0];
    h.y[1] = y[1];
    h.y[2] = y[2];
    return true;
}

SPLAT_HD void slab(const Node& n, const float* o, const float* inv_d, float& t0, float& t1) {
    t0 = -INFINITY;
    t1 = INFINITY;
    for (int i = 0; i < 3; ++i) {
        const float a = (n.lo[i] - o[i]) * inv_d[i], b = (n.hi[i] - o[i]) * inv_d[i];
        t0 = max_f(t0, min_f(a, b));
        t1 = min_f(t1, max_f(a, b));
    }
}

SPLAT_HD bool key_after(float t, int id, float t_ref, int id_ref) { return t > t_ref || (t == t_ref && id > id_ref); }

struct Ray {
    float o[3], d[3], inv_d[3], tmin, tmax;
};

SPLAT_HD Ray make_ray(const float* o, const float* d, float tmin, float tmax) {
    Ray r;
    for (int i = 0; i < 3; ++i) {
        r.o[i] = o[i];
        r.d[i] = d[i];
        const float di = fabsf(d[i]) > 1e-20f ? d[i] : copysignf(1e-20f, d[i]);
        r.inv_d[i] = 1.f / di;
    }
    r.tmin = tmin;
    r.tmax = tmax;
    return r;
}

SPLAT_HD bool node_in_reach(const Node& node, const Ray& r, float t_last, float far_t) {
    float t0, t1;
    slab(node, r.o, r.inv_d, t0, t1);
    return !(t0 > t1 || t1 < r.tmin || t1 < t_last || t0 > far_t);
}

// One traversal round: the (up to) kBufferSize hits with (t, Gaussian id) after (t_last, id_last) and t
// in [tmin, tmax], nearest first, into kt / kid / krec (record indices, leaf order); returns how many.
// Ties in depth go by Gaussian id, so the order does not depend on the tree.
SPLAT_HD int collect_hits(const Node* nodes, const Prim* prims, const int32_t* ids, const Ray& r, float t_last,
                          int id_last, float* kt, int* kid, int* krec) {
    int n = 0;
    if (!node_in_reach(nodes[0], r, t_last, r.tmax)) return 0;
    int stack[kStackSize];
    int sp = 0;
    stack[sp++] = 0;
    while (sp > 0) {
        const Node& node = nodes[stack[--sp]];
        const float far_t = n == kBufferSize ? kt[kBufferSize - 1] : r.tmax;
        if (node.count == 0) {  // push the children that can still hold a hit, the nearer one on top
            const int L = node.left_first;
            float a0, a1, b0, b1;
            slab(nodes[L], r.o, r.inv_d, a0, a1);
            slab(nodes[L + 1], r.o, r.inv_d, b0, b1);
            const bool a_ok = !(a0 > a1 || a1 < r.tmin || a1 < t_last || a0 > far_t);
            const bool b_ok = !(b0 > b1 || b1 < r.tmin || b1 < t_last || b0 > far_t);
            if (a_ok && b_ok && sp + 2 <= kStackSize) {
                const bool a_first = a0 <= b0;
                stack[sp++] = a_first ? L + 1 : L;
                stack[sp++] = a_first ? L : L + 1;
            } else if (a_ok && sp < kStackSize) {
                stack[sp++] = L;
            } else if (b_ok && sp < kStackSize) {
                stack[sp++] = L + 1;
            }
            continue;
        }
        if (n == kBufferSize && !node_in_reach(node, r, t_last, far_t)) continue;  // the buffer filled meanwhile
        for (int j = node.left_first; j < node.left_first + node.count; ++j) {
            Hit h;
            if (!ray_gaussian(r.o, r.d, prims[j], h)) continue;
            if (h.t < r.tmin || h.t > r.tmax) continue;
            const int id = ids[j];
            if (!key_after(h.t, id, t_last, id_last)) continue;
            if (n == kBufferSize && !key_after(kt[n - 1], kid[n - 1], h.t, id)) continue;
            int pos = n < kBufferSize ? n++ : kBufferSize - 1;
            while (pos > 0 && key_after(kt[pos - 1], kid[pos - 1], h.t, id)) {
                kt[pos] = kt[pos - 1];
                kid[pos] = kid[pos - 1];
                krec[pos] = krec[pos - 1];
                --pos;
            }
            kt[pos] = h.t;
            kid[pos] = id;
            krec[pos] = j;
        }
    }
    return n;
}

// Walk a ray's hits front to back, round by round, calling visit(record, hit, alpha, T before it) for
// each Gaussian composited; stops before the hit that would take T to 1e-4. Returns T after the last.
template <class Visit>
SPLAT_HD float walk_hits(const Node* nodes, const Prim* prims, const int32_t* ids, const Ray& r, Visit visit) {
    float T = 1.f, t_last = -INFINITY;
    int id_last = -1;
    float kt[kBufferSize];
    int kid[kBufferSize], krec[kBufferSize];
    while (true) {
        const int n = collect_hits(nodes, prims, ids, r, t_last, id_last, kt, kid, krec);
        for (int j = 0; j < n; ++j) {
            Hit h = {};
            ray_gaussian(r.o, r.d, prims[krec[j]], h);  // true: the same test collect_hits passed
            const float alpha = min_f(kMaxAlpha, h.raw_alpha);
            const float T_next = T * (1.f - alpha);
            if (T_next <= kTransmittanceEps) return T;
            visit(krec[j], h, alpha, T);
            T = T_next;
        }
        if (n < kBufferSize) return T;
        t_last = kt[n - 1];
        id_last = kid[n - 1];
    }
}

// Composite one ray: colour (D channels, plus T_final * background when given) and the final
// transmittance; record(j, record) is called for the j-th Gaussian composited. Returns their count.
template <class Record>
SPLAT_HD int trace_forward(const Ray& r, const Node* nodes, const Prim* prims, const int32_t* ids,
                           const float* feats, int D, const float* bg, float* color, float& T_out, Record record) {
    for (int c = 0; c < D; ++c) color[c] = 0.f;
    int n_used = 0;
    const float T = walk_hits(nodes, prims, ids, r, [&](int rec, const Hit&, float alpha, float T_before) {
        const float w = alpha * T_before;
        const float* f = feats + (int64_t)ids[rec] * D;
        for (int c = 0; c < D; ++c) color[c] += w * f[c];
        record(n_used++, rec);
    });
    if (bg)
        for (int c = 0; c < D; ++c) color[c] += T * bg[c];
    T_out = T;
    return n_used;
}

// The gradient of one composited hit, given the colour accumulated through it (acc, updated here),
// the ray's outputs (color incl. background, T_final) and their gradients. add(ptr, value) accumulates.
template <class Add>
SPLAT_HD void hit_backward(const Prim& g, int id, const Hit& h, float alpha, float T, const float* feats, int D,
                           const float* color, float T_final, const float* grad_color, float grad_alpha, float* acc,
                           float* g_means, float* g_precs, float* g_opac, float* g_feats, Add add) {
    const float w = alpha * T;
    const float inv_one_minus = 1.f / (1.f - alpha);
    float dL_dalpha = grad_alpha * T_final * inv_one_minus;
    const float* f = feats + (int64_t)id * D;
    for (int c = 0; c < D; ++c) {
        acc[c] += w * f[c];
        const float rest = color[c] - acc[c];  // what lies behind this hit (and the background)
        dL_dalpha += grad_color[c] * (T * f[c] - rest * inv_one_minus);
        add(g_feats + (int64_t)id * D + c, grad_color[c] * w);
    }
    if (h.raw_alpha > kMaxAlpha) return;  // clamped: no gradient to opacity or shape
    add(g_opac + id, dL_dalpha * h.G);
    const float dL_dq = -0.5f * h.raw_alpha * dL_dalpha;  // q = y.P y at the peak (t* needs no term)
    float Py[3];
    sym_mul(g.P, h.y, Py);
    for (int i = 0; i < 3; ++i) add(g_means + 3 * (int64_t)id + i, -2.f * dL_dq * Py[i]);
    const float* y = h.y;
    float* gp = g_precs + 6 * (int64_t)id;
    add(gp + 0, dL_dq * y[0] * y[0]);
    add(gp + 1, dL_dq * 2.f * y[0] * y[1]);
    add(gp + 2, dL_dq * 2.f * y[0] * y[2]);
    add(gp + 3, dL_dq * y[1] * y[1]);
    add(gp + 4, dL_dq * 2.f * y[1] * y[2]);
    add(gp + 5, dL_dq * y[2] * y[2]);
}

// Backward of trace_forward for one ray by tracing it again (3DGRT's scheme, used by the CUDA kernels).
template <class Add>
SPLAT_HD void trace_backward(const Ray& r, const Node* nodes, const Prim* prims, const int32_t* ids,
                             const float* feats, int D, const float* color, float T_final, const float* grad_color,
                             float grad_alpha, float* g_means, float* g_precs, float* g_opac, float* g_feats,
                             Add add) {
    float acc[kMaxChannels];
    for (int c = 0; c < D; ++c) acc[c] = 0.f;
    walk_hits(nodes, prims, ids, r, [&](int rec, const Hit& h, float alpha, float T) {
        hit_backward(prims[rec], ids[rec], h, alpha, T, feats, D, color, T_final, grad_color, grad_alpha, acc,
                     g_means, g_precs, g_opac, g_feats, add);
    });
}

// Backward of trace_forward for one ray from the records it composited (in order), without tracing:
// what the CPU backend does, having kept each ray's list in the forward.
template <class Add>
SPLAT_HD void list_backward(const Ray& r, const Prim* prims, const int32_t* ids, const int32_t* list, int n,
                            const float* feats, int D, const float* color, float T_final, const float* grad_color,
                            float grad_alpha, float* g_means, float* g_precs, float* g_opac, float* g_feats,
                            Add add) {
    float acc[kMaxChannels];
    for (int c = 0; c < D; ++c) acc[c] = 0.f;
    float T = 1.f;
    for (int k = 0; k < n; ++k) {
        const int rec = list[k];
        Hit h = {};
        ray_gaussian(r.o, r.d, prims[rec], h);
        const float alpha = min_f(kMaxAlpha, h.raw_alpha);
        hit_backward(prims[rec], ids[rec], h, alpha, T, feats, D, color, T_final, grad_color, grad_alpha, acc, g_means,
                     g_precs, g_opac, g_feats, add);
        T *= 1.f - alpha;
    }
}

#if !defined(__CUDA_ARCH__)
// Build the BVH over the Gaussians that can be hit (means [N,3], precisions [N,6], opacities [N]):
// nodes (room for 2 N), their records in leaf order (room for N) and each record's Gaussian id.
// Returns the node count (0 when no Gaussian can be hit: then there is nothing to trace).
inline int build_bvh(int N, const float* means, const float* precs, const float* opacities, Node* nodes,
                     Prim* out_prims, int32_t* ids) {
    std::vector<float> lo(3 * (size_t)N), hi(3 * (size_t)N), ctr(3 * (size_t)N);
    int M = 0;
    for (int g = 0; g < N; ++g) {
        if (!gaussian_box(means + 3 * g, precs + 6 * g, opacities[g], &lo[3 * g], &hi[3 * g])) continue;
        for (int i = 0; i < 3; ++i) ctr[3 * g + i] = 0.5f * (lo[3 * g + i] + hi[3 * g + i]);
        ids[M++] = g;
    }
    if (M == 0) return 0;
    int n_nodes = 1;
    struct Item { int node, first, count, depth; };
    std::vector<Item> todo{{0, 0, M, 0}};
    while (!todo.empty()) {
        Item it = todo.back();
        todo.pop_back();
        Node& node = nodes[it.node];
        float clo[3] = {INFINITY, INFINITY, INFINITY}, chi[3] = {-INFINITY, -INFINITY, -INFINITY};
        for (int i = 0; i < 3; ++i) {
            node.lo[i] = INFINITY;
            node.hi[i] = -INFINITY;
        }
        for (int k = it.first; k < it.first + it.count; ++k) {
            const int g = ids[k];
            for (int i = 0; i < 3; ++i) {
                node.lo[i] = std::min(node.lo[i], lo[3 * g + i]);
                node.hi[i] = std::max(node.hi[i], hi[3 * g + i]);
                clo[i] = std::min(clo[i], ctr[3 * g + i]);
                chi[i] = std::max(chi[i], ctr[3 * g + i]);
            }
        }
        if (it.count <= kLeafSize || it.depth >= kStackSize - 4) {
            node.left_first = it.first;
            node.count = it.count;
            continue;
        }
        int axis = 0;
        for (int i = 1; i < 3; ++i)
            if (chi[i] - clo[i] > chi[axis] - clo[axis]) axis = i;
        const int half = it.count / 2;
        int32_t* b = ids + it.first;
        std::nth_element(b, b + half, b + it.count,
                         [&](int32_t u, int32_t v) { return ctr[3 * u + axis] < ctr[3 * v + axis]; });
        const int left = n_nodes;
        n_nodes += 2;
        node.left_first = left;
        node.count = 0;
        todo.push_back({left, it.first, half, it.depth + 1});
        todo.push_back({left + 1, it.first + half, it.count - half, it.depth + 1});
    }
    for (int j = 0; j < M; ++j) {
        const int g = ids[j];
        Prim& p = out_prims[j];
        for (int i = 0; i < 3; ++i) p.mu[i] = means[3 * g + i];
        for (int i = 0; i < 6; ++i) p.P[i] = precs[6 * g + i];
        p.opacity = opacities[g];
        p.qmax = extent2(opacities[g]);
        p.pad = 0.f;
    }
    return n_nodes;
}
#endif

}  // namespace rt
}  // namespace splat
