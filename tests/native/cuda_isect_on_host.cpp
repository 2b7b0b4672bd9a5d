// The CUDA backend's tile intersection, run on the host: the same header
// functions its kernels call (count_isects, emit_isects, tile_offsets_at),
// with a serial prefix sum and a stable sort standing in for CUB's. Tests
// compare it with the CPU backend's binning, so the GPU path's key layout,
// tie order and per-tile ranges are checked on every CI run.
#include <algorithm>
#include <numeric>
#include <vector>

#include "splat_math.h"

using namespace splat;

extern "C" {

// Returns M. With keys == nullptr only counts (fills tiles_per_gauss).
// Otherwise fills keys [M], ids [M] and offsets [C * tw * th + 1].
int64_t host_isect(int C, int N, const float* means2d, const int32_t* radii, const float* depths, int tile_size,
                   int tw, int th, const uint8_t* tile_mask, int32_t* tiles_per_gauss, int64_t* keys, int32_t* ids,
                   int64_t* offsets) {
    const int64_t CN = (int64_t)C * N, n_tiles = (int64_t)tw * th, T = C * n_tiles;
    const int tile_bits = bit_length(n_tiles);
    std::vector<int64_t> cum(CN);
    std::vector<TileRect> rects(CN);
    for (int64_t idx = 0; idx < CN; ++idx) {  // isect_count_kernel
        int cnt = 0;
        if (radii[2 * idx] > 0 && radii[2 * idx + 1] > 0) {
            rects[idx] = tile_rect(means2d[2 * idx], means2d[2 * idx + 1], radii[2 * idx], radii[2 * idx + 1],
                                   tile_size, tw, th);
            cnt = count_isects(rects[idx], idx / N, n_tiles, tw, tile_mask);
        }
        tiles_per_gauss[idx] = cnt;
        cum[idx] = cnt;
    }
    std::partial_sum(cum.begin(), cum.end(), cum.begin());  // cub::DeviceScan::InclusiveSum
    const int64_t M = CN ? cum[CN - 1] : 0;
    if (!keys) return M;
    std::vector<int64_t> k(M);
    std::vector<int32_t> v(M);
    for (int64_t idx = 0; idx < CN; ++idx)  // isect_emit_kernel
        if (radii[2 * idx] > 0 && radii[2 * idx + 1] > 0)
            emit_isects(rects[idx], idx / N, idx, depths[idx], n_tiles, tw, tile_bits, tile_mask,
                        idx == 0 ? 0 : cum[idx - 1], k.data(), v.data());
    std::vector<int64_t> order(M);  // cub::DeviceRadixSort::SortPairs is stable
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return k[a] < k[b]; });
    for (int64_t i = 0; i < M; ++i) {
        keys[i] = k[order[i]];
        ids[i] = v[order[i]];
    }
    if (M == 0)
        std::fill(offsets, offsets + T + 1, 0);
    for (int64_t i = M - 1; i >= 0; --i)  // isect_offsets_kernel, in an order of its own
        tile_offsets_at(i, M, keys, tile_bits, n_tiles, T, offsets);
    return M;
}
}
