// loss_cpu.cpp: the fused photometric loss (1 - lambda) L1 + lambda (1 - SSIM)
// on the CPU (C++17, OpenMP), forward and hand-written backward, built into the
// same library as splat_cpu.cpp. The per-pixel math is ../include/splat_loss.h,
// shared with the CUDA kernels (cuda/loss_kernels.cuh).
//
// Images are [H, W, C] float32, contiguous: a row is L = W * C floats, and a
// horizontal tap is a shift by C within it, so every pass runs over whole rows
// with the row elements as the SIMD lanes (any C, no transposes).
//
// Work split: each thread owns a contiguous band of output rows. It blurs
// rows horizontally into a ring of the 11 most recent rows (the window's
// height), and each output row is the vertical 11-tap sum over the ring: every
// input row is blurred horizontally once per band (plus the 10-row halo
// between bands), and the intermediates stay in cache.
//
// Determinism: every pixel's value is computed by the same instructions
// whatever band it falls in, and the loss sums are per-row partial sums in
// double (8 fixed interleaved lanes) reduced in row order, so results are bit
// for bit the same run to run and for any thread count.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../include/splat_loss.h"
#include "flush_denormals.h"

using namespace splat;

namespace {

constexpr int kR = kSsimRadius;
constexpr int kK = kSsimWindow;
constexpr int64_t kSerialElements = 1 << 15;  // below this many floats one thread does it all

// n float buffers of up to len floats each, carved from one allocation, each
// starting at a 64-byte boundary: the vectorised loops then see the same
// alignment on every thread and every run (so they peel the same way).
class Arena {
  public:
    Arena(int n, int len) : stride_(((size_t)len + 15) / 16 * 16), raw_(n * stride_ + 16) {
        base_ = (float*)(((uintptr_t)raw_.data() + 63) & ~(uintptr_t)63);
    }
    float* take() { return base_ + stride_ * used_++; }  // at most n times

  private:
    size_t stride_;
    std::vector<float> raw_;
    float* base_;
    size_t used_ = 0;
};

// Sum of n floats in double over 8 interleaved lanes added in a fixed order
// (vectorises, and the result does not depend on alignment or threads).
inline double fixed_sum(const float* __restrict v, int64_t n) {
    double lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; ++k) lane[k] += (double)v[i + k];
    for (int k = 0; i < n; ++i, ++k) lane[k] += (double)v[i];
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

// The output rows [r0, r1) of this thread: contiguous bands.
inline void band_of_thread(int H, int& r0, int& r1) {
    const int n = omp_get_num_threads(), t = omp_get_thread_num();
    r0 = (int)((int64_t)H * t / n);
    r1 = (int)((int64_t)H * (t + 1) / n);
}

// body(r0, r1) on each thread's band of the H output rows (serially for small images),
// denormals flushed.
template <class Body>
void for_each_band(int H, int L, Body&& body) {
#pragma omp parallel if ((int64_t)H * L > kSerialElements)
    {
        FlushDenormals ftz;
        int r0, r1;
        band_of_thread(H, r0, r1);
        if (r0 < r1) body(r0, r1);
    }
}

// The mask of row r spread over its L = W * C elements (1 kept, 0 left out).
inline void mask_row(const uint8_t* mask, int r, int W, int C, float* out) {
    const uint8_t* m = mask + (int64_t)r * W;
    for (int x = 0; x < W; ++x) {
        const float v = m[x] ? 1.f : 0.f;
        for (int c = 0; c < C; ++c) out[x * C + c] = v;
    }
}

// Horizontal pass of the forward on one row: the five moments of the masked
// prediction x and ground truth y, blurred along the row. xp, yp: the row
// with kR * C zeros on either side.
void blur_row_moments(int L, int C, const SsimWindow& win, const float* __restrict xp, const float* __restrict yp,
                      float* __restrict mx, float* __restrict my, float* __restrict mxx, float* __restrict myy,
                      float* __restrict mxy) {
#pragma omp simd
    for (int i = 0; i < L; ++i) {
        float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f, a4 = 0.f;
#pragma GCC unroll 11
        for (int k = 0; k < kK; ++k) {
            const float w = win.w[k], xv = xp[i + k * C], yv = yp[i + k * C];
            a0 += w * xv;
            a1 += w * yv;
            a2 += w * (xv * xv);
            a3 += w * (yv * yv);
            a4 += w * (xv * yv);
        }
        mx[i] = a0;
        my[i] = a1;
        mxx[i] = a2;
        myy[i] = a3;
        mxy[i] = a4;
    }
}

// Horizontal pass of the backward: one padded row of a partial map, blurred.
void blur_row(int L, int C, const SsimWindow& win, const float* __restrict src, float* __restrict dst) {
#pragma omp simd
    for (int i = 0; i < L; ++i) {
        float a = 0.f;
#pragma GCC unroll 11
        for (int k = 0; k < kK; ++k) a += win.w[k] * src[i + k * C];
        dst[i] = a;
    }
}

// Vertical pass: out[i] = sum_k w[k] rows[k][i] (rows outside the image point at zeros).
inline void blur_column(int L, const SsimWindow& win, const float* const* rows, float* __restrict out) {
    const float *r0 = rows[0], *r1 = rows[1], *r2 = rows[2], *r3 = rows[3], *r4 = rows[4], *r5 = rows[5],
                *r6 = rows[6], *r7 = rows[7], *r8 = rows[8], *r9 = rows[9], *r10 = rows[10];
    const SsimWindow w = win;
#pragma omp simd
    for (int i = 0; i < L; ++i) {
        float a = 0.f;
        a += w.w[0] * r0[i];
        a += w.w[1] * r1[i];
        a += w.w[2] * r2[i];
        a += w.w[3] * r3[i];
        a += w.w[4] * r4[i];
        a += w.w[5] * r5[i];
        a += w.w[6] * r6[i];
        a += w.w[7] * r7[i];
        a += w.w[8] * r8[i];
        a += w.w[9] * r9[i];
        a += w.w[10] * r10[i];
        out[i] = a;
    }
}

// The ring of horizontally blurred rows of one thread: slot r % 11 holds row r
// (NM maps of L floats each); rows outside the image read as zeros.
template <int NM>
struct RowRing {
    float* slot[kK][NM];
    float* zeros[NM];
    int next = 0;  // the next row to blur

    static constexpr int kBuffers = (kK + 1) * NM;
    RowRing(Arena& a, int L) {
        for (int s = 0; s < kK; ++s)
            for (int m = 0; m < NM; ++m) slot[s][m] = a.take();
        for (int m = 0; m < NM; ++m) {
            zeros[m] = a.take();
            std::memset(zeros[m], 0, sizeof(float) * L);
        }
    }
    // The 11 rows y - 5 .. y + 5 of map m.
    void window(int y, int H, int m, const float* rows[kK]) const {
        for (int k = 0; k < kK; ++k) {
            const int r = y + k - kR;
            rows[k] = (r >= 0 && r < H) ? slot[r % kK][m] : zeros[m];
        }
    }
    // A band starting at output row r0: its first window reaches row r0 - 5.
    void start(int r0) { next = r0 - kR < 0 ? 0 : r0 - kR; }
    // Blur, with blur(r, the NM slot rows of r), every row the window of output row y reaches
    // that this band has not blurred yet.
    template <class Blur>
    void advance(int y, int H, Blur&& blur) {
        const int need = y + kR + 1 < H ? y + kR + 1 : H;
        for (; next < need; ++next) blur(next, slot[next % kK]);
    }
    // The vertical pass of output row y for every map: out[m] (L floats each).
    void blur_columns(int y, int H, int L, const SsimWindow& win, float* const out[NM]) const {
        const float* rows[kK];
        for (int m = 0; m < NM; ++m) {
            window(y, H, m, rows);
            blur_column(L, win, rows, out[m]);
        }
    }
};

// ------------------------------------------------------------------ forward
template <bool kMasked, bool kSave>
void loss_forward(int H, int W, int C, const float* pred, const float* gt, const uint8_t* mask,
                  float* const partials[3], double* row_l1, double* row_ssim, double* row_count) {
    const int L = W * C;
    const int Lp = L + 2 * kR * C;
    const SsimWindow win = ssim_window();
    for_each_band(H, L, [&](int r0, int r1) {
        Arena arena(RowRing<5>::kBuffers + 10, Lp);
        float* xp = arena.take();
        float* yp = arena.take();
        RowRing<5> ring(arena, L);
        float* mu[5];
        for (int m = 0; m < 5; ++m) mu[m] = arena.take();
        float* mrow = arena.take();
        float* l1v = arena.take();
        float* ssv = arena.take();
        std::memset(xp, 0, sizeof(float) * Lp);
        std::memset(yp, 0, sizeof(float) * Lp);
        ring.start(r0);
        for (int y = r0; y < r1; ++y) {
            ring.advance(y, H, [&](int r, float* const* s) {  // the five moments of row r, blurred
                const float* p = pred + (int64_t)r * L;
                const float* g = gt + (int64_t)r * L;
                float* xr = xp + kR * C;
                float* yr = yp + kR * C;
                if (kMasked) {
                    mask_row(mask, r, W, C, mrow);
#pragma omp simd
                    for (int i = 0; i < L; ++i) {
                        xr[i] = p[i] * mrow[i];
                        yr[i] = g[i] * mrow[i];
                    }
                } else {
                    std::memcpy(xr, p, sizeof(float) * L);
                    std::memcpy(yr, g, sizeof(float) * L);
                }
                blur_row_moments(L, C, win, xp, yp, s[0], s[1], s[2], s[3], s[4]);
            });
            ring.blur_columns(y, H, L, win, mu);
            // per element: SSIM, its partials (weighted by the mask), the L1 term
            const float* p = pred + (int64_t)y * L;
            const float* g = gt + (int64_t)y * L;
            if (kMasked) mask_row(mask, y, W, C, mrow);
            float* d0 = kSave ? partials[0] + (int64_t)y * L : nullptr;
            float* d1 = kSave ? partials[1] + (int64_t)y * L : nullptr;
            float* d2 = kSave ? partials[2] + (int64_t)y * L : nullptr;
            const float *m0 = mu[0], *m1 = mu[1], *m2 = mu[2], *m3 = mu[3], *m4 = mu[4];
#pragma omp simd
            for (int i = 0; i < L; ++i) {
                SsimGrad sg;
                const float S = ssim_pixel_grad(m0[i], m1[i], m2[i], m3[i], m4[i], sg);
                const float keep = kMasked ? mrow[i] : 1.f;
                l1v[i] = fabsf(p[i] - g[i]) * keep;
                ssv[i] = S * keep;
                if (kSave) {
                    d0[i] = sg.mu_x * keep;
                    d1[i] = sg.exx * keep;
                    d2[i] = sg.exy * keep;
                }
            }
            row_l1[y] = fixed_sum(l1v, L);
            row_ssim[y] = fixed_sum(ssv, L);
            row_count[y] = kMasked ? fixed_sum(mrow, L) : (double)L;
        }
    });
}

// ------------------------------------------------------------------ backward
template <bool kMasked>
void loss_backward(int H, int W, int C, const float* pred, const float* gt, const uint8_t* mask,
                   const float* const partials[3], float coef_l1, float coef_ssim, float* grad) {
    const int L = W * C;
    const int Lp = L + 2 * kR * C;
    const SsimWindow win = ssim_window();
    const bool with_ssim = coef_ssim != 0.f;
    for_each_band(H, L, [&](int r0, int r1) {
        Arena arena(RowRing<3>::kBuffers + 5, Lp);
        float* pp = arena.take();
        RowRing<3> ring(arena, L);
        float* bl[3];
        for (int m = 0; m < 3; ++m) bl[m] = arena.take();
        float* mrow = arena.take();
        std::memset(pp, 0, sizeof(float) * Lp);
        ring.start(r0);
        for (int y = r0; y < r1; ++y) {
            if (with_ssim) {
                ring.advance(y, H, [&](int r, float* const* s) {  // the three partial maps of row r, blurred
                    for (int m = 0; m < 3; ++m) {
                        std::memcpy(pp + kR * C, partials[m] + (int64_t)r * L, sizeof(float) * L);
                        blur_row(L, C, win, pp, s[m]);
                    }
                });
                ring.blur_columns(y, H, L, win, bl);
            }
            const float* p = pred + (int64_t)y * L;
            const float* g = gt + (int64_t)y * L;
            float* out = grad + (int64_t)y * L;
            if (kMasked) mask_row(mask, y, W, C, mrow);
            if (with_ssim) {
                const float *b0 = bl[0], *b1 = bl[1], *b2 = bl[2];
#pragma omp simd
                for (int i = 0; i < L; ++i) {
                    // (a kept pixel's masked values are its values; a left-out one gets 0)
                    const float keep = kMasked ? mrow[i] : 1.f;
                    const float v = coef_l1 * l1_sign(p[i] - g[i]) +
                                    coef_ssim * (b0[i] + 2.f * p[i] * b1[i] + g[i] * b2[i]);
                    out[i] = keep != 0.f ? v : 0.f;
                }
            } else {
#pragma omp simd
                for (int i = 0; i < L; ++i) {
                    const float keep = kMasked ? mrow[i] : 1.f;
                    const float v = coef_l1 * l1_sign(p[i] - g[i]);
                    out[i] = keep != 0.f ? v : 0.f;
                }
            }
        }
    });
}

}  // namespace

extern "C" {

// Fused photometric loss, forward. pred, gt: [H, W, C] float32; mask: [H, W]
// uint8 (non-zero = kept) or null. Writes terms[4] (double):
//   terms[0] L1    mean |pred - gt| over kept pixels x channels
//   terms[1] SSIM  mean per-pixel SSIM over kept pixels x channels
//   terms[2] loss  (1 - ssim_lambda) L1 + ssim_lambda (1 - SSIM)
//   terms[3] 1 / max(kept pixels x C, 1), the normalisation the backward reads
// and, when d_mu is not null, the three partial maps [H, W, C] of the backward
// (dS/dmu_x, dS/dE[x^2], dS/dE[xy], each times the mask) into d_mu, d_exx, d_exy.
void splat_fused_loss_fwd(int H, int W, int C, const float* pred, const float* gt, const uint8_t* mask,
                          float ssim_lambda, double* terms, float* d_mu, float* d_exx, float* d_exy) {
    std::vector<double> row_l1(H > 0 ? H : 0), row_ssim(H > 0 ? H : 0), row_count(H > 0 ? H : 0);
    float* const partials[3] = {d_mu, d_exx, d_exy};
    double* rows[3] = {row_l1.data(), row_ssim.data(), row_count.data()};
    if ((int64_t)H * W * C > 0) {
        if (mask) {
            if (d_mu) loss_forward<true, true>(H, W, C, pred, gt, mask, partials, rows[0], rows[1], rows[2]);
            else loss_forward<true, false>(H, W, C, pred, gt, mask, partials, rows[0], rows[1], rows[2]);
        } else {
            if (d_mu) loss_forward<false, true>(H, W, C, pred, gt, nullptr, partials, rows[0], rows[1], rows[2]);
            else loss_forward<false, false>(H, W, C, pred, gt, nullptr, partials, rows[0], rows[1], rows[2]);
        }
    }
    double l1 = 0.0, ss = 0.0, count = 0.0;
    for (int y = 0; y < H; ++y) {  // in row order: the same sum for any thread count
        l1 += row_l1[y];
        ss += row_ssim[y];
        count += row_count[y];
    }
    const double scale = 1.0 / (count > 1.0 ? count : 1.0);
    const double lam = (double)ssim_lambda;
    terms[0] = l1 * scale;
    terms[1] = ss * scale;
    terms[2] = (1.0 - lam) * terms[0] + lam * (1.0 - terms[1]);
    terms[3] = scale;
}

// Fused photometric loss, backward: grad_pred [H, W, C] = grad_loss[0] * dL/dpred
// from the forward's terms and partial maps (same pred, gt, mask, ssim_lambda).
// Left-out pixels get exactly 0.
void splat_fused_loss_bwd(int H, int W, int C, const float* pred, const float* gt, const uint8_t* mask,
                          float ssim_lambda, const double* terms, const float* d_mu, const float* d_exx,
                          const float* d_exy, const float* grad_loss, float* grad_pred) {
    if ((int64_t)H * W * C <= 0) return;
    const double go = (double)grad_loss[0], scale = terms[3], lam = (double)ssim_lambda;
    const float coef_l1 = (float)(go * (1.0 - lam) * scale);
    const float coef_ssim = (float)(-go * lam * scale);
    const float* const partials[3] = {d_mu, d_exx, d_exy};
    if (mask) loss_backward<true>(H, W, C, pred, gt, mask, partials, coef_l1, coef_ssim, grad_pred);
    else loss_backward<false>(H, W, C, pred, gt, nullptr, partials, coef_l1, coef_ssim, grad_pred);
}

}  // extern "C"
