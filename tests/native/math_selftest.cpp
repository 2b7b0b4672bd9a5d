// Direct checks of scalar functions of rasterizer_cuda/include/splat_math.h that
// the rendering tests cannot resolve (their float32 sigma rounding is larger):
// loaded by tests/test_native_mutants.py through ctypes.
#include <cmath>

#include "splat_math.h"

// Largest |fast_exp(x) / exp(x) - 1| over n points evenly spaced in [lo, hi].
extern "C" double fast_exp_max_rel_error(float lo, float hi, int n) {
    double worst = 0.0;
    for (int i = 0; i < n; ++i) {
        float x = lo + (hi - lo) * (float)i / (float)(n - 1);
        double want = std::exp((double)x);
        double got = (double)splat::fast_exp(x);
        double rel = std::fabs(got / want - 1.0);
        if (!(rel <= worst)) worst = rel;  // NaN propagates
    }
    return worst;
}
