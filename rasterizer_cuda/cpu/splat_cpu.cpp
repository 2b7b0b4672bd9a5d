// splat_cpu.cpp: the native CPU backend (C++17, OpenMP).
//
// A torch-free C ABI over raw float32 pointers; Python (splat/backends/cpu.py)
// loads it with ctypes and registers autograd. All per-Gaussian and per-pixel
// math comes from ../include/splat_math.h, shared with the CUDA kernels.
//
// Work split:
//   projection / SH     parallel over Gaussians
//   tile binning        counting sort by (camera, tile), then per-tile depth sort in parallel
//   compositing         parallel over tiles (dynamic schedule); inside a tile the
//                       pixels are the SIMD lanes, Gaussians are walked in order
//   backward            same tile loop, reverse order; per-(tile, Gaussian) gradient
//                       slots (no atomics, deterministic), then summed per Gaussian
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../include/splat_math.h"

#include "flush_denormals.h"
#include "slot_sums.h"

using namespace splat;

namespace {

inline bool visible(const int32_t* radii, int64_t i) { return radii[2 * i] > 0 && radii[2 * i + 1] > 0; }

inline TileRect tile_rect_of(const float* means2d, const int32_t* radii, int64_t i, int tile_size, int tw, int th) {
    return tile_rect(means2d[2 * i], means2d[2 * i + 1], radii[2 * i], radii[2 * i + 1], tile_size, tw, th);
}

// emit(t) for each tile t (flat, camera-major) of the Gaussian idx (of C * N; its camera is
// idx / N) that its rectangle overlaps and tile_mask (nullable) keeps; returns how many.
template <class Emit>
inline int for_each_tile_of(int64_t idx, int N, const float* means2d, const int32_t* radii, int tile_size, int tw,
                            int th, const uint8_t* tile_mask, Emit&& emit) {
    const int64_t n_tiles = (int64_t)tw * th;
    const int c = (int)(idx / N);
    const TileRect r = tile_rect_of(means2d, radii, idx, tile_size, tw, th);
    int cnt = 0;
    for (int ty = r.y0; ty < r.y1; ++ty)
        for (int tx = r.x0; tx < r.x1; ++tx) {
            const int64_t t = c * n_tiles + (int64_t)ty * tw + tx;
            if (tile_mask && !tile_mask[t]) continue;
            emit(t);
            ++cnt;
        }
    return cnt;
}

// Flat tile index t (camera-major): its camera and the image position of its first pixel.
struct TileOrigin { int c, x0, y0; };
inline TileOrigin tile_origin(int64_t t, int64_t n_tiles, int tw, int tile_size) {
    const int c = (int)(t / n_tiles);
    const int tile = (int)(t - (int64_t)c * n_tiles);
    return {c, (tile % tw) * tile_size, (tile / tw) * tile_size};
}

// The centres of the P = tile_size^2 pixels of the tile at `o` (row-major) and whether each lies
// in the image (1/0; the last tiles of a row or column overhang it); returns how many do.
inline int tile_pixel_centres(const TileOrigin& o, int tile_size, int width, int height, float* px, float* py,
                              int32_t* inside) {
    int count = 0;
    for (int p = 0; p < tile_size * tile_size; ++p) {
        int x = o.x0 + p % tile_size, y = o.y0 + p / tile_size;
        px[p] = x + 0.5f;
        py[p] = y + 0.5f;
        inside[p] = (x < width && y < height) ? 1 : 0;
        count += inside[p];
    }
    return count;
}

// The pixels [p0, p1) of a tile (row-major, `tile_size` wide) in the rows a Gaussian can reach
// (alpha_row_span); p0 == p1 when it reaches none.
struct PixelRange { int p0, p1; };
inline PixelRange gaussian_pixel_range(float a, float b, float c, float my, float opacity, int y0, int tile_size) {
    const RowSpan r = alpha_row_span(a, b, c, my, opacity, y0, tile_size);
    return {r.begin * tile_size, r.end * tile_size};
}

// One Gaussian over the pixels [p0, p1) of a tile (the pixels are the SIMD lanes):
// alpha, the transmittance cut-off and the blend weights w. Returns how many
// pixels stopped (transmittance cut-off) at this Gaussian.
__attribute__((noinline)) int blend_step(int p0, int p1, const float* __restrict px, const float* __restrict py,
                                         float* __restrict T, float* __restrict w, int32_t* __restrict last,
                                         int32_t* __restrict active, float mx, float my, float a, float b, float c,
                                         float o, int32_t id) {
    int stopped = 0;
#pragma omp simd reduction(+ : stopped)
    for (int p = p0; p < p1; ++p) {
        float dx = mx - px[p], dy = my - py[p];
        float sigma = gaussian_sigma(a, b, c, dx, dy);
        float raw = gaussian_raw_alpha(o, sigma);
        float alpha = clamp_alpha(raw);
        int32_t ok = active[p] & alpha_contributes(sigma, raw);
        float Tp = T[p];
        float Tn = Tp * (1.f - alpha);
        int32_t stop = ok & (Tn <= kTransmittanceEps ? 1 : 0);
        int32_t take = ok & (stop ^ 1);
        w[p] = take ? alpha * Tp : 0.f;
        T[p] = take ? Tn : Tp;
        last[p] = take ? id : last[p];
        active[p] = active[p] & (stop ^ 1);
        stopped += stop;
    }
    return stopped;
}

// One Gaussian over the pixels [p0, p1) of a tile in the backward pass (reverse
// order). Updates each pixel's transmittance T and the colour behind it (sdot,
// dotted with dL/dC), writes the blend factor fac and each pixel's gradient
// terms into g[8][P] (d mean x, y, d conic a, b, c, d opacity, |d mean| x, y),
// then sums those over the pixels into out[8]. (Summing in a second loop keeps
// both loops simple enough for GCC to vectorise.)
__attribute__((noinline)) void backward_step(int P, int p0, int p1, const float* __restrict px, const float* __restrict py, float* __restrict T,
                   const float* __restrict Tf, float* __restrict sdot, const float* __restrict va,
                   const float* __restrict cdot, float* __restrict fac, const int32_t* __restrict last,
                   float* __restrict g, float mx, float my, float a, float b, float c, float o, int32_t id,
                   float out[8]) {
    float* __restrict g_mx = g;
    float* __restrict g_my = g + P;
    float* __restrict g_a = g + 2 * P;
    float* __restrict g_b = g + 3 * P;
    float* __restrict g_c = g + 4 * P;
    float* __restrict g_o = g + 5 * P;
    float* __restrict g_ax = g + 6 * P;
    float* __restrict g_ay = g + 7 * P;
#pragma omp simd
    for (int p = p0; p < p1; ++p) {
        float dx = mx - px[p], dy = my - py[p];
        float sigma = gaussian_sigma(a, b, c, dx, dy);
        float vis = fast_exp(-sigma);
        float raw = o * vis;
        int32_t take = (id <= last[p] ? 1 : 0) & alpha_contributes(sigma, raw);
        PairGrad r = composite_backward_pair(o, vis, a, b, c, dx, dy, T[p], Tf[p], cdot[p], sdot[p], va[p]);
        float k = take ? 1.f : 0.f;
        g_a[p] = k * r.g.v_a;
        g_b[p] = k * r.g.v_b;
        g_c[p] = k * r.g.v_c;
        g_mx[p] = k * r.g.v_mx;
        g_my[p] = k * r.g.v_my;
        g_o[p] = k * r.g.v_opacity;
        g_ax[p] = k * fabsf(r.g.v_mx);
        g_ay[p] = k * fabsf(r.g.v_my);
        fac[p] = k * r.weight;
        sdot[p] += k * r.weight * cdot[p];
        T[p] = take ? r.T_front : T[p];
    }
    for (int j = 0; j < 8; ++j) {
        const float* __restrict gj = g + j * P;
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int p = p0; p < p1; ++p) sum += gj[p];
        out[j] = sum;
    }
}

}  // namespace

extern "C" {

int splat_num_threads() { return omp_get_max_threads(); }
void splat_set_num_threads(int n) { omp_set_num_threads(n); }

// ------------------------------------------------------------------ projection
void splat_project_fwd(int C, int N, const float* means, const float* quats, const float* scales,
                       const float* opacities, const float* viewmats, const float* Ks, int width, int height,
                       float eps2d, float near_plane, float far_plane, float radius_clip, int antialiased,
                       int32_t* radii, float* means2d, float* depths, float* conics, float* compensations) {
    const int64_t total = (int64_t)C * N;
#pragma omp parallel for schedule(static)
    for (int64_t idx = 0; idx < total; ++idx) {
        int c = (int)(idx / N);
        int64_t n = idx - (int64_t)c * N;
        Camera cam = make_camera(viewmats + 16 * c, Ks + 9 * c, width, height);
        Projected p = project_gaussian(cam, means + 3 * n, quats + 4 * n, scales + 3 * n,
                                       opacities ? opacities[n] : -1.f, eps2d, near_plane, far_plane,
                                       radius_clip, antialiased != 0);
        store_projection(p, idx, radii, means2d, depths, conics, compensations);
    }
}

// Gradients of the projection. Any of v_compensations, v_viewmats may be null.
// Outputs are overwritten (v_viewmats: [C, 4, 4], only the top 3x4 is filled).
void splat_project_bwd(int C, int N, const float* means, const float* quats, const float* scales,
                       const float* viewmats, const float* Ks, int width, int height, float eps2d, int antialiased,
                       const int32_t* radii, const float* v_means2d, const float* v_depths, const float* v_conics,
                       const float* v_compensations, float* v_means, float* v_quats, float* v_scales,
                       float* v_viewmats) {
    std::vector<Camera> cams(C);
    for (int c = 0; c < C; ++c) cams[c] = make_camera(viewmats + 16 * c, Ks + 9 * c, width, height);
    if (v_viewmats) memset(v_viewmats, 0, sizeof(float) * 16 * C);
#pragma omp parallel
    {
        FlushDenormals ftz;
        std::vector<double> vview(v_viewmats ? 12 * C : 0, 0.0);
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
            float vm[3] = {0, 0, 0}, vq[4] = {0, 0, 0, 0}, vs[3] = {0, 0, 0};
            for (int c = 0; c < C; ++c) {
                int64_t idx = (int64_t)c * N + n;
                if (!visible(radii, idx)) continue;
                ProjectionGrad g = project_gaussian_vjp(cams[c], means + 3 * n, quats + 4 * n, scales + 3 * n, eps2d,
                                                        antialiased != 0, v_means2d + 2 * idx, v_depths[idx],
                                                        v_conics + 3 * idx,
                                                        v_compensations ? v_compensations[idx] : 0.f);
                for (int k = 0; k < 3; ++k) { vm[k] += g.v_mean[k]; vs[k] += g.v_scale[k]; }
                for (int k = 0; k < 4; ++k) vq[k] += g.v_quat[k];
                if (v_viewmats) {
                    double* V = vview.data() + 12 * c;
                    for (int i = 0; i < 3; ++i)
                        for (int j = 0; j < 3; ++j) V[4 * i + j] += g.v_R.m[i][j];
                    V[3] += g.v_t.x;
                    V[7] += g.v_t.y;
                    V[11] += g.v_t.z;
                }
            }
            for (int k = 0; k < 3; ++k) { v_means[3 * n + k] = vm[k]; v_scales[3 * n + k] = vs[k]; }
            for (int k = 0; k < 4; ++k) v_quats[4 * n + k] = vq[k];
        }
        if (v_viewmats) {
#pragma omp critical
            for (int c = 0; c < C; ++c)
                for (int k = 0; k < 12; ++k) v_viewmats[16 * c + k] += (float)vview[12 * c + k];
        }
    }
}

// ------------------------------------------------------------------ spherical harmonics
// dirs [C, N, 3] (any length); coeffs [N, K, 3] (per_camera = 0) or [C, N, K, 3];
// mask [C, N] (nullable): entries with mask 0 get colour 0. out [C, N, 3].
void splat_sh_fwd(int C, int N, int K, int degree, const float* dirs, const float* coeffs, int per_camera,
                  const uint8_t* mask, float* out) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        for (int c = 0; c < C; ++c) {
            int64_t idx = (int64_t)c * N + n;
            float* o = out + 3 * idx;
            if (mask && !mask[idx]) { o[0] = o[1] = o[2] = 0.f; continue; }
            sh_color(degree, coeffs + (per_camera ? idx : n) * K * 3, dirs + 3 * idx, o);
        }
    }
}

// Gradients of splat_sh_fwd. v_coeffs has the layout of coeffs and is overwritten;
// v_dirs [C, N, 3] is overwritten (nullable).
void splat_sh_bwd(int C, int N, int K, int degree, const float* dirs, const float* coeffs, int per_camera,
                  const uint8_t* mask, const float* v_out, float* v_coeffs, float* v_dirs) {
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
        if (!per_camera) memset(v_coeffs + n * K * 3, 0, sizeof(float) * K * 3);
        for (int c = 0; c < C; ++c) {
            int64_t idx = (int64_t)c * N + n;
            float* vc = v_coeffs + (per_camera ? idx : n) * K * 3;
            if (per_camera) memset(vc, 0, sizeof(float) * K * 3);
            float* vd = v_dirs ? v_dirs + 3 * idx : nullptr;
            if (mask && !mask[idx]) {
                if (vd) vd[0] = vd[1] = vd[2] = 0.f;
                continue;
            }
            sh_color_vjp(degree, coeffs + (per_camera ? idx : n) * K * 3, dirs + 3 * idx, v_out + 3 * idx, vc, vd);
        }
    }
}

// ------------------------------------------------------------------ tile binning
// Pass 1: per-Gaussian tile counts [C*N] and per-tile counts [C*th*tw]. Returns the
// number of intersections. tile_mask [C*th*tw] (nullable) restricts the tiles.
int64_t splat_isect_count(int C, int N, const float* means2d, const int32_t* radii, int tile_size, int tw, int th,
                          const uint8_t* tile_mask, int32_t* tiles_per_gauss, int64_t* tile_counts) {
    const int64_t n_tiles = (int64_t)tw * th;
    const int64_t T = C * n_tiles;
    memset(tile_counts, 0, sizeof(int64_t) * T);
    int64_t total = 0;
    // each thread counts into tile counters of its own (shared ones, even atomic, made the
    // threads fight over the same cache lines), added up per tile at the end
#pragma omp parallel reduction(+ : total)
    {
        std::vector<int64_t> mine(T, 0);
#pragma omp for schedule(dynamic, 4096) nowait
        for (int64_t idx = 0; idx < (int64_t)C * N; ++idx) {
            tiles_per_gauss[idx] = 0;
            if (!visible(radii, idx)) continue;
            const int cnt = for_each_tile_of(idx, N, means2d, radii, tile_size, tw, th, tile_mask,
                                             [&](int64_t t) { ++mine[t]; });
            tiles_per_gauss[idx] = cnt;
            total += cnt;
        }
#pragma omp critical(splat_isect_count)
        for (int64_t t = 0; t < T; ++t) tile_counts[t] += mine[t];
    }
    return total;
}

// Sorts one tile's keys (depth bits << 32 | Gaussian index) ascending. They arrive in
// increasing Gaussian index, so a stable sort on the depth bits alone gives the order of
// the whole keys: tiles of many entries take a least-significant-digit radix sort on those
// bits (8-bit digits, a digit every key shares skipped), small ones std::sort.
static void sort_tile_keys(uint64_t* k, int64_t n, std::vector<uint64_t>& scratch) {
    if (n < 128) {
        std::sort(k, k + n);
        return;
    }
    uint32_t hist[4][256] = {};
    for (int64_t i = 0; i < n; ++i) {
        const uint32_t d = (uint32_t)(k[i] >> 32);
        ++hist[0][d & 255];
        ++hist[1][(d >> 8) & 255];
        ++hist[2][(d >> 16) & 255];
        ++hist[3][d >> 24];
    }
    if ((int64_t)scratch.size() < n) scratch.resize(n);
    uint64_t* src = k;
    uint64_t* dst = scratch.data();
    for (int b = 0; b < 4; ++b) {
        const int shift = 32 + 8 * b;
        if ((int64_t)hist[b][(src[0] >> shift) & 255] == n) continue;  // one digit for all: nothing moves
        uint32_t pos[256];
        uint32_t sum = 0;
        for (int v = 0; v < 256; ++v) {
            pos[v] = sum;
            sum += hist[b][v];
        }
        for (int64_t i = 0; i < n; ++i) dst[pos[(src[i] >> shift) & 255]++] = src[i];
        std::swap(src, dst);
    }
    if (src != k) memcpy(k, src, sizeof(uint64_t) * n);
}

// Pass 2: fill the intersection list, grouped by (camera, tile) in order, each
// group sorted by depth, ties by Gaussian index. tile_offsets [C*th*tw + 1] is the
// exclusive prefix sum of tile_counts. Writes isect_ids [M] (gsplat's keys) and
// flatten_ids [M] (c * N + n).
void splat_isect_fill(int C, int N, const float* means2d, const int32_t* radii, const float* depths, int tile_size,
                      int tw, int th, const uint8_t* tile_mask, const int64_t* tile_offsets, int64_t* isect_ids,
                      int32_t* flatten_ids) {
    const int64_t n_tiles = (int64_t)tw * th;
    const int64_t T = C * n_tiles;
    const int64_t M = tile_offsets[T];
    std::vector<uint64_t> keys(M);  // depth bits << 32 | Gaussian index
    // Each thread takes a contiguous block of Gaussians and writes its entries of
    // every tile to a slot range of its own (its per-tile counts, prefix-summed
    // over the threads): no atomics, no shared cursors.
    const int64_t CN = (int64_t)C * N;
    const int nt = omp_get_max_threads();
    std::vector<int64_t> start((size_t)nt * T, 0);  // [thread][tile]
#pragma omp parallel num_threads(nt)
    {
        const int me = omp_get_thread_num(), nth = omp_get_num_threads();
        const int64_t lo = CN * me / nth, hi = CN * (me + 1) / nth;
        int64_t* mine = &start[(size_t)me * T];
        auto each = [&](auto&& emit) {
            for (int64_t idx = lo; idx < hi; ++idx)
                if (visible(radii, idx))
                    for_each_tile_of(idx, N, means2d, radii, tile_size, tw, th, tile_mask,
                                     [&](int64_t t) { emit(t, idx); });
        };
        each([&](int64_t t, int64_t) { ++mine[t]; });
#pragma omp barrier
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; ++t) {  // counts -> starting slots, thread by thread
            int64_t pos = tile_offsets[t];
            for (int j = 0; j < nth; ++j) {
                int64_t cnt = start[(size_t)j * T + t];
                start[(size_t)j * T + t] = pos;
                pos += cnt;
            }
        }
        each([&](int64_t t, int64_t idx) {
            keys[mine[t]++] = ((uint64_t)float_bits(depths[idx]) << 32) | (uint64_t)(uint32_t)idx;
        });
    }
    const int tile_bits = bit_length(n_tiles);
#pragma omp parallel
    {
        std::vector<uint64_t> scratch;
#pragma omp for schedule(dynamic, 16)
        for (int64_t t = 0; t < T; ++t) {
            int64_t s = tile_offsets[t], e = tile_offsets[t + 1];
            if (e <= s) continue;
            sort_tile_keys(keys.data() + s, e - s, scratch);
            int64_t c = t / n_tiles, tile = t - c * n_tiles;
            for (int64_t i = s; i < e; ++i) {
                uint32_t bits = (uint32_t)(keys[i] >> 32);
                float depth;
                memcpy(&depth, &bits, 4);
                isect_ids[i] = isect_key(c, tile, depth, tile_bits);
                flatten_ids[i] = (int32_t)(keys[i] & 0xFFFFFFFFu);
            }
        }
    }
}

// ------------------------------------------------------------------ compositing
// means2d [C,N,2], conics [C,N,3], colors [C,N,D], opacities [C,N], backgrounds [C,D]
// (nullable), tile_offsets [C*th*tw + 1], flatten_ids [M], tile_mask (nullable).
// Outputs (preset by the caller to 0 for tiles not rendered): out_colors [C,H,W,D],
// out_alphas [C,H,W], last_ids [C,H,W] (index into the isect list of the last
// Gaussian that contributed, -1 for none), tile_work [C*th*tw] (nullable): how many
// (pixel, Gaussian) pairs each tile evaluated before all its pixels were done (for
// benchmarks: the pixels of the rows each Gaussian taken could reach).
void splat_rasterize_fwd(int C, int N, int D, int width, int height, int tile_size, int tw, int th,
                         const float* means2d, const float* conics, const float* colors, const float* opacities,
                         const float* backgrounds, const int64_t* tile_offsets, const int32_t* flatten_ids,
                         const uint8_t* tile_mask, float* out_colors, float* out_alphas, int32_t* last_ids,
                         int32_t* tile_work) {
    const int64_t n_tiles = (int64_t)tw * th;
    const int64_t T_all = C * n_tiles;
    const int P = tile_size * tile_size;
#pragma omp parallel
    {
        FlushDenormals ftz;
        std::vector<float> px(P), py(P), T(P), w(P), acc((size_t)P * D), col;
        std::vector<int32_t> last(P), active(P);
        std::vector<float> gx, gy, ga, gb, gc, go;
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < T_all; ++t) {
            if (tile_mask && !tile_mask[t]) continue;
            const TileOrigin o = tile_origin(t, n_tiles, tw, tile_size);
            const int c = o.c, tx0 = o.x0, ty0 = o.y0;
            const int64_t s = tile_offsets[t], e = tile_offsets[t + 1];
            const int K = (int)(e - s);
            // gather this tile's Gaussians, front to back
            gx.resize(K); gy.resize(K); ga.resize(K); gb.resize(K); gc.resize(K); go.resize(K);
            col.resize((size_t)K * D);
            for (int k = 0; k < K; ++k) {
                const int64_t g = flatten_ids[s + k];
                gx[k] = means2d[2 * g]; gy[k] = means2d[2 * g + 1];
                ga[k] = conics[3 * g]; gb[k] = conics[3 * g + 1]; gc[k] = conics[3 * g + 2];
                go[k] = opacities[g];
                memcpy(&col[(size_t)k * D], colors + g * D, sizeof(float) * D);
            }
            int n_active = tile_pixel_centres(o, tile_size, width, height, px.data(), py.data(), active.data());
            std::fill(T.begin(), T.end(), 1.f);
            std::fill(last.begin(), last.end(), -1);
            std::fill(acc.begin(), acc.end(), 0.f);
            int64_t pairs = 0;
            for (int k = 0; k < K && n_active > 0; ++k) {
                const PixelRange r = gaussian_pixel_range(ga[k], gb[k], gc[k], gy[k], go[k], ty0, tile_size);
                if (r.p1 <= r.p0) continue;
                pairs += r.p1 - r.p0;
                n_active -= blend_step(r.p0, r.p1, px.data(), py.data(), T.data(), w.data(), last.data(),
                                       active.data(), gx[k], gy[k], ga[k], gb[k], gc[k], go[k], (int32_t)(s + k));
                const float* ck = &col[(size_t)k * D];
                for (int d = 0; d < D; ++d) {
                    const float cv = ck[d];
                    float* ad = &acc[(size_t)d * P];
#pragma omp simd
                    for (int p = r.p0; p < r.p1; ++p) ad[p] += w[p] * cv;
                }
            }
            if (tile_work) tile_work[t] = (int32_t)pairs;
            const float* bg = backgrounds ? backgrounds + (int64_t)c * D : nullptr;
            for (int p = 0; p < P; ++p) {
                int x = tx0 + p % tile_size, y = ty0 + p / tile_size;
                if (x >= width || y >= height) continue;
                int64_t pix = ((int64_t)c * height + y) * width + x;
                for (int d = 0; d < D; ++d)
                    out_colors[pix * D + d] = acc[(size_t)d * P + p] + (bg ? T[p] * bg[d] : 0.f);
                out_alphas[pix] = 1.f - T[p];
                last_ids[pix] = last[p];
            }
        }
    }
}

// Forward-mode derivative of splat_rasterize_fwd (a Jacobian-vector product):
// the same inputs plus the tangents t_means2d [C,N,2], t_conics [C,N,3],
// t_colors [C,N,D], t_opacities [C,N]; writes the tangents of the outputs,
// t_out_colors [C,H,W,D] and t_out_alphas [C,H,W] (preset by the caller to 0 for
// tiles not rendered). Each pixel walks its Gaussians front to back with the
// forward's rules (alpha threshold, clamp, transmittance cut-off).
void splat_rasterize_jvp(int C, int N, int D, int width, int height, int tile_size, int tw, int th,
                         const float* means2d, const float* conics, const float* colors, const float* opacities,
                         const float* backgrounds, const int64_t* tile_offsets, const int32_t* flatten_ids,
                         const uint8_t* tile_mask, const float* t_means2d, const float* t_conics,
                         const float* t_colors, const float* t_opacities, float* t_out_colors, float* t_out_alphas) {
    const int64_t n_tiles = (int64_t)tw * th;
    const int64_t T_all = C * n_tiles;
    const int P = tile_size * tile_size;
#pragma omp parallel
    {
        FlushDenormals ftz;
        std::vector<float> px(P), py(P), T(P), tT(P), w(P), tw_(P), acc((size_t)P * D);
        std::vector<int32_t> active(P);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < T_all; ++t) {
            if (tile_mask && !tile_mask[t]) continue;
            const TileOrigin o = tile_origin(t, n_tiles, tw, tile_size);
            const int c = o.c, tx0 = o.x0, ty0 = o.y0;
            const int64_t s = tile_offsets[t], e = tile_offsets[t + 1];
            int n_active = tile_pixel_centres(o, tile_size, width, height, px.data(), py.data(), active.data());
            std::fill(T.begin(), T.end(), 1.f);
            std::fill(tT.begin(), tT.end(), 0.f);
            std::fill(acc.begin(), acc.end(), 0.f);
            for (int64_t k = s; k < e && n_active > 0; ++k) {
                const int64_t g = flatten_ids[k];
                const float mx = means2d[2 * g], my = means2d[2 * g + 1];
                const float a = conics[3 * g], b = conics[3 * g + 1], cc = conics[3 * g + 2], o = opacities[g];
                const PixelRange span = gaussian_pixel_range(a, b, cc, my, o, ty0, tile_size);
                if (span.p1 <= span.p0) continue;
                const int p0 = span.p0, p1 = span.p1;
                const float tmx = t_means2d[2 * g], tmy = t_means2d[2 * g + 1];
                const float ta = t_conics[3 * g], tb = t_conics[3 * g + 1], tc = t_conics[3 * g + 2];
                const float to = t_opacities[g];
                int stopped = 0;
#pragma omp simd reduction(+ : stopped)
                for (int p = p0; p < p1; ++p) {
                    float dx = mx - px[p], dy = my - py[p];
                    float sigma = gaussian_sigma(a, b, cc, dx, dy);
                    float vis = fast_exp(-sigma);
                    float raw = o * vis;
                    float alpha = clamp_alpha(raw);
                    int32_t ok = active[p] & alpha_contributes(sigma, raw);
                    float Tn = T[p] * (1.f - alpha);
                    int32_t stop = ok & (Tn <= kTransmittanceEps ? 1 : 0);
                    int32_t take = ok & (stop ^ 1);
                    float t_alpha = gaussian_alpha_jvp(o, vis, a, b, cc, dx, dy, ta, tb, tc, tmx, tmy, to);
                    PairTangent r = composite_jvp_pair(alpha, t_alpha, T[p], tT[p]);
                    w[p] = take ? r.w : 0.f;
                    tw_[p] = take ? r.t_w : 0.f;
                    T[p] = take ? r.T_next : T[p];
                    tT[p] = take ? r.t_T_next : tT[p];
                    active[p] = active[p] & (stop ^ 1);
                    stopped += stop;
                }
                n_active -= stopped;
                const float* col = colors + g * D;
                const float* tcol = t_colors + g * D;
                for (int d = 0; d < D; ++d) {
                    const float cv = col[d], tcv = tcol[d];
                    float* ad = &acc[(size_t)d * P];
#pragma omp simd
                    for (int p = p0; p < p1; ++p) ad[p] += tw_[p] * cv + w[p] * tcv;
                }
            }
            const float* bg = backgrounds ? backgrounds + (int64_t)c * D : nullptr;
            for (int p = 0; p < P; ++p) {
                int x = tx0 + p % tile_size, y = ty0 + p / tile_size;
                if (x >= width || y >= height) continue;
                int64_t pix = ((int64_t)c * height + y) * width + x;
                for (int d = 0; d < D; ++d)
                    t_out_colors[pix * D + d] = acc[(size_t)d * P + p] + (bg ? tT[p] * bg[d] : 0.f);
                t_out_alphas[pix] = -tT[p];
            }
        }
    }
}

// Backward of splat_rasterize_fwd. v_colors_out [C,H,W,D], v_alphas_out [C,H,W];
// out_alphas and last_ids from the forward. Writes (overwrites) v_means2d [C,N,2],
// v_conics [C,N,3], v_colors [C,N,D], v_opacities [C,N], v_means2d_abs [C,N,2]
// (nullable). Gradients go to a slot per intersection and are then summed per
// Gaussian in a fixed order, so results are deterministic.
void splat_rasterize_bwd(int C, int N, int D, int width, int height, int tile_size, int tw, int th,
                         const float* means2d, const float* conics, const float* colors, const float* opacities,
                         const float* backgrounds, const int64_t* tile_offsets, const int32_t* flatten_ids,
                         const uint8_t* tile_mask, const float* out_alphas, const int32_t* last_ids,
                         const float* v_colors_out, const float* v_alphas_out, float* v_means2d, float* v_conics,
                         float* v_colors, float* v_opacities, float* v_means2d_abs) {
    const int64_t n_tiles = (int64_t)tw * th;
    const int64_t T_all = C * n_tiles;
    const int64_t M = tile_offsets[T_all];
    const int P = tile_size * tile_size;
    const bool want_abs = v_means2d_abs != nullptr;
    const int G = 6 + (want_abs ? 2 : 0) + D;  // slot: mx, my, a, b, c, opacity, [|mx|, |my|], colour
    std::vector<float> slots((size_t)M * G, 0.f);
#pragma omp parallel
    {
        FlushDenormals ftz;
        std::vector<float> px(P), py(P), T(P), Tf(P), sdot(P), va(P), cdot(P), fac(P), vC((size_t)P * D);
        std::vector<float> gbuf((size_t)8 * P);
        std::vector<int32_t> last(P);
#pragma omp for schedule(dynamic, 1)
        for (int64_t t = 0; t < T_all; ++t) {
            if (tile_mask && !tile_mask[t]) continue;
            const int64_t s = tile_offsets[t], e = tile_offsets[t + 1];
            if (e <= s) continue;
            const TileOrigin o = tile_origin(t, n_tiles, tw, tile_size);
            const int c = o.c, tx0 = o.x0, ty0 = o.y0;
            const float* bg = backgrounds ? backgrounds + (int64_t)c * D : nullptr;
            int32_t max_last = -1;
            for (int p = 0; p < P; ++p) {
                int x = tx0 + p % tile_size, y = ty0 + p / tile_size;
                px[p] = x + 0.5f;
                py[p] = y + 0.5f;
                if (x >= width || y >= height) {
                    last[p] = -1;
                    T[p] = Tf[p] = 0.f; sdot[p] = va[p] = 0.f;
                    for (int d = 0; d < D; ++d) vC[(size_t)d * P + p] = 0.f;
                    continue;
                }
                int64_t pix = ((int64_t)c * height + y) * width + x;
                last[p] = last_ids[pix];
                max_last = std::max(max_last, last[p]);
                Tf[p] = 1.f - out_alphas[pix];
                T[p] = Tf[p];
                sdot[p] = 0.f;
                float bgdot = 0.f;
                for (int d = 0; d < D; ++d) {
                    float v = v_colors_out[pix * D + d];
                    vC[(size_t)d * P + p] = v;
                    if (bg) bgdot += bg[d] * v;
                }
                // terms of dL/dalpha_k that depend only on the pixel: the alpha output and the background
                va[p] = (v_alphas_out ? v_alphas_out[pix] : 0.f) - bgdot;
            }
            for (int64_t i = max_last; i >= s; --i) {
                const int64_t g = flatten_ids[i];
                const float mx = means2d[2 * g], my = means2d[2 * g + 1];
                const float a = conics[3 * g], b = conics[3 * g + 1], cc = conics[3 * g + 2];
                const float o = opacities[g];
                const PixelRange span = gaussian_pixel_range(a, b, cc, my, o, ty0, tile_size);
                if (span.p1 <= span.p0) continue;  // its slot stays zero
                const int p0 = span.p0, p1 = span.p1;
                const float* ck = colors + g * D;
                // cdot[p] = colour . dL/dC(p)
                std::fill(cdot.begin() + p0, cdot.begin() + p1, 0.f);
                for (int d = 0; d < D; ++d) {
                    const float cv = ck[d];
                    const float* vd = &vC[(size_t)d * P];
#pragma omp simd
                    for (int p = p0; p < p1; ++p) cdot[p] += cv * vd[p];
                }
                float sums[8];
                backward_step(P, p0, p1, px.data(), py.data(), T.data(), Tf.data(), sdot.data(), va.data(),
                              cdot.data(), fac.data(), last.data(), gbuf.data(), mx, my, a, b, cc, o, (int32_t)i, sums);
                const float s_mx = sums[0], s_my = sums[1], s_a = sums[2], s_b = sums[3], s_c = sums[4],
                            s_o = sums[5], s_ax = sums[6], s_ay = sums[7];
                float* slot = &slots[(size_t)i * G];
                slot[0] = s_mx; slot[1] = s_my; slot[2] = s_a; slot[3] = s_b; slot[4] = s_c; slot[5] = s_o;
                int off = 6;
                if (want_abs) { slot[6] = s_ax; slot[7] = s_ay; off = 8; }
                for (int d = 0; d < D; ++d) {
                    const float* vd = &vC[(size_t)d * P];
                    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
                    for (int p = p0; p < p1; ++p) sum += fac[p] * vd[p];
                    slot[off + d] = sum;
                }
            }
        }
    }
    // sum the slots per Gaussian (in intersection order: the same bits for any thread count)
    const int off = want_abs ? 8 : 6;
    const SlotField fields[] = {{v_means2d, 0, 2}, {v_conics, 2, 3}, {v_opacities, 5, 1},
                                {want_abs ? v_means2d_abs : nullptr, 6, 2}, {v_colors, off, D}};
    sum_slots(flatten_ids, M, (int64_t)C * N, slots.data(), G, fields, 5);
}

}  // extern "C"
