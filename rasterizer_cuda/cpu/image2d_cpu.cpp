// image2d_cpu.cpp: the native CPU kernels of the 2D image Gaussians (C++17,
// OpenMP), built into the same library as splat_cpu.cpp.
//
// Tile binning is the 3D rasterizer's (splat_isect_count / splat_isect_fill with
// zero depths, so each tile lists its Gaussians in index order). Compositing is
// parallel over tiles; inside a tile each Gaussian only visits the pixels of
// its bounding box, which keeps the work proportional to its footprint (these
// Gaussians are small: a few pixels across). The per-pixel math is in
// ../include/image2d_math.h.
//
// Backward: per-(tile, Gaussian) gradient slots written by the one thread that
// owns the tile, then summed per Gaussian in a fixed order: no atomics, and
// results are bit-for-bit repeatable.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../include/image2d_math.h"
#include "flush_denormals.h"
#include "slot_sums.h"

using namespace splat;

namespace {

struct Box { int x0, x1, y0, y1; };  // pixel rows/columns [x0, x1) x [y0, y1), tile-local

// The pixels of tile (tx0, ty0) whose centres lie inside a Gaussian's bounding box.
inline Box pixel_box(float mx, float my, int rx, int ry, int tx0, int ty0, int tile_size, int width, int height) {
    int x0 = (int)ceilf(mx - rx - 0.5f), x1 = (int)floorf(mx + rx - 0.5f) + 1;
    int y0 = (int)ceilf(my - ry - 0.5f), y1 = (int)floorf(my + ry - 0.5f) + 1;
    int ex = std::min(tx0 + tile_size, width), ey = std::min(ty0 + tile_size, height);
    return {std::max(x0, tx0) - tx0, std::min(x1, ex) - tx0, std::max(y0, ty0) - ty0, std::min(y1, ey) - ty0};
}

struct Tile {
    int64_t s, e;   // range in the intersection list
    int tx0, ty0;   // first pixel
    int pw, ph;     // pixels inside the image
};

inline Tile tile_at(int64_t t, int tw, int tile_size, int width, int height, const int64_t* offsets) {
    Tile r;
    r.s = offsets[t];
    r.e = offsets[t + 1];
    r.tx0 = (int)(t % tw) * tile_size;
    r.ty0 = (int)(t / tw) * tile_size;
    r.pw = std::min(tile_size, width - r.tx0);
    r.ph = std::min(tile_size, height - r.ty0);
    return r;
}


// ------------------------------------------------------------------ accumulated sum, RGB
// The common case (D = 3). A Gaussian visits only the rows of its box, but
// whole tile rows: the row's pixels are the SIMD lanes (one AVX-512 vector for
// 16-pixel tiles, TS a compile-time constant), and pixels outside the box get
// weight 0 from the support test. Box rows are short (a few pixels), so
// clipping them to the box would leave the loops scalar. Channel-planar tile
// buffers. TS = 0 takes the tile size at run time.
template <int TS>
void sum_fwd_rgb(const Tile& tl, int ts_rt, int width, int height, const float* means2d, const float* conics,
                 const float* colors, const int32_t* radii, const int32_t* flatten_ids, float* __restrict acc,
                 float* __restrict wsum) {
    const int ts = TS ? TS : ts_rt;
    const int P = ts * ts;
    float* __restrict a0 = acc;
    float* __restrict a1 = acc + P;
    float* __restrict a2 = acc + 2 * P;
    for (int64_t i = tl.s; i < tl.e; ++i) {
        const int64_t g = flatten_ids[i];
        const float mx = means2d[2 * g], my = means2d[2 * g + 1];
        const float a = conics[3 * g], b = conics[3 * g + 1], c = conics[3 * g + 2];
        const float c0 = colors[3 * g], c1 = colors[3 * g + 1], c2 = colors[3 * g + 2];
        const Box bx = pixel_box(mx, my, radii[2 * g], radii[2 * g + 1], tl.tx0, tl.ty0, ts, width, height);
        if (bx.x1 <= bx.x0) continue;
        const float mxl = mx - (tl.tx0 + 0.5f);
        for (int y = bx.y0; y < bx.y1; ++y) {
            const float dy = my - (tl.ty0 + y + 0.5f);
            float* __restrict r0 = a0 + y * ts;
            float* __restrict r1 = a1 + y * ts;
            float* __restrict r2 = a2 + y * ts;
            float* __restrict rw = wsum + y * ts;
#pragma omp simd
            for (int x = 0; x < ts; ++x) {
                const float w = image2d_weight(a, b, c, mxl - (float)x, dy);
                rw[x] += w;
                r0[x] += w * c0;
                r1[x] += w * c1;
                r2[x] += w * c2;
            }
        }
    }
}

template <int TS>
void sum_bwd_rgb(const Tile& tl, int ts_rt, int width, int height, const float* means2d, const float* conics,
                 const float* colors, const int32_t* radii, const int32_t* flatten_ids, const float* __restrict vC,
                 float* slots) {
    const int ts = TS ? TS : ts_rt;
    const int P = ts * ts;
    for (int64_t i = tl.s; i < tl.e; ++i) {
        const int64_t g = flatten_ids[i];
        const float mx = means2d[2 * g], my = means2d[2 * g + 1];
        const float a = conics[3 * g], b = conics[3 * g + 1], c = conics[3 * g + 2];
        const float c0 = colors[3 * g], c1 = colors[3 * g + 1], c2 = colors[3 * g + 2];
        const Box bx = pixel_box(mx, my, radii[2 * g], radii[2 * g + 1], tl.tx0, tl.ty0, ts, width, height);
        const float mxl = mx - (tl.tx0 + 0.5f);
        // per-lane partial sums over the rows, reduced once per (tile, Gaussian)
        float L[8][TS ? TS : 64] = {};
        for (int y = bx.y0; y < bx.y1 && bx.x0 < bx.x1; ++y) {
            const float dy = my - (tl.ty0 + y + 0.5f);
            const float* __restrict v0 = vC + y * ts;
            const float* __restrict v1 = vC + P + y * ts;
            const float* __restrict v2 = vC + 2 * P + y * ts;
#pragma omp simd
            for (int x = 0; x < ts; ++x) {
                const float dx = mxl - (float)x;
                const float w = image2d_weight(a, b, c, dx, dy);
                const float g0 = v0[x], g1 = v1[x], g2 = v2[x];
                L[5][x] += w * g0;
                L[6][x] += w * g1;
                L[7][x] += w * g2;
                const float vs = -w * (c0 * g0 + c1 * g1 + c2 * g2);
                L[0][x] += vs * (a * dx + b * dy);
                L[1][x] += vs * (b * dx + c * dy);
                L[2][x] += vs * 0.5f * dx * dx;
                L[3][x] += vs * dx * dy;
                L[4][x] += vs * 0.5f * dy * dy;
            }
        }
        float sums[8];
        for (int k = 0; k < 8; ++k) {
            float t = 0.f;
            for (int x = 0; x < ts; ++x) t += L[k][x];
            sums[k] = t;
        }
        const float smx = sums[0], smy = sums[1], sa = sums[2], sb = sums[3], sc = sums[4], s0 = sums[5],
                    s1 = sums[6], s2 = sums[7];
        float* slot = slots + (size_t)i * 8;
        slot[0] = smx; slot[1] = smy; slot[2] = sa; slot[3] = sb; slot[4] = sc;
        slot[5] = s0; slot[6] = s1; slot[7] = s2;
    }
}

}  // namespace

extern "C" {

// Forward. means2d [N,2], conics [N,3], colors [N,D], radii [N,2] (int32, the
// bounding-box half sizes), tile_offsets [th*tw + 1], flatten_ids [M].
// topk = 0: accumulated sum; topk = K > 0: top-K normalised blending.
// Writes out [H,W,D], out_wsum [H,W] (the sum of the weights used), and for
// top-K topk_ids [H,W,K] (intersection indices, -1 where fewer than K).
void splat_img_fwd(int N, int D, int width, int height, int tile_size, int tw, int th, int topk,
                   const float* means2d, const float* conics, const float* colors, const int32_t* radii,
                   const int64_t* tile_offsets, const int32_t* flatten_ids, float* out, float* out_wsum,
                   int32_t* topk_ids) {
    (void)N;
    const int64_t T = (int64_t)tw * th;
    const int P = tile_size * tile_size;
    const int K = topk;
#pragma omp parallel
    {
        FlushDenormals ftz;
        std::vector<float> acc((size_t)P * D), wsum(P), vals((size_t)P * std::max(K, 1));
        std::vector<int32_t> ids((size_t)P * std::max(K, 1));
        std::vector<int> cnt(P);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < T; ++t) {
            const Tile tl = tile_at(t, tw, tile_size, width, height, tile_offsets);
            std::fill(acc.begin(), acc.end(), 0.f);
            std::fill(wsum.begin(), wsum.end(), 0.f);
            std::fill(cnt.begin(), cnt.end(), 0);
            const bool rgb_sum = K == 0 && D == 3;
            if (rgb_sum && tile_size == 16)
                sum_fwd_rgb<16>(tl, tile_size, width, height, means2d, conics, colors, radii, flatten_ids, acc.data(),
                            wsum.data());
            else if (rgb_sum)
                sum_fwd_rgb<0>(tl, tile_size, width, height, means2d, conics, colors, radii, flatten_ids, acc.data(),
                               wsum.data());
            for (int64_t i = rgb_sum ? tl.e : tl.s; i < tl.e; ++i) {
                const int64_t g = flatten_ids[i];
                const float mx = means2d[2 * g], my = means2d[2 * g + 1];
                const float a = conics[3 * g], b = conics[3 * g + 1], c = conics[3 * g + 2];
                const Box bx = pixel_box(mx, my, radii[2 * g], radii[2 * g + 1], tl.tx0, tl.ty0, tile_size, width,
                                         height);
                const float* col = colors + g * D;
                for (int y = bx.y0; y < bx.y1; ++y) {
                    const float dy = my - (tl.ty0 + y + 0.5f);
                    for (int x = bx.x0; x < bx.x1; ++x) {
                        const float dx = mx - (tl.tx0 + x + 0.5f);
                        const float w = image2d_weight(a, b, c, dx, dy);
                        if (w == 0.f) continue;
                        const int p = y * tile_size + x;
                        if (K == 0) {
                            wsum[p] += w;
                            float* ap = &acc[(size_t)p * D];
                            for (int d = 0; d < D; ++d) ap[d] += w * col[d];
                        } else {
                            topk_insert(&vals[(size_t)p * K], &ids[(size_t)p * K], cnt[p], K, w, (int32_t)i);
                        }
                    }
                }
            }
            for (int y = 0; y < tl.ph; ++y)
                for (int x = 0; x < tl.pw; ++x) {
                    const int p = y * tile_size + x;
                    const int64_t pix = (int64_t)(tl.ty0 + y) * width + tl.tx0 + x;
                    float* o = out + pix * D;
                    if (K == 0) {
                        if (rgb_sum)
                            for (int d = 0; d < 3; ++d) o[d] = acc[(size_t)d * P + p];
                        else
                            memcpy(o, &acc[(size_t)p * D], sizeof(float) * D);
                        out_wsum[pix] = wsum[p];
                        continue;
                    }
                    const float* v = &vals[(size_t)p * K];
                    const int32_t* id = &ids[(size_t)p * K];
                    float W = 0.f;
                    for (int j = 0; j < cnt[p]; ++j) W += v[j];
                    const float inv = 1.f / (W + kTopKEps);
                    for (int d = 0; d < D; ++d) o[d] = 0.f;
                    for (int j = 0; j < cnt[p]; ++j) {
                        const float* col = colors + (int64_t)flatten_ids[id[j]] * D;
                        for (int d = 0; d < D; ++d) o[d] += v[j] * col[d];
                    }
                    for (int d = 0; d < D; ++d) o[d] *= inv;
                    out_wsum[pix] = W;
                    int32_t* ti = topk_ids + pix * K;
                    for (int j = 0; j < K; ++j) ti[j] = j < cnt[p] ? id[j] : -1;
                }
        }
    }
}

// Backward of splat_img_fwd given v_out [H,W,D] (and, for top-K, the forward's
// topk_ids). Overwrites v_means2d [N,2], v_conics [N,3], v_colors [N,D].
void splat_img_bwd(int N, int D, int width, int height, int tile_size, int tw, int th, int topk,
                   const float* means2d, const float* conics, const float* colors, const int32_t* radii,
                   const int64_t* tile_offsets, const int32_t* flatten_ids, const int32_t* topk_ids,
                   const float* v_out, float* v_means2d, float* v_conics, float* v_colors) {
    const int64_t T = (int64_t)tw * th;
    const int64_t M = tile_offsets[T];
    const int K = topk;
    const int G = 5 + D;  // slot: mean x, y, conic a, b, c, colour
    std::vector<float> slots((size_t)M * G, 0.f);
#pragma omp parallel
    {
        FlushDenormals ftz;
        std::vector<float> w(std::max(K, 1)), cdot(std::max(K, 1)), vC((size_t)3 * tile_size * tile_size);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < T; ++t) {
            const Tile tl = tile_at(t, tw, tile_size, width, height, tile_offsets);
            if (tl.e <= tl.s) continue;
            if (K == 0 && D == 3) {
                const int P = tile_size * tile_size;
                std::fill(vC.begin(), vC.end(), 0.f);  // whole rows are evaluated: pixels off the image get 0
                for (int y = 0; y < tl.ph; ++y)
                    for (int x = 0; x < tl.pw; ++x) {
                        const float* vp = v_out + ((int64_t)(tl.ty0 + y) * width + tl.tx0 + x) * 3;
                        for (int d = 0; d < 3; ++d) vC[(size_t)d * P + y * tile_size + x] = vp[d];
                    }
                if (tile_size == 16)
                    sum_bwd_rgb<16>(tl, tile_size, width, height, means2d, conics, colors, radii, flatten_ids,
                                    vC.data(), slots.data());
                else
                    sum_bwd_rgb<0>(tl, tile_size, width, height, means2d, conics, colors, radii, flatten_ids,
                                   vC.data(), slots.data());
                continue;
            }
            if (K == 0) {
                for (int64_t i = tl.s; i < tl.e; ++i) {
                    const int64_t g = flatten_ids[i];
                    const float mx = means2d[2 * g], my = means2d[2 * g + 1];
                    const float a = conics[3 * g], b = conics[3 * g + 1], c = conics[3 * g + 2];
                    const Box bx = pixel_box(mx, my, radii[2 * g], radii[2 * g + 1], tl.tx0, tl.ty0, tile_size,
                                             width, height);
                    const float* col = colors + g * D;
                    float* slot = &slots[(size_t)i * G];
                    for (int y = bx.y0; y < bx.y1; ++y) {
                        const float dy = my - (tl.ty0 + y + 0.5f);
                        const float* vrow = v_out + ((int64_t)(tl.ty0 + y) * width + tl.tx0) * D;
                        for (int x = bx.x0; x < bx.x1; ++x) {
                            const float dx = mx - (tl.tx0 + x + 0.5f);
                            const float wp = image2d_weight(a, b, c, dx, dy);
                            if (wp == 0.f) continue;
                            const float* vp = vrow + (int64_t)x * D;
                            float cd = 0.f;
                            for (int d = 0; d < D; ++d) {
                                cd += col[d] * vp[d];
                                slot[5 + d] += wp * vp[d];
                            }
                            image2d_sigma_vjp(a, b, c, dx, dy, -wp * cd, slot);
                        }
                    }
                }
                continue;
            }
            for (int y = 0; y < tl.ph; ++y)
                for (int x = 0; x < tl.pw; ++x) {
                    const int64_t pix = (int64_t)(tl.ty0 + y) * width + tl.tx0 + x;
                    const int32_t* id = topk_ids + pix * K;
                    const float* vp = v_out + pix * D;
                    const float px = tl.tx0 + x + 0.5f, py = tl.ty0 + y + 0.5f;
                    int n = 0;
                    float W = 0.f, odot = 0.f;
                    for (; n < K && id[n] >= 0; ++n) {
                        const int64_t g = flatten_ids[id[n]];
                        w[n] = image2d_weight(conics[3 * g], conics[3 * g + 1], conics[3 * g + 2],
                                              means2d[2 * g] - px, means2d[2 * g + 1] - py);
                        W += w[n];
                        float cd = 0.f;
                        for (int d = 0; d < D; ++d) cd += colors[g * D + d] * vp[d];
                        cdot[n] = cd;
                        odot += w[n] * cd;
                    }
                    if (n == 0) continue;
                    const float inv = 1.f / (W + kTopKEps);
                    odot *= inv;  // output . v_out
                    for (int j = 0; j < n; ++j) {
                        const int64_t g = flatten_ids[id[j]];
                        float* slot = &slots[(size_t)id[j] * G];
                        for (int d = 0; d < D; ++d) slot[5 + d] += w[j] * inv * vp[d];
                        const float v_w = (cdot[j] - odot) * inv;
                        image2d_sigma_vjp(conics[3 * g], conics[3 * g + 1], conics[3 * g + 2], means2d[2 * g] - px,
                                          means2d[2 * g + 1] - py, -w[j] * v_w, slot);
                    }
                }
        }
    }
    const SlotField fields[] = {{v_means2d, 0, 2}, {v_conics, 2, 3}, {v_colors, 5, D}};
    sum_slots(flatten_ids, M, N, slots.data(), G, fields, 3);
}

}  // extern "C"
