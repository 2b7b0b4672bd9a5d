// Summing the backward passes' per-intersection gradient slots into per-Gaussian gradients
// (the CPU rasterizer's and the 2D image Gaussians' backward share it).
//
// A backward writes one slot of G floats per intersection i (the thread that owns the
// intersection's tile writes it, so no atomics are needed); flatten_ids[i] names the Gaussian.
// sum_slots adds them up per Gaussian: each thread owns a range of Gaussians, zeroes their
// outputs and adds their slots in intersection order, so the result is the same bits for any
// thread count.
#pragma once

#include <omp.h>

#include <cstdint>
#include <cstring>

// flatten_ids [M] int32 (the tile binning's), slots [M, G]; one output of the sum: out[g * width + j] = sum over g's slots of slot[offset + j]
struct SlotField {
    float* out;  // [N, width], or nullptr to skip
    int offset;  // the first float of the field in a slot
    int width;   // floats per Gaussian
};

inline void sum_slots(const int32_t* flatten_ids, int64_t M, int64_t N, const float* slots, int G,
                      const SlotField* fields, int n_fields) {
#pragma omp parallel
    {
        const int nt = omp_get_num_threads(), th_id = omp_get_thread_num();
        const int64_t g_lo = N * th_id / nt, g_hi = N * (th_id + 1) / nt;
        for (int f = 0; f < n_fields; ++f)
            if (fields[f].out)
                memset(fields[f].out + fields[f].width * g_lo, 0, sizeof(float) * fields[f].width * (g_hi - g_lo));
        for (int64_t i = 0; i < M; ++i) {
            const int64_t g = flatten_ids[i];
            if (g < g_lo || g >= g_hi) continue;
            const float* slot = slots + (size_t)i * G;
            for (int f = 0; f < n_fields; ++f) {
                const SlotField& fd = fields[f];
                if (!fd.out) continue;
                float* o = fd.out + fd.width * g;
                for (int j = 0; j < fd.width; ++j) o[j] += slot[fd.offset + j];
            }
        }
    }
}
