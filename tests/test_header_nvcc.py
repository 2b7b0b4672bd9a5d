"""The shared math header must compile for the GPU unchanged (nvcc, no GPU needed)."""
import shutil
import subprocess

import pytest

from rasterizer_cuda import SOURCE_DIR

KERNEL = r"""
#include "splat_math.h"
__global__ void use_everything(const float* m, const float* q, const float* s, const float* vm, const float* K,
                               float* out) {
    using namespace splat;
    Camera cam = make_camera(vm, K, 64, 48);
    Projected p = project_gaussian(cam, m, q, s, 0.5f, 0.3f, 0.01f, 1e10f, 0.f, true);
    float v2[2] = {1.f, 1.f}, v3[3] = {1.f, 1.f, 1.f};
    ProjectionGrad g = project_gaussian_vjp(cam, m, q, s, 0.3f, true, v2, 1.f, v3, 1.f);
    float b[16], gx[16], gy[16], gz[16];
    sh_basis(3, 0.f, 0.6f, 0.8f, b);
    sh_basis_grad(3, 0.f, 0.6f, 0.8f, gx, gy, gz);
    float raw = gaussian_raw_alpha(0.5f, gaussian_sigma(1.f, 0.f, 1.f, 0.1f, 0.2f));
    AlphaGrad ag = gaussian_alpha_vjp(0.5f, 0.5f, 1.f, 0.f, 1.f, 0.1f, 0.1f, 1.f);
    out[threadIdx.x] = p.mean2d.x + g.v_mean[0] + b[3] + gx[5] + ag.v_a + clamp_alpha(raw) +
                       alpha_contributes(0.1f, raw);
}
"""


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_header_compiles_with_nvcc(tmp_path, arch):
    src = tmp_path / "check.cu"
    src.write_text(KERNEL)
    res = subprocess.run(["nvcc", "-std=c++17", f"-arch={arch}", "-Werror", "all-warnings", "-I",
                          str(SOURCE_DIR / "include"), "-c", str(src), "-o", str(tmp_path / "check.o")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
