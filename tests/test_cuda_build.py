"""The CUDA backend where no GPU is present: its sources must build with plain
nvcc for sm_80 and sm_90 (the same build the first use on a GPU machine runs),
the library must export every entry point with the expected host-side answers,
and its tile-intersection steps, run on the host from the shared header, must
agree with the CPU backend's binning.

SPLAT_REQUIRE_NVCC=1 (set by .ci/run) turns a missing nvcc into a failure
instead of a skip, so CI cannot silently stop compiling the kernels.
"""
import ctypes
import os
import struct
import subprocess

import pytest
import torch

import splat
from rasterizer_cuda import SOURCE_DIR
from scene_utils import cameras, gaussians
from splat.backends import cuda
from splat.backends._build import load_library

NVCC = cuda.find_nvcc()
ARCHS = ["80", "90"]


def _need_nvcc():
    if NVCC is None:
        if os.environ.get("SPLAT_REQUIRE_NVCC") == "1":
            pytest.fail("nvcc not found, and SPLAT_REQUIRE_NVCC=1 requires the CUDA compile check")
        pytest.skip("nvcc not installed")


HEADER_KERNEL = r"""
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
    PairGrad pg = composite_backward_pair(0.5f, 0.5f, 1.f, 0.f, 1.f, 0.1f, 0.1f, 0.5f, 0.2f, 1.f, 0.3f, 0.1f);
    TileRect r = tile_rect(10.f, 12.f, 3, 4, 16, 4, 3);
    out[threadIdx.x] = p.mean2d.x + g.v_mean[0] + b[3] + gx[5] + ag.v_a + clamp_alpha(raw) +
                       alpha_contributes(0.1f, raw) + pg.weight + r.x1 +
                       (float)isect_key_flat_tile(isect_key(1, 2, 0.5f, 4), 4, 12);
}
"""


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_header_compiles_with_nvcc(tmp_path, arch):
    _need_nvcc()
    src = tmp_path / "check.cu"
    src.write_text(HEADER_KERNEL)
    res = subprocess.run([NVCC, "-std=c++17", f"-arch={arch}", "-Werror", "all-warnings", "-I",
                          str(SOURCE_DIR / "include"), "-c", str(src), "-o", str(tmp_path / "check.o")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def cuda_lib_path():
    """The CUDA library, built as on first use but for sm_80 and sm_90 and with warnings as errors."""
    _need_nvcc()
    return cuda.build(ARCHS, ["-Werror", "all-warnings"])


def _cuda_elf_archs(path):
    """SM versions of the CUDA ELF images (e_machine 190, EM_CUDA) embedded in a
    library's fat binary; with CUDA 12.8+'s ELF ABI the SM is bits 8-15 of e_flags."""
    data = open(path, "rb").read()
    archs, i = set(), data.find(b"\x7fELF", 1)
    while i >= 0:
        if data[i + 4] == 2 and struct.unpack_from("<H", data, i + 18)[0] == 190:
            archs.add((struct.unpack_from("<I", data, i + 48)[0] >> 8) & 0xFF)
        i = data.find(b"\x7fELF", i + 4)
    return archs


def test_library_holds_sm80_and_sm90_code(cuda_lib_path):
    assert _cuda_elf_archs(cuda_lib_path) == {int(a) for a in ARCHS}


def test_library_exports_every_entry_point_and_nothing_else(cuda_lib_path):
    lib = cuda.bind(load_library(cuda_lib_path))  # raises AttributeError for a missing entry point
    res = subprocess.run(["nm", "-D", "--defined-only", str(cuda_lib_path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    exported = {line.split()[-1] for line in res.stdout.splitlines() if " T " in line}
    assert exported == set(cuda._SIGNATURES), exported ^ set(cuda._SIGNATURES)
    assert lib.splatcu_max_channels() == cuda.MAX_CHANNELS
    assert lib.splatcu_error_string(100).decode() == "no CUDA-capable device is detected"


def test_key_layout_matches_the_cpu_backend(cuda_lib_path, cpu_backend):
    """The camera | tile | depth bits of the CUDA keys are where the CPU backend puts them."""
    lib = cuda.bind(load_library(cuda_lib_path))
    inputs = gaussians(300, seed=41)
    V, K = cameras(3, 40, 30, seed=41)
    info = splat.rasterize(*inputs, V, K, 40, 30, backend="cpu", tile_size=8)[2]
    tw, th = info["tile_width"], info["tile_height"]
    bits = lib.splatcu_isect_key_bits(3, tw, th)
    assert bits == 32 + (tw * th).bit_length() + (3).bit_length()
    assert int(info["isect_ids"].max()) < 2 ** bits
    assert int(info["isect_ids"].max()) >> (32 + (tw * th).bit_length()) == 2  # the last camera


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error path where no GPU is present")
def test_cuda_errors_are_reported_clearly_without_a_gpu(cuda_lib_path):
    lib = cuda.bind(load_library(cuda_lib_path))
    # empty work returns before touching the GPU
    assert lib.splatcu_project_fwd(0, 5, *([None] * 6), 8, 8, 0.3, 0.01, 1e10, 0.0, 0, *([None] * 6)) == 0
    size = ctypes.c_size_t(0)
    rc = lib.splatcu_isect_count_temp_bytes(1000, ctypes.byref(size))
    assert rc != 0  # no driver or no device here
    with pytest.raises(RuntimeError, match=r"splat CUDA backend: isect_count_temp_bytes failed with CUDA error \d+: \w"):
        cuda.check(lib, rc, "isect_count_temp_bytes")


# ------------------------------------------------------------------ the host emulation itself
# (tests/test_backends.py and test_edge_cases.py run the CUDA kernels through it as "cuda-emulated")
@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    out = tmp_path_factory.mktemp("emu") / "libemu_selftest.so"
    src = os.path.join(os.path.dirname(__file__), "native", "emulation_selftest.cpp")
    res = subprocess.run(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-I", str(SOURCE_DIR / "cuda"), src,
                          "-o", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return ctypes.CDLL(str(out))


def _p(t):
    return ctypes.c_void_p(t.data_ptr())


def test_emulator_runs_warp_primitives_like_a_gpu(emulator):
    blocks, threads = 3, 96
    n = blocks * threads
    out, anyv = torch.zeros(n), torch.zeros(n, dtype=torch.int32)
    allv = torch.zeros(blocks, dtype=torch.int32)
    assert emulator.emu_warp(blocks, threads, _p(out), _p(anyv), _p(allv)) == 0
    vals = torch.arange(1, n + 1, dtype=torch.float32).reshape(-1, 32)
    assert torch.equal(out, vals.sum(1, keepdim=True).expand(-1, 32).reshape(-1))
    warps_with_lane5 = torch.zeros(n // 32, dtype=torch.int32)
    warps_with_lane5[threads // 32: 2 * threads // 32] = 1  # block 1's warps
    assert torch.equal(anyv, warps_with_lane5.repeat_interleave(32))
    assert allv.tolist() == [1, 1, 1]


def test_emulator_shares_memory_within_a_block(emulator):
    blocks, threads = 4, 256
    x = torch.arange(blocks * threads, dtype=torch.int32)
    y = torch.zeros_like(x)
    assert emulator.emu_shared(blocks, threads, _p(x), _p(y)) == 0
    assert torch.equal(y, x.reshape(blocks, threads).flip(1).reshape(-1))


def test_emulator_reports_a_barrier_not_every_thread_reaches(emulator):
    out = torch.zeros(64, dtype=torch.int32)
    assert emulator.emu_broken(_p(out)) == 999  # instead of hanging


def test_build_cache_key_covers_headers_beside_the_sources(tmp_path, monkeypatch):
    """Editing cuda/host_emulation.h (or any header next to a source) rebuilds the library."""
    from splat.backends import _build

    src = tmp_path / "src"
    (src / "include").mkdir(parents=True)
    (src / "lib").mkdir()
    (src / "lib" / "helper.h").write_text("#define VALUE 1\n")
    (src / "lib" / "unit.cpp").write_text('#include "helper.h"\nextern "C" int value() { return VALUE; }\n')
    monkeypatch.setattr(_build, "SOURCE_DIR", src)
    monkeypatch.setenv("SPLAT_CACHE_DIR", str(tmp_path / "cache"))
    first = _build.build_library("unit", ["lib/unit.cpp"], "g++", ["-shared", "-fPIC"])
    (src / "lib" / "helper.h").write_text("#define VALUE 2\n")
    second = _build.build_library("unit", ["lib/unit.cpp"], "g++", ["-shared", "-fPIC"])
    assert first != second
    assert ctypes.CDLL(str(second)).value() == 2
