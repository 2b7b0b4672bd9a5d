// image2d_math.h: per-pixel math of the 2D image Gaussians (GaussianImage,
// Image-GS), shared by the CPU backend and any CUDA kernel, like splat_math.h.
//
// A 2D Gaussian is a mean m (pixels), a conic (a, b, c) (the inverse covariance)
// and a colour. Its weight at a pixel centre p is w = exp(-sigma), sigma =
// 0.5 (a dx^2 + c dy^2) + b dx dy with (dx, dy) = m - p, and it contributes only
// where w >= 1/255 (the 3D rasterizer's alpha threshold, so the same tile
// bounds hold). Two ways to combine the Gaussians at a pixel:
//   sum   (GaussianImage):  C = sum_i w_i c_i                 (order-free)
//   top-K (Image-GS):       C = sum_{K largest w} w_i c_i / (sum_{K largest} w_i + eps)
#pragma once

#include "splat_math.h"

namespace splat {

constexpr float kTopKEps = 1e-6f;  // keeps the top-K normalisation finite where no Gaussian reaches

// Weight of a Gaussian at pixel offset (dx, dy), or 0 where it does not contribute.
SPLAT_HD float image2d_weight(float a, float b, float c, float dx, float dy) {
    float sigma = gaussian_sigma(a, b, c, dx, dy);
    float w = fast_exp(-sigma);
    return alpha_contributes(sigma, w) ? w : 0.f;
}

// Gradient of sigma(a, b, c, m) scaled by v_sigma, accumulated into g[0..4] =
// (d mean x, d mean y, d a, d b, d c).
SPLAT_HD void image2d_sigma_vjp(float a, float b, float c, float dx, float dy, float v_sigma, float g[5]) {
    g[0] += v_sigma * (a * dx + b * dy);
    g[1] += v_sigma * (b * dx + c * dy);
    g[2] += v_sigma * 0.5f * dx * dx;
    g[3] += v_sigma * dx * dy;
    g[4] += v_sigma * 0.5f * dy * dy;
}

// Keep the K largest weights of a pixel, sorted descending, in vals/ids (n of
// them so far). A new weight equal to a kept one goes after it, so the list
// depends only on the order the Gaussians are offered in.
SPLAT_HD void topk_insert(float* vals, int32_t* ids, int& n, int K, float w, int32_t id) {
    if (n == K && !(w > vals[K - 1])) return;
    int j = n < K ? n++ : K - 1;
    while (j > 0 && vals[j - 1] < w) {
        vals[j] = vals[j - 1];
        ids[j] = ids[j - 1];
        --j;
    }
    vals[j] = w;
    ids[j] = id;
}

}  // namespace splat
