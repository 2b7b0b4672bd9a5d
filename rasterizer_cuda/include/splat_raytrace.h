// splat_raytrace.h: Gaussian ray tracing (3DGRT: Moenne-Loccoz et al., "3D Gaussian Ray Tracing:
// Fast Tracing of Particle Scenes", SIGGRAPH Asia 2024), header-only and shared by the CPU backend
// (rasterizer_cuda/cpu/raytrace_cpu.cpp) and the CUDA kernels (rasterizer_cuda/cuda/raytrace_cuda.cu).
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
// The BVH build (host only) is a median split on the longest centroid axis, leaves of <= 4.
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

constexpr int kBufferSize = 16;   // hits per traversal round (the k-buffer)
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

// The ray's hit on one Gaussian: depth t (of the peak response), the unclamped alpha o G and y.
struct Hit {
    float t, raw_alpha, G;
    float y[3];
};

SPLAT_HD bool ray_gaussian(const float* o, const float* d, const float* mu, const float* P, float opacity, Hit& h) {
    const float x[3] = {mu[0] - o[0], mu[1] - o[1], mu[2] - o[2]};
    float Pd[3];
    sym_mul(P, d, Pd);
    const float a = d[0] * Pd[0] + d[1] * Pd[1] + d[2] * Pd[2];
    if (!(a > 0.f)) return false;
    const float t = (x[0] * Pd[0] + x[1] * Pd[1] + x[2] * Pd[2]) / a;
    const float y[3] = {o[0] + t * d[0] - mu[0], o[1] + t * d[1] - mu[1], o[2] + t * d[2] - mu[2]};
    float Py[3];
    sym_mul(P, y, Py);
    const float q = fmaxf(0.f, y[0] * Py[0] + y[1] * Py[1] + y[2] * Py[2]);
    const float G = expf(-0.5f * q);
    const float raw = opacity * G;
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
        t0 = fmaxf(t0, fminf(a, b));
        t1 = fminf(t1, fmaxf(a, b));
    }
}

SPLAT_HD bool key_after(float t, int id, float t_ref, int id_ref) { return t > t_ref || (t == t_ref && id > id_ref); }

// One traversal round: the (up to) kBufferSize hits with (t, id) after (t_last, id_last) and t in
// [tmin, tmax], nearest first, into kt / kid; returns how many.
SPLAT_HD int collect_hits(const Node* nodes, const int32_t* prims, const float* means, const float* precs,
                          const float* opacities, const float* o, const float* d, const float* inv_d, float tmin,
                          float tmax, float t_last, int id_last, float* kt, int* kid) {
    int n = 0;
    int stack[kStackSize];
    int sp = 0;
    stack[sp++] = 0;
    {
        float t0, t1;
        slab(nodes[0], o, inv_d, t0, t1);
        if (t0 > t1 || t1 < tmin || t1 < t_last || t0 > tmax) return 0;
    }
    while (sp > 0) {
        const Node& node = nodes[stack[--sp]];
        if (node.count == 0) {  // push the children that can still hold a hit, the nearer one on top
            const int L = node.left_first;
            const float far_t = n == kBufferSize ? kt[kBufferSize - 1] : tmax;
            float a0, a1, b0, b1;
            slab(nodes[L], o, inv_d, a0, a1);
            slab(nodes[L + 1], o, inv_d, b0, b1);
            const bool a_ok = !(a0 > a1 || a1 < tmin || a1 < t_last || a0 > far_t);
            const bool b_ok = !(b0 > b1 || b1 < tmin || b1 < t_last || b0 > far_t);
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
        if (n == kBufferSize) {  // the k-buffer filled since this leaf was pushed: is it still in reach?
            float t0, t1;
            slab(node, o, inv_d, t0, t1);
            if (t0 > kt[kBufferSize - 1]) continue;
        }
        for (int j = 0; j < node.count; ++j) {
            const int g = prims[node.left_first + j];
            Hit h = {};
            if (!ray_gaussian(o, d, means + 3 * g, precs + 6 * g, opacities[g], h)) continue;
            if (h.t < tmin || h.t > tmax || !key_after(h.t, g, t_last, id_last)) continue;
            if (n == kBufferSize && !key_after(kt[n - 1], kid[n - 1], h.t, g)) continue;
            int pos = n < kBufferSize ? n++ : kBufferSize - 1;
            while (pos > 0 && key_after(kt[pos - 1], kid[pos - 1], h.t, g)) {
                kt[pos] = kt[pos - 1];
                kid[pos] = kid[pos - 1];
                --pos;
            }
            kt[pos] = h.t;
            kid[pos] = g;
        }
    }
    return n;
}

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

// Composite one ray front to back: colour (D channels, plus T_final * background when given) and
// the final transmittance; returns the number of Gaussians composited.
SPLAT_HD int trace_forward(const Ray& r, const Node* nodes, const int32_t* prims, const float* means,
                           const float* precs, const float* opacities, const float* feats, int D, const float* bg,
                           float* color, float& T_out) {
    for (int c = 0; c < D; ++c) color[c] = 0.f;
    float T = 1.f, t_last = -INFINITY;
    int id_last = -1, n_used = 0;
    float kt[kBufferSize];
    int kid[kBufferSize];
    bool done = false;
    while (!done) {
        const int n = collect_hits(nodes, prims, means, precs, opacities, r.o, r.d, r.inv_d, r.tmin, r.tmax, t_last,
                                   id_last, kt, kid);
        for (int j = 0; j < n; ++j) {
            const int g = kid[j];
            Hit h = {};
            ray_gaussian(r.o, r.d, means + 3 * g, precs + 6 * g, opacities[g], h);
            const float alpha = fminf(kMaxAlpha, h.raw_alpha);
            const float T_next = T * (1.f - alpha);
            if (T_next <= kTransmittanceEps) {
                done = true;
                break;
            }
            const float w = alpha * T;
            for (int c = 0; c < D; ++c) color[c] += w * feats[(int64_t)g * D + c];
            T = T_next;
            ++n_used;
        }
        if (n < kBufferSize) break;
        t_last = kt[n - 1];
        id_last = kid[n - 1];
    }
    if (bg)
        for (int c = 0; c < D; ++c) color[c] += T * bg[c];
    T_out = T;
    return n_used;
}

// Backward of trace_forward for one ray: given its outputs (color incl. background, T_final) and
// their gradients (grad_color [D], grad_alpha of 1 - T_final), adds d loss / d (mean, precision,
// opacity, features) of every Gaussian it composited through add(ptr, value).
template <class Add>
SPLAT_HD void trace_backward(const Ray& r, const Node* nodes, const int32_t* prims, const float* means,
                             const float* precs, const float* opacities, const float* feats, int D,
                             const float* color, float T_final, const float* grad_color, float grad_alpha,
                             float* g_means, float* g_precs, float* g_opac, float* g_feats, Add add) {
    float acc[kMaxChannels];
    for (int c = 0; c < D; ++c) acc[c] = 0.f;
    float T = 1.f, t_last = -INFINITY;
    int id_last = -1;
    float kt[kBufferSize];
    int kid[kBufferSize];
    bool done = false;
    while (!done) {
        const int n = collect_hits(nodes, prims, means, precs, opacities, r.o, r.d, r.inv_d, r.tmin, r.tmax, t_last,
                                   id_last, kt, kid);
        for (int j = 0; j < n; ++j) {
            const int g = kid[j];
            Hit h = {};
            ray_gaussian(r.o, r.d, means + 3 * g, precs + 6 * g, opacities[g], h);
            const float alpha = fminf(kMaxAlpha, h.raw_alpha);
            const float T_next = T * (1.f - alpha);
            if (T_next <= kTransmittanceEps) {
                done = true;
                break;
            }
            const float w = alpha * T;
            const float inv_one_minus = 1.f / (1.f - alpha);
            float dL_dalpha = grad_alpha * T_final * inv_one_minus;
            const float* f = feats + (int64_t)g * D;
            for (int c = 0; c < D; ++c) {
                acc[c] += w * f[c];
                const float rest = color[c] - acc[c];
                dL_dalpha += grad_color[c] * (T * f[c] - rest * inv_one_minus);
                add(g_feats + (int64_t)g * D + c, grad_color[c] * w);
            }
            if (h.raw_alpha <= kMaxAlpha) {
                add(g_opac + g, dL_dalpha * h.G);
                const float dL_dq = -0.5f * h.raw_alpha * dL_dalpha;  // q = y.P y
                float Py[3];
                sym_mul(precs + 6 * g, h.y, Py);
                for (int i = 0; i < 3; ++i) add(g_means + 3 * g + i, -2.f * dL_dq * Py[i]);
                const float* y = h.y;
                add(g_precs + 6 * g + 0, dL_dq * y[0] * y[0]);
                add(g_precs + 6 * g + 1, dL_dq * 2.f * y[0] * y[1]);
                add(g_precs + 6 * g + 2, dL_dq * 2.f * y[0] * y[2]);
                add(g_precs + 6 * g + 3, dL_dq * y[1] * y[1]);
                add(g_precs + 6 * g + 4, dL_dq * 2.f * y[1] * y[2]);
                add(g_precs + 6 * g + 5, dL_dq * y[2] * y[2]);
            }
            T = T_next;
        }
        if (n < kBufferSize) break;
        t_last = kt[n - 1];
        id_last = kid[n - 1];
    }
}

#if !defined(__CUDA_ARCH__)
// Build the BVH over the Gaussians that can be hit. nodes must hold 2 N entries, prims N; returns
// the node count (0 when no Gaussian can be hit: then there is nothing to trace).
inline int build_bvh(int N, const float* means, const float* precs, const float* opacities, Node* nodes,
                     int32_t* prims) {
    std::vector<float> lo(3 * (size_t)N), hi(3 * (size_t)N), ctr(3 * (size_t)N);
    int M = 0;
    for (int g = 0; g < N; ++g) {
        if (!gaussian_box(means + 3 * g, precs + 6 * g, opacities[g], &lo[3 * g], &hi[3 * g])) continue;
        for (int i = 0; i < 3; ++i) ctr[3 * g + i] = 0.5f * (lo[3 * g + i] + hi[3 * g + i]);
        prims[M++] = g;
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
            const int g = prims[k];
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
        int32_t* b = prims + it.first;
        std::nth_element(b, b + half, b + it.count,
                         [&](int32_t u, int32_t v) { return ctr[3 * u + axis] < ctr[3 * v + axis]; });
        const int left = n_nodes;
        n_nodes += 2;
        node.left_first = left;
        node.count = 0;
        todo.push_back({left, it.first, half, it.depth + 1});
        todo.push_back({left + 1, it.first + half, it.count - half, it.depth + 1});
    }
    return n_nodes;
}
#endif

}  // namespace rt
}  // namespace splat
