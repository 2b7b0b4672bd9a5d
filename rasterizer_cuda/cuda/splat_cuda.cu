// splat_cuda.cu: the CUDA backend (CUDA 12 or 13; CI compiles it for sm_80 and sm_90).
//
// A torch-free C ABI over raw device pointers and a cudaStream_t; Python
// (splat/backends/cuda.py) loads it with ctypes, allocates every buffer with
// torch's caching allocator and registers autograd. The per-Gaussian and
// per-pixel math comes from ../include/splat_math.h, the same functions the CPU
// backend runs (and CI tests) on the host.
//
// Stages and their parallelism:
//   projection / SH     one thread per Gaussian (loops over the cameras where
//                       the backward sums over them, so no atomics there)
//   tile intersection   count per Gaussian, in-place CUB prefix sum, emit 64-bit
//                       (camera | tile | depth) keys, CUB radix sort of the keys
//                       with the Gaussian ids, per-tile ranges from the sorted keys
//   compositing         one block per tile, one thread per pixel; the tile's
//                       Gaussians go through shared memory in batches
//   backward            the same blocks walk each tile back to front; each warp
//                       sums its pixels' gradients of a Gaussian with shuffles,
//                       then one lane adds them to global memory with atomics
//
// Every entry point returns 0 or a cudaError_t code (see splatcu_error_string).
//
// Compiled with -DSPLAT_CUDA_HOST_EMULATION by g++ instead, the same file runs on
// the CPU for the tests (host_emulation.h: each CUDA thread a fiber, warps and
// blocks synchronised cooperatively, CUB replaced by serial host code).
#if defined(SPLAT_CUDA_HOST_EMULATION)
#include "host_emulation.h"
#else
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>
#define SPLAT_LAUNCH(KERNEL, GRID, BLOCK, STREAM, ...) KERNEL<<<GRID, BLOCK, 0, STREAM>>>(__VA_ARGS__)
#endif

#include "../include/splat_math.h"

using namespace splat;

#define SPLAT_API extern "C" __attribute__((visibility("default")))

namespace {

constexpr int kThreads = 256;       // threads per block of the per-Gaussian kernels
constexpr int kMaxBatch = 256;      // Gaussians per shared-memory batch in the tile kernels
constexpr unsigned kFullMask = 0xffffffffu;

inline unsigned blocks_for(int64_t n) { return (unsigned)((n + kThreads - 1) / kThreads); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
    return v;
}

__device__ __forceinline__ bool visible(const int32_t* radii, int64_t i) {
    return radii[2 * i] > 0 && radii[2 * i + 1] > 0;
}

// ------------------------------------------------------------------ projection
__global__ void project_fwd_kernel(int C, int N, const float* __restrict__ means, const float* __restrict__ quats,
                                   const float* __restrict__ scales, const float* __restrict__ opacities,
                                   const float* __restrict__ viewmats, const float* __restrict__ Ks, int width,
                                   int height, float eps2d, float near_plane, float far_plane, float radius_clip,
                                   int antialiased, int32_t* __restrict__ radii, float* __restrict__ means2d,
                                   float* __restrict__ depths, float* __restrict__ conics,
                                   float* __restrict__ compensations) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)C * N) return;
    const int c = (int)(idx / N);
    const int64_t n = idx - (int64_t)c * N;
    Camera cam = make_camera(viewmats + 16 * c, Ks + 9 * c, width, height);
    Projected p = project_gaussian(cam, means + 3 * n, quats + 4 * n, scales + 3 * n,
                                   opacities ? opacities[n] : -1.f, eps2d, near_plane, far_plane, radius_clip,
                                   antialiased != 0);
    store_projection(p, idx, radii, means2d, depths, conics, compensations);
}

// One thread per Gaussian, looping over the cameras: the per-Gaussian sums
// need no atomics. The camera gradients (optional) are summed over each warp
// with shuffles, then added with one atomic per warp and entry.
__global__ void project_bwd_kernel(int C, int N, const float* __restrict__ means, const float* __restrict__ quats,
                                   const float* __restrict__ scales, const float* __restrict__ viewmats,
                                   const float* __restrict__ Ks, int width, int height, float eps2d,
                                   int antialiased, const int32_t* __restrict__ radii,
                                   const float* __restrict__ v_means2d, const float* __restrict__ v_depths,
                                   const float* __restrict__ v_conics, const float* __restrict__ v_compensations,
                                   float* __restrict__ v_means, float* __restrict__ v_quats,
                                   float* __restrict__ v_scales, float* __restrict__ v_viewmats) {
    const int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const bool in_range = n < N;
    float vm[3] = {0, 0, 0}, vq[4] = {0, 0, 0, 0}, vs[3] = {0, 0, 0};
    for (int c = 0; c < C; ++c) {  // uniform over the warp: the shuffles below see every lane
        const int64_t idx = (int64_t)c * N + n;
        const bool take = in_range && visible(radii, idx);
        float vv[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};  // this camera's gradient, 3x4 row-major
        if (take) {
            Camera cam = make_camera(viewmats + 16 * c, Ks + 9 * c, width, height);
            ProjectionGrad g = project_gaussian_vjp(cam, means + 3 * n, quats + 4 * n, scales + 3 * n, eps2d,
                                                    antialiased != 0, v_means2d + 2 * idx, v_depths[idx],
                                                    v_conics + 3 * idx, v_compensations ? v_compensations[idx] : 0.f);
            for (int k = 0; k < 3; ++k) {
                vm[k] += g.v_mean[k];
                vs[k] += g.v_scale[k];
            }
            for (int k = 0; k < 4; ++k) vq[k] += g.v_quat[k];
            for (int i = 0; i < 3; ++i)
                for (int j = 0; j < 3; ++j) vv[4 * i + j] = g.v_R.m[i][j];
            vv[3] = g.v_t.x;
            vv[7] = g.v_t.y;
            vv[11] = g.v_t.z;
        }
        if (v_viewmats) {
            const bool any = __any_sync(kFullMask, take);
            if (any) {
#pragma unroll
                for (int k = 0; k < 12; ++k) {
                    float s = warp_sum(vv[k]);
                    if ((threadIdx.x & 31) == 0) atomicAdd(&v_viewmats[16 * c + k], s);
                }
            }
        }
    }
    if (!in_range) return;
    for (int k = 0; k < 3; ++k) {
        v_means[3 * n + k] = vm[k];
        v_scales[3 * n + k] = vs[k];
    }
    for (int k = 0; k < 4; ++k) v_quats[4 * n + k] = vq[k];
}

// ------------------------------------------------------------------ spherical harmonics
__global__ void sh_fwd_kernel(int C, int N, int K, int degree, const float* __restrict__ dirs,
                              const float* __restrict__ coeffs, int per_camera, const uint8_t* __restrict__ mask,
                              float* __restrict__ out) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)C * N) return;
    const int64_t n = idx % N;
    float* o = out + 3 * idx;
    if (mask && !mask[idx]) {
        o[0] = o[1] = o[2] = 0.f;
        return;
    }
    sh_color(degree, coeffs + (per_camera ? idx : n) * K * 3, dirs + 3 * idx, o);
}

// One thread per Gaussian, looping over the cameras (shared coefficients sum
// over the cameras without atomics).
__global__ void sh_bwd_kernel(int C, int N, int K, int degree, const float* __restrict__ dirs,
                              const float* __restrict__ coeffs, int per_camera, const uint8_t* __restrict__ mask,
                              const float* __restrict__ v_out, float* __restrict__ v_coeffs,
                              float* __restrict__ v_dirs) {
    const int64_t n = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    if (!per_camera)
        for (int k = 0; k < 3 * K; ++k) v_coeffs[n * K * 3 + k] = 0.f;
    for (int c = 0; c < C; ++c) {
        const int64_t idx = (int64_t)c * N + n;
        float* vc = v_coeffs + (per_camera ? idx : n) * K * 3;
        if (per_camera)
            for (int k = 0; k < 3 * K; ++k) vc[k] = 0.f;
        float* vd = v_dirs ? v_dirs + 3 * idx : nullptr;
        if (mask && !mask[idx]) {
            if (vd) vd[0] = vd[1] = vd[2] = 0.f;
            continue;
        }
        sh_color_vjp(degree, coeffs + (per_camera ? idx : n) * K * 3, dirs + 3 * idx, v_out + 3 * idx, vc, vd);
    }
}

// ------------------------------------------------------------------ tile intersection
__global__ void isect_count_kernel(int C, int N, const float* __restrict__ means2d, const int32_t* __restrict__ radii,
                                   int tile_size, int tw, int th, const uint8_t* __restrict__ tile_mask,
                                   int32_t* __restrict__ tiles_per_gauss, int64_t* __restrict__ cum) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)C * N) return;
    int cnt = 0;
    if (visible(radii, idx)) {
        const int c = (int)(idx / N);
        TileRect r = tile_rect(means2d[2 * idx], means2d[2 * idx + 1], radii[2 * idx], radii[2 * idx + 1], tile_size,
                               tw, th);
        cnt = count_isects(r, c, (int64_t)tw * th, tw, tile_mask);
    }
    tiles_per_gauss[idx] = cnt;
    cum[idx] = cnt;  // turned into an inclusive prefix sum in place
}

// Writes each Gaussian's keys and ids at its slots [cum[idx-1], cum[idx]).
__global__ void isect_emit_kernel(int C, int N, const float* __restrict__ means2d, const int32_t* __restrict__ radii,
                                  const float* __restrict__ depths, int tile_size, int tw, int th, int tile_bits,
                                  const uint8_t* __restrict__ tile_mask, const int64_t* __restrict__ cum,
                                  int64_t* __restrict__ keys, int32_t* __restrict__ ids) {
    const int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (int64_t)C * N || !visible(radii, idx)) return;
    const int c = (int)(idx / N);
    const int64_t n_tiles = (int64_t)tw * th;
    TileRect r = tile_rect(means2d[2 * idx], means2d[2 * idx + 1], radii[2 * idx], radii[2 * idx + 1], tile_size, tw,
                           th);
    emit_isects(r, c, idx, depths[idx], n_tiles, tw, tile_bits, tile_mask, idx == 0 ? 0 : cum[idx - 1], keys, ids);
}

// offsets[t] = first intersection of flat tile t, for t in [0, T]; offsets[T] = M.
__global__ void isect_offsets_kernel(int64_t M, const int64_t* __restrict__ keys, int tile_bits, int64_t n_tiles,
                                     int64_t T, int64_t* __restrict__ offsets) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < M) tile_offsets_at(i, M, keys, tile_bits, n_tiles, T, offsets);
}

// ------------------------------------------------------------------ compositing
// Pixel of thread `tid` in a tile: blocks have the tile's P = tile_size^2
// pixels rounded up to whole warps; the extra threads are outside the image.
struct TilePixel {
    int c, x, y;
    bool inside;
    int64_t pix;
};
__device__ __forceinline__ TilePixel tile_pixel(int64_t t, int64_t n_tiles, int tw, int tile_size, int width,
                                                int height) {
    TilePixel p;
    p.c = (int)(t / n_tiles);
    const int tile = (int)(t - (int64_t)p.c * n_tiles);
    const int tid = threadIdx.x;
    p.x = (tile % tw) * tile_size + tid % tile_size;
    p.y = (tile / tw) * tile_size + tid / tile_size;
    p.inside = tid < tile_size * tile_size && p.x < width && p.y < height;
    p.pix = ((int64_t)p.c * height + p.y) * width + p.x;
    return p;
}

// CMAX: the number of channels the kernel holds in registers (D <= CMAX);
// MAXT: the most threads per block it is launched with (bounds its registers).
template <int CMAX, int MAXT>
__global__ void __launch_bounds__(MAXT) rasterize_fwd_kernel(int D, int width, int height, int tile_size, int tw, int th,
                                     const float* __restrict__ means2d, const float* __restrict__ conics,
                                     const float* __restrict__ colors, const float* __restrict__ opacities,
                                     const float* __restrict__ backgrounds, const int64_t* __restrict__ tile_offsets,
                                     const int32_t* __restrict__ flatten_ids, const uint8_t* __restrict__ tile_mask,
                                     float* __restrict__ out_colors, float* __restrict__ out_alphas,
                                     int32_t* __restrict__ last_ids, int32_t* __restrict__ tile_work) {
    const int64_t t = blockIdx.x;
    if (tile_mask && !tile_mask[t]) return;  // the whole block leaves together
    __shared__ float4 s_gauss[kMaxBatch];    // mean x, mean y, opacity, (unused)
    __shared__ float4 s_conic[kMaxBatch];    // a, b, c, (unused)
    __shared__ int32_t s_id[kMaxBatch];
    __shared__ int s_work;

    const int64_t n_tiles = (int64_t)tw * th;
    const TilePixel px = tile_pixel(t, n_tiles, tw, tile_size, width, height);
    const float fx = px.x + 0.5f, fy = px.y + 0.5f;
    const int64_t s = tile_offsets[t], e = tile_offsets[t + 1];
    const int batch = min((int)blockDim.x, kMaxBatch);
    if (threadIdx.x == 0) s_work = 0;

    float acc[CMAX];
#pragma unroll
    for (int d = 0; d < CMAX; ++d) acc[d] = 0.f;
    float T = 1.f;
    int32_t last = -1;
    bool done = !px.inside;
    int work = px.inside ? (int)(e - s) : 0;  // Gaussians evaluated before this pixel was done

    for (int64_t b0 = s; b0 < e; b0 += batch) {
        // stop when every pixel of the tile is done (also a barrier before the batch is overwritten)
        if (__syncthreads_and(done)) break;
        const int64_t i = b0 + threadIdx.x;
        if (threadIdx.x < batch && i < e) {
            const int64_t g = flatten_ids[i];
            s_id[threadIdx.x] = (int32_t)g;
            s_gauss[threadIdx.x] = make_float4(means2d[2 * g], means2d[2 * g + 1], opacities[g], 0.f);
            s_conic[threadIdx.x] = make_float4(conics[3 * g], conics[3 * g + 1], conics[3 * g + 2], 0.f);
        }
        __syncthreads();
        const int n = (int)min((int64_t)batch, e - b0);
        for (int j = 0; j < n && !done; ++j) {
            const float4 gm = s_gauss[j], gc = s_conic[j];
            const float dx = gm.x - fx, dy = gm.y - fy;
            const float sigma = gaussian_sigma(gc.x, gc.y, gc.z, dx, dy);
            const float raw = gaussian_raw_alpha(gm.z, sigma);
            if (!alpha_contributes(sigma, raw)) continue;
            const float alpha = clamp_alpha(raw);
            const float Tn = T * (1.f - alpha);
            if (Tn <= kTransmittanceEps) {
                done = true;
                work = (int)(b0 + j - s) + 1;
                break;
            }
            const float w = alpha * T;
            const float* col = colors + (int64_t)s_id[j] * D;
#pragma unroll
            for (int d = 0; d < CMAX; ++d)
                if (d < D) acc[d] += col[d] * w;
            T = Tn;
            last = (int32_t)(b0 + j);
        }
    }
    if (tile_work) {
        __syncthreads();
        atomicMax(&s_work, work);
        __syncthreads();
        if (threadIdx.x == 0) tile_work[t] = s_work * tile_size * tile_size;  // every pixel of the tile
    }
    if (!px.inside) return;
    const float* bg = backgrounds ? backgrounds + (int64_t)px.c * D : nullptr;
#pragma unroll
    for (int d = 0; d < CMAX; ++d)
        if (d < D) out_colors[px.pix * D + d] = acc[d] + (bg ? T * bg[d] : 0.f);
    out_alphas[px.pix] = 1.f - T;
    last_ids[px.pix] = last;
}

// Forward-mode derivative of rasterize_fwd_kernel (splat_math.h's gaussian_alpha_jvp and
// composite_jvp_pair, as the CPU backend's splat_rasterize_jvp): one thread per pixel walks
// its tile's Gaussians front to back with the forward's rules. Tangents are read from
// global memory directly (no shared-memory batching: a Jacobian-vector product runs a few
// times per Levenberg-Marquardt iteration, not every step).
template <int CMAX, int MAXT>
__global__ void __launch_bounds__(MAXT) rasterize_jvp_kernel(int D, int width, int height, int tile_size, int tw, int th,
                                     const float* __restrict__ means2d, const float* __restrict__ conics,
                                     const float* __restrict__ colors, const float* __restrict__ opacities,
                                     const float* __restrict__ backgrounds, const int64_t* __restrict__ tile_offsets,
                                     const int32_t* __restrict__ flatten_ids, const uint8_t* __restrict__ tile_mask,
                                     const float* __restrict__ t_means2d, const float* __restrict__ t_conics,
                                     const float* __restrict__ t_colors, const float* __restrict__ t_opacities,
                                     float* __restrict__ t_out_colors, float* __restrict__ t_out_alphas) {
    const int64_t t = blockIdx.x;
    if (tile_mask && !tile_mask[t]) return;
    const int64_t n_tiles = (int64_t)tw * th;
    const TilePixel px = tile_pixel(t, n_tiles, tw, tile_size, width, height);
    if (!px.inside) return;
    const float fx = px.x + 0.5f, fy = px.y + 0.5f;
    const int64_t s = tile_offsets[t], e = tile_offsets[t + 1];
    float tacc[CMAX];
#pragma unroll
    for (int d = 0; d < CMAX; ++d) tacc[d] = 0.f;
    float T = 1.f, tT = 0.f;
    for (int64_t i = s; i < e; ++i) {
        const int64_t g = flatten_ids[i];
        const float a = conics[3 * g], b = conics[3 * g + 1], c = conics[3 * g + 2], o = opacities[g];
        const float dx = means2d[2 * g] - fx, dy = means2d[2 * g + 1] - fy;
        const float sigma = gaussian_sigma(a, b, c, dx, dy);
        const float vis = fast_exp(-sigma);
        const float raw = o * vis;
        if (!alpha_contributes(sigma, raw)) continue;
        const float alpha = clamp_alpha(raw);
        if (T * (1.f - alpha) <= kTransmittanceEps) break;
        const float t_alpha = gaussian_alpha_jvp(o, vis, a, b, c, dx, dy, t_conics[3 * g], t_conics[3 * g + 1],
                                                 t_conics[3 * g + 2], t_means2d[2 * g], t_means2d[2 * g + 1],
                                                 t_opacities[g]);
        const PairTangent r = composite_jvp_pair(alpha, t_alpha, T, tT);
        const float* col = colors + g * D;
        const float* tcol = t_colors + g * D;
#pragma unroll
        for (int d = 0; d < CMAX; ++d)
            if (d < D) tacc[d] += r.t_w * col[d] + r.w * tcol[d];
        T = r.T_next;
        tT = r.t_T_next;
    }
    const float* bg = backgrounds ? backgrounds + (int64_t)px.c * D : nullptr;
#pragma unroll
    for (int d = 0; d < CMAX; ++d)
        if (d < D) t_out_colors[px.pix * D + d] = tacc[d] + (bg ? tT * bg[d] : 0.f);
    t_out_alphas[px.pix] = -tT;
}

template <int CMAX, int MAXT>
__global__ void __launch_bounds__(MAXT) rasterize_bwd_kernel(int D, int width, int height, int tile_size, int tw, int th,
                                     const float* __restrict__ means2d, const float* __restrict__ conics,
                                     const float* __restrict__ colors, const float* __restrict__ opacities,
                                     const float* __restrict__ backgrounds, const int64_t* __restrict__ tile_offsets,
                                     const int32_t* __restrict__ flatten_ids, const uint8_t* __restrict__ tile_mask,
                                     const float* __restrict__ out_alphas, const int32_t* __restrict__ last_ids,
                                     const float* __restrict__ v_colors_out, const float* __restrict__ v_alphas_out,
                                     float* __restrict__ v_means2d, float* __restrict__ v_conics,
                                     float* __restrict__ v_colors, float* __restrict__ v_opacities,
                                     float* __restrict__ v_means2d_abs) {
    const int64_t t = blockIdx.x;
    if (tile_mask && !tile_mask[t]) return;
    __shared__ float4 s_gauss[kMaxBatch];
    __shared__ float4 s_conic[kMaxBatch];
    __shared__ int32_t s_id[kMaxBatch];
    __shared__ float s_col[kMaxBatch * CMAX];  // the batch's colours, read by every pixel
    __shared__ int s_max_last;

    const int64_t n_tiles = (int64_t)tw * th;
    const TilePixel px = tile_pixel(t, n_tiles, tw, tile_size, width, height);
    const float fx = px.x + 0.5f, fy = px.y + 0.5f;
    const int64_t s = tile_offsets[t];
    const int batch = min((int)blockDim.x, kMaxBatch);
    const int lane = threadIdx.x & 31;

    float vC[CMAX];  // dL/dC of this pixel
    float T_final = 0.f, v_alpha_px = 0.f;
    int32_t last = -1;
#pragma unroll
    for (int d = 0; d < CMAX; ++d) vC[d] = 0.f;
    if (px.inside) {
        last = last_ids[px.pix];
        T_final = 1.f - out_alphas[px.pix];
        const float* bg = backgrounds ? backgrounds + (int64_t)px.c * D : nullptr;
        float bg_dot = 0.f;
#pragma unroll
        for (int d = 0; d < CMAX; ++d)
            if (d < D) {
                vC[d] = v_colors_out[px.pix * D + d];
                if (bg) bg_dot += bg[d] * vC[d];
            }
        v_alpha_px = (v_alphas_out ? v_alphas_out[px.pix] : 0.f) - bg_dot;
    }
    if (threadIdx.x == 0) s_max_last = -1;
    __syncthreads();
    atomicMax(&s_max_last, last);
    __syncthreads();
    const int64_t hi = s_max_last;  // the tile's last contributing intersection

    float T = T_final, behind_dot = 0.f;
    for (int64_t b1 = hi; b1 >= s; b1 -= batch) {  // batches [b1 - n + 1, b1], walked back to front
        __syncthreads();  // the previous batch is no longer read
        const int64_t i = b1 - threadIdx.x;
        if (threadIdx.x < batch && i >= s) {
            const int64_t g = flatten_ids[i];
            s_id[threadIdx.x] = (int32_t)g;
            s_gauss[threadIdx.x] = make_float4(means2d[2 * g], means2d[2 * g + 1], opacities[g], 0.f);
            s_conic[threadIdx.x] = make_float4(conics[3 * g], conics[3 * g + 1], conics[3 * g + 2], 0.f);
#pragma unroll
            for (int d = 0; d < CMAX; ++d)
                if (d < D) s_col[threadIdx.x * CMAX + d] = colors[(int64_t)g * D + d];
        }
        __syncthreads();
        const int n = (int)min((int64_t)batch, b1 - s + 1);
        for (int j = 0; j < n; ++j) {  // uniform over the block: every lane reaches the shuffles
            const float4 gm = s_gauss[j], gc = s_conic[j];
            const float dx = gm.x - fx, dy = gm.y - fy;
            const float sigma = gaussian_sigma(gc.x, gc.y, gc.z, dx, dy);
            const float vis = fast_exp(-sigma);
            const bool take = px.inside && b1 - j <= last && alpha_contributes(sigma, gm.z * vis);
            if (!__any_sync(kFullMask, take)) continue;
            const int32_t g = s_id[j];
            const float* col = s_col + j * CMAX;
            float v_rgb[CMAX];
            float v_a = 0.f, v_b = 0.f, v_c = 0.f, v_mx = 0.f, v_my = 0.f, v_o = 0.f, v_ax = 0.f, v_ay = 0.f;
#pragma unroll
            for (int d = 0; d < CMAX; ++d) v_rgb[d] = 0.f;
            if (take) {
                float color_dot = 0.f;
#pragma unroll
                for (int d = 0; d < CMAX; ++d)
                    if (d < D) color_dot += col[d] * vC[d];
                PairGrad r = composite_backward_pair(gm.z, vis, gc.x, gc.y, gc.z, dx, dy, T, T_final, color_dot,
                                                     behind_dot, v_alpha_px);
#pragma unroll
                for (int d = 0; d < CMAX; ++d)
                    if (d < D) v_rgb[d] = r.weight * vC[d];
                v_a = r.g.v_a;
                v_b = r.g.v_b;
                v_c = r.g.v_c;
                v_mx = r.g.v_mx;
                v_my = r.g.v_my;
                v_o = r.g.v_opacity;
                v_ax = fabsf(r.g.v_mx);
                v_ay = fabsf(r.g.v_my);
                behind_dot += r.weight * color_dot;
                T = r.T_front;
            }
            // the warp's sum for this Gaussian, then one atomic per value
#pragma unroll
            for (int d = 0; d < CMAX; ++d)
                if (d < D) v_rgb[d] = warp_sum(v_rgb[d]);
            v_a = warp_sum(v_a);
            v_b = warp_sum(v_b);
            v_c = warp_sum(v_c);
            v_mx = warp_sum(v_mx);
            v_my = warp_sum(v_my);
            v_o = warp_sum(v_o);
            if (v_means2d_abs) {
                v_ax = warp_sum(v_ax);
                v_ay = warp_sum(v_ay);
            }
            if (lane == 0) {
#pragma unroll
                for (int d = 0; d < CMAX; ++d)
                    if (d < D) atomicAdd(&v_colors[(int64_t)g * D + d], v_rgb[d]);
                atomicAdd(&v_conics[3 * (int64_t)g], v_a);
                atomicAdd(&v_conics[3 * (int64_t)g + 1], v_b);
                atomicAdd(&v_conics[3 * (int64_t)g + 2], v_c);
                atomicAdd(&v_means2d[2 * (int64_t)g], v_mx);
                atomicAdd(&v_means2d[2 * (int64_t)g + 1], v_my);
                atomicAdd(&v_opacities[g], v_o);
                if (v_means2d_abs) {
                    atomicAdd(&v_means2d_abs[2 * (int64_t)g], v_ax);
                    atomicAdd(&v_means2d_abs[2 * (int64_t)g + 1], v_ay);
                }
            }
        }
    }
}

int channel_bucket(int D) {
    if (D <= 1) return 1;
    if (D <= 2) return 2;
    if (D <= 3) return 3;
    if (D <= 4) return 4;
    if (D <= 8) return 8;
    if (D <= 16) return 16;
    if (D <= 32) return 32;
    return 0;
}

inline int tile_threads(int tile_size) { return (tile_size * tile_size + 31) / 32 * 32; }

int64_t key_tile_bits(int tw, int th) { return bit_length((int64_t)tw * th); }

// In-place inclusive prefix sum of n int64 values (with temp == nullptr: the
// scratch size into temp_bytes).
cudaError_t inclusive_sum(void* temp, size_t& temp_bytes, int64_t* data, int64_t n, cudaStream_t st) {
#if defined(SPLAT_CUDA_HOST_EMULATION)
    return emu::inclusive_sum(temp, temp_bytes, data, n);
#else
    return cub::DeviceScan::InclusiveSum(temp, temp_bytes, data, data, n, st);
#endif
}

// Stable sort of M (key, id) pairs by the low end_bit bits of the key, between
// the buffers a and b; *which: the one holding the result (0: a, 1: b). With
// temp == nullptr: the scratch size into temp_bytes.
cudaError_t sort_pairs(void* temp, size_t& temp_bytes, int64_t* keys_a, int32_t* ids_a, int64_t* keys_b,
                       int32_t* ids_b, int64_t M, int end_bit, cudaStream_t st, int* which) {
#if defined(SPLAT_CUDA_HOST_EMULATION)
    return emu::sort_pairs(temp, temp_bytes, keys_a, ids_a, keys_b, ids_b, M, end_bit, which);
#else
    cub::DoubleBuffer<int64_t> k(keys_a, keys_b);
    cub::DoubleBuffer<int32_t> v(ids_a, ids_b);
    cudaError_t err = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, k, v, M, 0, end_bit, st);
    if (which) *which = k.selector;
    return err;
#endif
}

}  // namespace

// ================================================================== C ABI
#define RETURN_LAUNCH_ERROR() return (int)cudaGetLastError()

SPLAT_API const char* splatcu_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }

// Largest channel count one rasterize call takes (render.py chunks above it).
SPLAT_API int splatcu_max_channels() { return 32; }

SPLAT_API int splatcu_project_fwd(int C, int N, const float* means, const float* quats, const float* scales,
                                  const float* opacities, const float* viewmats, const float* Ks, int width,
                                  int height, float eps2d, float near_plane, float far_plane, float radius_clip,
                                  int antialiased, int32_t* radii, float* means2d, float* depths, float* conics,
                                  float* compensations, void* stream) {
    const int64_t total = (int64_t)C * N;
    if (total == 0) return 0;
    SPLAT_LAUNCH(project_fwd_kernel, blocks_for(total), kThreads, (cudaStream_t)stream,
        C, N, means, quats, scales, opacities, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
        radius_clip, antialiased, radii, means2d, depths, conics, compensations);
    RETURN_LAUNCH_ERROR();
}

SPLAT_API int splatcu_project_bwd(int C, int N, const float* means, const float* quats, const float* scales,
                                  const float* viewmats, const float* Ks, int width, int height, float eps2d,
                                  int antialiased, const int32_t* radii, const float* v_means2d,
                                  const float* v_depths, const float* v_conics, const float* v_compensations,
                                  float* v_means, float* v_quats, float* v_scales, float* v_viewmats, void* stream) {
    cudaStream_t st = (cudaStream_t)stream;
    if (v_viewmats) {
        cudaError_t err = cudaMemsetAsync(v_viewmats, 0, sizeof(float) * 16 * C, st);
        if (err != cudaSuccess) return (int)err;
    }
    if ((int64_t)C * N == 0) return 0;
    SPLAT_LAUNCH(project_bwd_kernel, blocks_for(N), kThreads, st, C, N, means, quats, scales, viewmats, Ks, width, height,
                                                           eps2d, antialiased, radii, v_means2d, v_depths, v_conics,
                                                           v_compensations, v_means, v_quats, v_scales, v_viewmats);
    RETURN_LAUNCH_ERROR();
}

SPLAT_API int splatcu_sh_fwd(int C, int N, int K, int degree, const float* dirs, const float* coeffs, int per_camera,
                             const uint8_t* mask, float* out, void* stream) {
    const int64_t total = (int64_t)C * N;
    if (total == 0) return 0;
    SPLAT_LAUNCH(sh_fwd_kernel, blocks_for(total), kThreads, (cudaStream_t)stream, C, N, K, degree, dirs, coeffs,
                                                                            per_camera, mask, out);
    RETURN_LAUNCH_ERROR();
}

SPLAT_API int splatcu_sh_bwd(int C, int N, int K, int degree, const float* dirs, const float* coeffs, int per_camera,
                             const uint8_t* mask, const float* v_out, float* v_coeffs, float* v_dirs, void* stream) {
    if ((int64_t)C * N == 0) return 0;
    SPLAT_LAUNCH(sh_bwd_kernel, blocks_for(N), kThreads, (cudaStream_t)stream, C, N, K, degree, dirs, coeffs, per_camera,
                                                                        mask, v_out, v_coeffs, v_dirs);
    RETURN_LAUNCH_ERROR();
}

// Temporary storage (bytes) for splatcu_isect_count on C*N Gaussians.
SPLAT_API int splatcu_isect_count_temp_bytes(int64_t CN, size_t* bytes) {
    *bytes = 0;
    return (int)inclusive_sum(nullptr, *bytes, nullptr, CN, nullptr);
}

// Pass 1: tiles_per_gauss [C*N] (int32) and cum [C*N] (int64), the inclusive
// prefix sum of the counts; cum[C*N - 1] is the number of intersections M.
SPLAT_API int splatcu_isect_count(int C, int N, const float* means2d, const int32_t* radii, int tile_size, int tw,
                                  int th, const uint8_t* tile_mask, int32_t* tiles_per_gauss, int64_t* cum,
                                  void* temp, size_t temp_bytes, void* stream) {
    const int64_t CN = (int64_t)C * N;
    if (CN == 0) return 0;
    cudaStream_t st = (cudaStream_t)stream;
    SPLAT_LAUNCH(isect_count_kernel, blocks_for(CN), kThreads, st, C, N, means2d, radii, tile_size, tw, th, tile_mask,
                                                            tiles_per_gauss, cum);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return (int)err;
    return (int)inclusive_sum(temp, temp_bytes, cum, CN, st);
}

// Bits of the sort keys for C cameras of tw x th tiles (32 depth bits + tile + camera).
SPLAT_API int splatcu_isect_key_bits(int C, int tw, int th) {
    return 32 + (int)key_tile_bits(tw, th) + (int)bit_length((int64_t)C);
}

// Temporary storage (bytes) for sorting M intersections.
SPLAT_API int splatcu_isect_sort_temp_bytes(int64_t M, int C, int tw, int th, size_t* bytes) {
    *bytes = 0;
    return (int)sort_pairs(nullptr, *bytes, nullptr, nullptr, nullptr, nullptr, M, splatcu_isect_key_bits(C, tw, th),
                           nullptr, nullptr);
}

// Pass 2: emit the M intersections into (keys_a, ids_a), radix-sort them by key
// (stable: equal depths stay in Gaussian order) using (keys_b, ids_b) as the
// second buffer, and compute tile_offsets [C*th*tw + 1]. *which is set to 0 or
// 1: the buffer pair that holds the sorted result.
SPLAT_API int splatcu_isect_fill(int C, int N, const float* means2d, const int32_t* radii, const float* depths,
                                 int tile_size, int tw, int th, const uint8_t* tile_mask, const int64_t* cum, int64_t M,
                                 int64_t* keys_a, int32_t* ids_a, int64_t* keys_b, int32_t* ids_b, void* temp,
                                 size_t temp_bytes, int64_t* tile_offsets, int* which, void* stream) {
    cudaStream_t st = (cudaStream_t)stream;
    const int64_t n_tiles = (int64_t)tw * th;
    const int64_t T = (int64_t)C * n_tiles;
    const int tile_bits = (int)key_tile_bits(tw, th);
    *which = 0;
    if (M == 0) return (int)cudaMemsetAsync(tile_offsets, 0, sizeof(int64_t) * (T + 1), st);
    const int64_t CN = (int64_t)C * N;
    SPLAT_LAUNCH(isect_emit_kernel, blocks_for(CN), kThreads, st, C, N, means2d, radii, depths, tile_size, tw, th, tile_bits,
                                                           tile_mask, cum, keys_a, ids_a);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return (int)err;
    err = sort_pairs(temp, temp_bytes, keys_a, ids_a, keys_b, ids_b, M, splatcu_isect_key_bits(C, tw, th), st, which);
    if (err != cudaSuccess) return (int)err;
    SPLAT_LAUNCH(isect_offsets_kernel, blocks_for(M), kThreads, st, M, *which ? keys_b : keys_a, tile_bits, n_tiles, T,
                 tile_offsets);
    RETURN_LAUNCH_ERROR();
}

// Launches KERNEL<CMAX, MAXT> for the smallest CMAX >= D and MAXT >= the block size
// (tiles up to 16x16 get the 256-thread build, whose kernels may use more registers).
#define SPLAT_LAUNCH_T(KERNEL, CMAX, ...)                                                        \
    if (block.x <= 256) {                                                                      \
        auto kernel = KERNEL<CMAX, 256>;                                                       \
        SPLAT_LAUNCH(kernel, grid, block, st, __VA_ARGS__);                                    \
    } else {                                                                                   \
        auto kernel = KERNEL<CMAX, 1024>;                                                      \
        SPLAT_LAUNCH(kernel, grid, block, st, __VA_ARGS__);                                    \
    }
#define SPLAT_DISPATCH_CHANNELS(D, KERNEL, ...)                        \
    switch (channel_bucket(D)) {                                       \
        case 1: SPLAT_LAUNCH_T(KERNEL, 1, __VA_ARGS__) break;          \
        case 2: SPLAT_LAUNCH_T(KERNEL, 2, __VA_ARGS__) break;          \
        case 3: SPLAT_LAUNCH_T(KERNEL, 3, __VA_ARGS__) break;          \
        case 4: SPLAT_LAUNCH_T(KERNEL, 4, __VA_ARGS__) break;          \
        case 8: SPLAT_LAUNCH_T(KERNEL, 8, __VA_ARGS__) break;          \
        case 16: SPLAT_LAUNCH_T(KERNEL, 16, __VA_ARGS__) break;        \
        case 32: SPLAT_LAUNCH_T(KERNEL, 32, __VA_ARGS__) break;        \
        default: return (int)cudaErrorInvalidValue;                    \
    }

// Same arguments as the CPU backend's splat_rasterize_fwd, plus the stream.
// Outputs of tiles outside tile_mask are left as the caller set them.
SPLAT_API int splatcu_rasterize_fwd(int C, int N, int D, int width, int height, int tile_size, int tw, int th,
                                    const float* means2d, const float* conics, const float* colors,
                                    const float* opacities, const float* backgrounds, const int64_t* tile_offsets,
                                    const int32_t* flatten_ids, const uint8_t* tile_mask, float* out_colors,
                                    float* out_alphas, int32_t* last_ids, int32_t* tile_work, void* stream) {
    (void)N;
    const int64_t n_blocks = (int64_t)C * tw * th;
    if (n_blocks == 0) return 0;
    if (n_blocks > 0x7fffffff || tile_size < 1 || tile_size > 32) return (int)cudaErrorInvalidValue;
    cudaStream_t st = (cudaStream_t)stream;
    const dim3 grid((unsigned)n_blocks), block(tile_threads(tile_size));
    SPLAT_DISPATCH_CHANNELS(D, rasterize_fwd_kernel, D, width, height, tile_size, tw, th, means2d, conics, colors,
                            opacities, backgrounds, tile_offsets, flatten_ids, tile_mask, out_colors, out_alphas,
                            last_ids, tile_work);
    RETURN_LAUNCH_ERROR();
}

// Same arguments as the CPU backend's splat_rasterize_jvp, plus the stream.
SPLAT_API int splatcu_rasterize_jvp(int C, int N, int D, int width, int height, int tile_size, int tw, int th,
                                    const float* means2d, const float* conics, const float* colors,
                                    const float* opacities, const float* backgrounds, const int64_t* tile_offsets,
                                    const int32_t* flatten_ids, const uint8_t* tile_mask, const float* t_means2d,
                                    const float* t_conics, const float* t_colors, const float* t_opacities,
                                    float* t_out_colors, float* t_out_alphas, void* stream) {
    (void)N;
    const int64_t n_blocks = (int64_t)C * tw * th;
    if (n_blocks == 0) return 0;
    if (n_blocks > 0x7fffffff || tile_size < 1 || tile_size > 32) return (int)cudaErrorInvalidValue;
    cudaStream_t st = (cudaStream_t)stream;
    const dim3 grid((unsigned)n_blocks), block(tile_threads(tile_size));
    SPLAT_DISPATCH_CHANNELS(D, rasterize_jvp_kernel, D, width, height, tile_size, tw, th, means2d, conics, colors,
                            opacities, backgrounds, tile_offsets, flatten_ids, tile_mask, t_means2d, t_conics,
                            t_colors, t_opacities, t_out_colors, t_out_alphas);
    RETURN_LAUNCH_ERROR();
}

// Same arguments as the CPU backend's splat_rasterize_bwd, plus the stream.
// Gradients are accumulated with atomics (summation order varies run to run).
SPLAT_API int splatcu_rasterize_bwd(int C, int N, int D, int width, int height, int tile_size, int tw, int th,
                                    const float* means2d, const float* conics, const float* colors,
                                    const float* opacities, const float* backgrounds, const int64_t* tile_offsets,
                                    const int32_t* flatten_ids, const uint8_t* tile_mask, const float* out_alphas,
                                    const int32_t* last_ids, const float* v_colors_out, const float* v_alphas_out,
                                    float* v_means2d, float* v_conics, float* v_colors, float* v_opacities,
                                    float* v_means2d_abs, void* stream) {
    cudaStream_t st = (cudaStream_t)stream;
    const int64_t CN = (int64_t)C * N;
    cudaError_t err = cudaSuccess;
    if (CN) {
        if ((err = cudaMemsetAsync(v_means2d, 0, sizeof(float) * 2 * CN, st)) ||
            (err = cudaMemsetAsync(v_conics, 0, sizeof(float) * 3 * CN, st)) ||
            (err = cudaMemsetAsync(v_colors, 0, sizeof(float) * D * CN, st)) ||
            (err = cudaMemsetAsync(v_opacities, 0, sizeof(float) * CN, st)) ||
            (v_means2d_abs && (err = cudaMemsetAsync(v_means2d_abs, 0, sizeof(float) * 2 * CN, st))))
            return (int)err;
    }
    const int64_t n_blocks = (int64_t)C * tw * th;
    if (n_blocks == 0 || CN == 0) return 0;
    if (n_blocks > 0x7fffffff || tile_size < 1 || tile_size > 32) return (int)cudaErrorInvalidValue;
    const dim3 grid((unsigned)n_blocks), block(tile_threads(tile_size));
    SPLAT_DISPATCH_CHANNELS(D, rasterize_bwd_kernel, D, width, height, tile_size, tw, th, means2d, conics, colors,
                            opacities, backgrounds, tile_offsets, flatten_ids, tile_mask, out_alphas, last_ids,
                            v_colors_out, v_alphas_out, v_means2d, v_conics, v_colors, v_opacities, v_means2d_abs);
    RETURN_LAUNCH_ERROR();
}

// ------------------------------------------------------------------ ray tracing
#include "raytrace_kernels.cuh"

// ------------------------------------------------------------------ fused L1 + D-SSIM loss
#include "loss_kernels.cuh"

// ------------------------------------------------------------------ fused Adam
#include "optim_kernels.cuh"
