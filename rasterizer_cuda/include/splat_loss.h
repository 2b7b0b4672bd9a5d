// splat_loss.h: the per-pixel math of the fused photometric loss
//   L = (1 - lambda) * L1 + lambda * (1 - SSIM)
// (the 3DGS training loss, Kerbl et al. 2023; fused like fused-ssim, Mallick et
// al., "Taming 3DGS", 2024), shared by the CPU kernels (cpu/loss_cpu.cpp) and the
// CUDA kernels (cuda/loss_kernels.cuh) like splat_math.h: every function is
// SPLAT_HD, so both backends run exactly this code.
//
// SSIM is splat.metrics.ssim(padding="same"): an 11-tap Gaussian window
// (sigma 1.5) applied separably with zero padding, C1 = 0.01^2, C2 = 0.03^2
// (data range 1). Per pixel and channel, from the five blurred moments
//   mu_x = g*x, mu_y = g*y, E[x^2] = g*(x^2), E[y^2] = g*(y^2), E[xy] = g*(xy)
// (g* the 2D blur):
//   s_xx = E[x^2] - mu_x^2,  s_yy = E[y^2] - mu_y^2,  s_xy = E[xy] - mu_x mu_y
//   S = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_xx + s_yy + C2))
//
// Backward. With w_p = dL/dS_p the weight of pixel p's SSIM in the loss, the
// gradient w.r.t. the prediction x at pixel q is
//   dL/dx_q = (g * (w dS/dmu_x))_q + 2 x_q (g * (w dS/dE[x^2]))_q + y_q (g * (w dS/dE[xy]))_q
// since the zero-padded blur is symmetric (its adjoint is itself). The kernels
// save the three weighted partial maps in the forward and blur them in the
// backward.
#pragma once

#include "splat_math.h"  // SPLAT_HD

namespace splat {

constexpr int kSsimWindow = 11;                 // taps of the Gaussian window
constexpr int kSsimRadius = kSsimWindow / 2;    // its half-width (5): the zero padding
constexpr double kSsimSigma = 1.5;              // its standard deviation (pixels)
constexpr float kSsimC1 = 1e-4f;                // (0.01 * data range)^2, data range 1
constexpr float kSsimC2 = 9e-4f;                // (0.03 * data range)^2

// The 1D window: exp(-d^2 / (2 sigma^2)) for d = -5..5, normalised to sum 1 in
// double and rounded to float (splat.metrics._gauss_1d). Passed to the kernels
// by value.
struct SsimWindow {
    float w[kSsimWindow];
};

SPLAT_HD SsimWindow ssim_window() {
    double g[kSsimWindow], sum = 0.0;
    for (int i = 0; i < kSsimWindow; ++i) {
        const double d = (double)(i - kSsimRadius);
        g[i] = exp(-(d * d) / (2.0 * kSsimSigma * kSsimSigma));
        sum += g[i];
    }
    SsimWindow r;
    for (int i = 0; i < kSsimWindow; ++i) r.w[i] = (float)(g[i] / sum);
    return r;
}

// SSIM of one pixel (one channel) from its five blurred moments; the same
// expression, in the same order, as splat.metrics._ssim_map.
SPLAT_HD float ssim_pixel(float mu_x, float mu_y, float exx, float eyy, float exy) {
    const float sxx = exx - mu_x * mu_x, syy = eyy - mu_y * mu_y, sxy = exy - mu_x * mu_y;
    const float num = (2.f * mu_x * mu_y + kSsimC1) * (2.f * sxy + kSsimC2);
    const float den = (mu_x * mu_x + mu_y * mu_y + kSsimC1) * (sxx + syy + kSsimC2);
    return num / den;
}

// Partial derivatives of a pixel's SSIM w.r.t. its five moments.
struct SsimGrad {
    float mu_x, mu_y, exx, eyy, exy;
};

// ssim_pixel (bit for bit) and its partial derivatives into g. With
//   A = 2 mu_x mu_y + C1, B = 2 s_xy + C2, P = mu_x^2 + mu_y^2 + C1, Q = s_xx + s_yy + C2,
// S = AB / (PQ):
//   dS/dmu_x  = 2 mu_y (B - A) / (PQ) - 2 mu_x S (1/P - 1/Q)   (mu_y: x and y swapped)
//   dS/dE[x^2] = dS/dE[y^2] = -S / Q
//   dS/dE[xy]  = 2 A / (PQ)
SPLAT_HD float ssim_pixel_grad(float mu_x, float mu_y, float exx, float eyy, float exy, SsimGrad& g) {
    const float sxx = exx - mu_x * mu_x, syy = eyy - mu_y * mu_y, sxy = exy - mu_x * mu_y;
    const float A = 2.f * mu_x * mu_y + kSsimC1, B = 2.f * sxy + kSsimC2;
    const float P = mu_x * mu_x + mu_y * mu_y + kSsimC1, Q = sxx + syy + kSsimC2;
    const float S = (A * B) / (P * Q);
    const float inv_pq = 1.f / (P * Q);
    const float d_var = 1.f / P - 1.f / Q;
    const float ba = 2.f * (B - A) * inv_pq;
    g.mu_x = mu_y * ba - 2.f * mu_x * S * d_var;
    g.mu_y = mu_x * ba - 2.f * mu_y * S * d_var;
    g.exx = g.eyy = -S / Q;
    g.exy = 2.f * A * inv_pq;
    return S;
}

// Sign of the L1 term's derivative, 0 at a tie (torch's abs backward).
SPLAT_HD float l1_sign(float d) { return d > 0.f ? 1.f : (d < 0.f ? -1.f : 0.f); }

}  // namespace splat
