// loss_kernels.cuh: the fused photometric loss (1 - lambda) L1 + lambda (1 - SSIM)
// on the GPU (included at the end of splat_cuda.cu, so that one library, and its
// host emulation in the tests, holds it). The per-pixel math is
// ../include/splat_loss.h, the code the CPU backend (cpu/loss_cpu.cpp) runs.
//
// As in fused-ssim (Mallick et al., Taming 3DGS): one block of 16 x 16 threads
// per 16 x 16-pixel tile and channel. The block stages the tile and its 5-pixel
// halo in shared memory, blurs the rows of the halo horizontally, then each
// thread blurs its column vertically and evaluates its pixel. The forward saves
// the three partial maps of the backward, which blurs them the same way.
//
// The loss sums are reduced without atomics, so they are the same run to run:
// each block adds its pixels' terms in double with a fixed tree in shared
// memory, and one more block adds the blocks' sums in a fixed order.
#include "../include/splat_loss.h"

namespace {

constexpr int kLossTile = 16;                              // output pixels per block side
constexpr int kLossThreads = kLossTile * kLossTile;        // one thread per output pixel
constexpr int kLossSpan = kLossTile + 2 * kSsimRadius;     // tile + halo (26)
constexpr int kLossSumThreads = 256;                       // threads of the final sum

// Sums a[0..kLossThreads) in place with a fixed tree (all threads call it); a[0] holds the total.
__device__ __forceinline__ void block_tree_sum(double* a0, double* a1, double* a2) {
    __syncthreads();
    for (int s = kLossThreads / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            a0[threadIdx.x] += a0[threadIdx.x + s];
            a1[threadIdx.x] += a1[threadIdx.x + s];
            a2[threadIdx.x] += a2[threadIdx.x + s];
        }
        __syncthreads();
    }
}

// The channel and tile of this block: blocks run channel-fastest, so neighbouring
// blocks read the same pixels of the [H, W, C] images.
struct LossTile {
    int c, x0, y0;  // channel, first pixel of the tile
};
__device__ __forceinline__ LossTile loss_tile(int C, int tiles_x) {
    const int b = (int)blockIdx.x;
    const int tile = b / C;
    return {b - tile * C, (tile % tiles_x) * kLossTile, (tile / tiles_x) * kLossTile};
}

// Element i of the tile's span (the tile and its halo, kLossSpan x kLossSpan, row-major):
// its pixel index p = y * W + x in the image; false where it falls outside the image.
__device__ __forceinline__ bool span_pixel(const LossTile& t, int i, int H, int W, int64_t& p) {
    const int gy = t.y0 - kSsimRadius + i / kLossSpan, gx = t.x0 - kSsimRadius + i % kLossSpan;
    p = (int64_t)gy * W + gx;
    return gy >= 0 && gy < H && gx >= 0 && gx < W;
}

// The vertical pass at tile pixel (px, py): the window over a map's horizontally
// blurred span rows h [kLossSpan x kLossTile].
__device__ __forceinline__ float blur_column_at(const SsimWindow& win, const float* h, int px, int py) {
    float a = 0.f;
#pragma unroll
    for (int k = 0; k < kSsimWindow; ++k) a += win.w[k] * h[(py + k) * kLossTile + px];
    return a;
}

// Forward: per block the sums (L1, SSIM, kept count) of its pixels into
// block_sums[3 * block ...]; the partial maps [H, W, C] when d_mu != null.
__global__ void __launch_bounds__(kLossThreads)
    fused_loss_fwd_kernel(int H, int W, int C, int tiles_x, const float* __restrict__ pred,
                          const float* __restrict__ gt, const uint8_t* __restrict__ mask, SsimWindow win,
                          float* __restrict__ d_mu, float* __restrict__ d_exx, float* __restrict__ d_exy,
                          double* __restrict__ block_sums) {
    __shared__ float sx[kLossSpan * kLossSpan], sy[kLossSpan * kLossSpan];
    __shared__ float hmom[5][kLossSpan * kLossTile];
    __shared__ double red[3][kLossThreads];
    const LossTile t = loss_tile(C, tiles_x);
    const int tid = (int)threadIdx.x;
    // the masked images over the tile and its halo, zero outside the image
    for (int i = tid; i < kLossSpan * kLossSpan; i += kLossThreads) {
        int64_t p;
        float xv = 0.f, yv = 0.f;
        if (span_pixel(t, i, H, W, p)) {
            const float keep = (mask == nullptr || mask[p]) ? 1.f : 0.f;
            xv = pred[p * C + t.c] * keep;
            yv = gt[p * C + t.c] * keep;
        }
        sx[i] = xv;
        sy[i] = yv;
    }
    __syncthreads();
    // horizontal pass over the rows of the halo: the five moments
    for (int i = tid; i < kLossSpan * kLossTile; i += kLossThreads) {
        const int r = i / kLossTile, q = i % kLossTile;
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, a4 = 0.f;
#pragma unroll
        for (int k = 0; k < kSsimWindow; ++k) {
            const float w = win.w[k], xv = sx[r * kLossSpan + q + k], yv = sy[r * kLossSpan + q + k];
            a0 += w * xv;
            a1 += w * yv;
            a2 += w * (xv * xv);
            a3 += w * (yv * yv);
            a4 += w * (xv * yv);
        }
        hmom[0][i] = a0;
        hmom[1][i] = a1;
        hmom[2][i] = a2;
        hmom[3][i] = a3;
        hmom[4][i] = a4;
    }
    __syncthreads();
    // vertical pass and the pixel's terms
    const int px = tid % kLossTile, py = tid / kLossTile;
    const int gx = t.x0 + px, gy = t.y0 + py;
    double l1 = 0.0, ss = 0.0, count = 0.0;
    if (gx < W && gy < H) {
        float m[5];
#pragma unroll
        for (int j = 0; j < 5; ++j) m[j] = blur_column_at(win, hmom[j], px, py);
        SsimGrad g;
        const float S = ssim_pixel_grad(m[0], m[1], m[2], m[3], m[4], g);
        const int64_t p = (int64_t)gy * W + gx;
        const int64_t e = p * C + t.c;
        const float keep = (mask == nullptr || mask[p]) ? 1.f : 0.f;
        if (d_mu) {
            d_mu[e] = g.mu_x * keep;
            d_exx[e] = g.exx * keep;
            d_exy[e] = g.exy * keep;
        }
        l1 = (double)(fabsf(pred[e] - gt[e]) * keep);
        ss = (double)(S * keep);
        count = (double)keep;
    }
    red[0][tid] = l1;
    red[1][tid] = ss;
    red[2][tid] = count;
    block_tree_sum(red[0], red[1], red[2]);
    if (tid == 0) {
        block_sums[3 * (int64_t)blockIdx.x] = red[0][0];
        block_sums[3 * (int64_t)blockIdx.x + 1] = red[1][0];
        block_sums[3 * (int64_t)blockIdx.x + 2] = red[2][0];
    }
}

// One block: the blocks' sums in a fixed order -> terms[4] (see splatcu_fused_loss_fwd).
__global__ void __launch_bounds__(kLossSumThreads)
    fused_loss_sum_kernel(int n_blocks, const double* __restrict__ block_sums, float ssim_lambda,
                          double* __restrict__ terms) {
    __shared__ double red[3][kLossSumThreads];
    const int tid = (int)threadIdx.x;
    double l1 = 0.0, ss = 0.0, count = 0.0;
    for (int b = tid; b < n_blocks; b += kLossSumThreads) {
        l1 += block_sums[3 * (int64_t)b];
        ss += block_sums[3 * (int64_t)b + 1];
        count += block_sums[3 * (int64_t)b + 2];
    }
    red[0][tid] = l1;
    red[1][tid] = ss;
    red[2][tid] = count;
    __syncthreads();
    for (int s = kLossSumThreads / 2; s > 0; s >>= 1) {
        if (tid < s) {
            red[0][tid] += red[0][tid + s];
            red[1][tid] += red[1][tid + s];
            red[2][tid] += red[2][tid + s];
        }
        __syncthreads();
    }
    if (tid == 0) {
        const double scale = 1.0 / (red[2][0] > 1.0 ? red[2][0] : 1.0);
        const double lam = (double)ssim_lambda;
        terms[0] = red[0][0] * scale;
        terms[1] = red[1][0] * scale;
        terms[2] = (1.0 - lam) * terms[0] + lam * (1.0 - terms[1]);
        terms[3] = scale;
    }
}

// Backward: grad_pred = grad_loss * dL/dpred from the forward's terms and partial maps.
__global__ void __launch_bounds__(kLossThreads)
    fused_loss_bwd_kernel(int H, int W, int C, int tiles_x, const float* __restrict__ pred,
                          const float* __restrict__ gt, const uint8_t* __restrict__ mask, float ssim_lambda,
                          const double* __restrict__ terms, const float* __restrict__ d_mu,
                          const float* __restrict__ d_exx, const float* __restrict__ d_exy,
                          const float* __restrict__ grad_loss, SsimWindow win, float* __restrict__ grad_pred) {
    __shared__ float sp[3][kLossSpan * kLossSpan];
    __shared__ float hp[3][kLossSpan * kLossTile];
    const LossTile t = loss_tile(C, tiles_x);
    const int tid = (int)threadIdx.x;
    const float* const maps[3] = {d_mu, d_exx, d_exy};
    for (int i = tid; i < kLossSpan * kLossSpan; i += kLossThreads) {
        int64_t p;
        const bool inside = span_pixel(t, i, H, W, p);
#pragma unroll
        for (int j = 0; j < 3; ++j) sp[j][i] = inside ? maps[j][p * C + t.c] : 0.f;
    }
    __syncthreads();
    for (int i = tid; i < kLossSpan * kLossTile; i += kLossThreads) {
        const int r = i / kLossTile, q = i % kLossTile;
#pragma unroll
        for (int j = 0; j < 3; ++j) {
            float a = 0.f;
#pragma unroll
            for (int k = 0; k < kSsimWindow; ++k) a += win.w[k] * sp[j][r * kLossSpan + q + k];
            hp[j][i] = a;
        }
    }
    __syncthreads();
    const int px = tid % kLossTile, py = tid / kLossTile;
    const int gx = t.x0 + px, gy = t.y0 + py;
    if (gx >= W || gy >= H) return;
    float b[3];
#pragma unroll
    for (int j = 0; j < 3; ++j) b[j] = blur_column_at(win, hp[j], px, py);
    const double go = (double)grad_loss[0], scale = terms[3], lam = (double)ssim_lambda;
    const float coef_l1 = (float)(go * (1.0 - lam) * scale);
    const float coef_ssim = (float)(-go * lam * scale);
    const int64_t p = (int64_t)gy * W + gx;
    const int64_t e = p * C + t.c;
    const float keep = (mask == nullptr || mask[p]) ? 1.f : 0.f;
    // (a kept pixel's masked values are its values; a left-out one gets 0)
    const float pv = pred[e], gv = gt[e];
    const float v = coef_l1 * l1_sign(pv - gv) + coef_ssim * (b[0] + 2.f * pv * b[1] + gv * b[2]);
    grad_pred[e] = keep != 0.f ? v : 0.f;
}

// Blocks of the forward and backward launches, or -1 past the grid limit.
int64_t fused_loss_blocks(int H, int W, int C, int* tiles_x) {
    *tiles_x = (W + kLossTile - 1) / kLossTile;
    const int64_t n = (int64_t)*tiles_x * ((H + kLossTile - 1) / kLossTile) * C;
    return n > 0x7fffffff ? -1 : n;
}

}  // namespace

// Scratch of splatcu_fused_loss_fwd for [H, W, C] images, in doubles.
SPLAT_API int64_t splatcu_fused_loss_scratch(int H, int W, int C) {
    int tiles_x;
    const int64_t n = (H > 0 && W > 0 && C > 0) ? fused_loss_blocks(H, W, C, &tiles_x) : 0;
    return n < 0 ? 0 : 3 * n;
}

// Same arguments as the CPU backend's splat_fused_loss_fwd (terms[4] and the partial
// maps on the device), plus block_sums, a scratch of splatcu_fused_loss_scratch(H, W,
// C) doubles, and the stream.
SPLAT_API int splatcu_fused_loss_fwd(int H, int W, int C, const float* pred, const float* gt, const uint8_t* mask,
                                     float ssim_lambda, double* terms, float* d_mu, float* d_exx, float* d_exy,
                                     double* block_sums, void* stream) {
    if (H <= 0 || W <= 0 || C <= 0) return (int)cudaErrorInvalidValue;
    int tiles_x;
    const int64_t n_blocks = fused_loss_blocks(H, W, C, &tiles_x);
    if (n_blocks < 0) return (int)cudaErrorInvalidValue;
    cudaStream_t st = (cudaStream_t)stream;
    const SsimWindow win = ssim_window();
    SPLAT_LAUNCH(fused_loss_fwd_kernel, (unsigned)n_blocks, kLossThreads, st, H, W, C, tiles_x, pred, gt, mask, win,
                 d_mu, d_exx, d_exy, block_sums);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return (int)err;
    SPLAT_LAUNCH(fused_loss_sum_kernel, 1, kLossSumThreads, st, (int)n_blocks, block_sums, ssim_lambda, terms);
    RETURN_LAUNCH_ERROR();
}

// Same arguments as the CPU backend's splat_fused_loss_bwd (all on the device), plus the stream.
SPLAT_API int splatcu_fused_loss_bwd(int H, int W, int C, const float* pred, const float* gt, const uint8_t* mask,
                                     float ssim_lambda, const double* terms, const float* d_mu,
                                     const float* d_exx, const float* d_exy, const float* grad_loss,
                                     float* grad_pred, void* stream) {
    if (H <= 0 || W <= 0 || C <= 0) return (int)cudaErrorInvalidValue;
    int tiles_x;
    const int64_t n_blocks = fused_loss_blocks(H, W, C, &tiles_x);
    if (n_blocks < 0) return (int)cudaErrorInvalidValue;
    const SsimWindow win = ssim_window();
    SPLAT_LAUNCH(fused_loss_bwd_kernel, (unsigned)n_blocks, kLossThreads, (cudaStream_t)stream, H, W, C, tiles_x,
                 pred, gt, mask, ssim_lambda, terms, d_mu, d_exx, d_exy, grad_loss, win, grad_pred);
    RETURN_LAUNCH_ERROR();
}
