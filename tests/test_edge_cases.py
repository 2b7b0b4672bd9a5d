"""Edge cases and bad inputs, on every backend available."""
import math
import subprocess
import sys
import textwrap

import pytest
import torch

import splat
from scene_utils import DEVICES, cameras, gaussians, look_at, on


def _grads_finite(inputs, img, alpha):
    (img.sum() + alpha.sum()).backward()
    for t in inputs:
        if t.grad is not None:
            assert torch.isfinite(t.grad).all()


def test_no_gaussians(any_backend):
    backend = any_backend
    inputs = [t.requires_grad_(True) for t in on(backend, *gaussians(0))]
    V, K = on(backend, *cameras(2, 20, 10))
    bg = on(backend, torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]))[0]
    img, alpha, info = splat.rasterize(*inputs, V, K, 20, 10, backend=backend, backgrounds=bg)
    assert img.shape == (2, 10, 20, 3) and alpha.shape == (2, 10, 20, 1)
    assert (alpha == 0).all()
    assert torch.allclose(img, bg[:, None, None, :].expand_as(img))
    assert info["flatten_ids"].numel() == 0
    img.sum().backward()


def test_all_culled_behind_camera(any_backend):
    backend = any_backend
    m, q, s, o, c = gaussians(50)
    V = look_at((0.0, 0.0, -5.0)).float()[None]  # looks at +z; put every Gaussian behind it
    m = m.clone()
    m[:, 2] = -8.0 + m[:, 2]
    _, K = cameras(1, 32, 32)
    V, K = on(backend, V, K)
    inputs = [t.requires_grad_(True) for t in on(backend, m, q, s, o, c)]
    img, alpha, info = splat.rasterize(*inputs, V, K, 32, 32, backend=backend)
    assert (info["radii"] == 0).all() and (alpha == 0).all() and (img == 0).all()
    _grads_finite(inputs, img, alpha)


def test_straddling_near_plane(any_backend):
    backend = any_backend
    # Gaussians from behind the camera through the near plane to in front of it
    V = look_at((0.0, 0.0, -2.0)).float()[None]
    _, K = cameras(1, 32, 32)
    N = 21
    m = torch.zeros(N, 3)
    m[:, 2] = torch.linspace(-2.5, -1.5, N)  # camera-space depth -0.5 .. 0.5
    m[:, 0] = torch.linspace(-0.05, 0.05, N)
    q = torch.tensor([[1.0, 0, 0, 0]]).repeat(N, 1)
    s = torch.full((N, 3), 0.2)
    o = torch.full((N,), 0.5)
    c = torch.rand(N, 3)
    inputs = [t.requires_grad_(True) for t in on(backend, m, q, s, o, c)]
    img, alpha, info = splat.rasterize(*inputs, *on(backend, V, K), 32, 32, backend=backend, near_plane=0.05)
    depth = (m[:, 2] + 2.0).to(DEVICES[backend])
    assert (info["radii"][0, depth < 0.05] == 0).all()
    assert (info["radii"][0, depth > 0.1] > 0).any()
    assert torch.isfinite(img).all()
    _grads_finite(inputs, img, alpha)


def test_near_plane_backends_agree(native):
    V = look_at((0.0, 0.0, -2.0)).float()[None]
    _, K = cameras(1, 32, 32)
    m, q, s, o, c = gaussians(200, seed=3, extent=2.0)
    outs = [splat.rasterize(*on(b, m, q, s, o, c, V, K), 32, 32, backend=b, near_plane=0.3)
            for b in ("torch", native)]
    assert torch.equal(outs[0][2]["radii"], outs[1][2]["radii"].cpu())
    assert (outs[0][0] - outs[1][0].cpu()).abs().max() < 1e-5


def test_huge_and_degenerate_scales(any_backend):
    backend = any_backend
    m, q, s, o, c = gaussians(30, seed=4)
    s = s.clone()
    s[0] = 1e3  # covers everything
    s[1] = torch.tensor([0.0, 0.0, 0.0])  # a point: only the eps2d blur is left
    s[2] = torch.tensor([0.3, 0.0, 0.3])  # a flat disc
    s[3] = 1e-12
    V, K = on(backend, *cameras(2, 24, 24, seed=4))
    inputs = [t.requires_grad_(True) for t in on(backend, m, q, s, o, c)]
    img, alpha, info = splat.rasterize(*inputs, V, K, 24, 24, backend=backend)
    assert torch.isfinite(img).all() and torch.isfinite(alpha).all()
    assert (info["radii"][:, 0] > 0).all()  # the huge one is seen by both cameras
    _grads_finite(inputs, img, alpha)


def test_huge_and_degenerate_scales_agree(native):
    m, q, s, o, c = gaussians(30, seed=4)
    s = s.clone()
    s[0] = 50.0
    s[1] = 0.0
    s[2] = torch.tensor([0.3, 0.0, 0.3])
    V, K = cameras(2, 24, 24, seed=4)
    a = splat.rasterize(m, q, s, o, c, V, K, 24, 24, backend="torch")
    b = splat.rasterize(*on(native, m, q, s, o, c, V, K), 24, 24, backend=native)
    assert (a[0] - b[0].cpu()).abs().max() < 1e-5


@pytest.mark.parametrize("size", [(1, 1), (37, 23), (17, 16), (16, 33)])
def test_odd_image_sizes(any_backend, size):
    backend = any_backend
    W, H = size
    inputs = on(backend, *gaussians(80, seed=5))
    V, K = on(backend, *cameras(1, W, H, seed=5))
    img, alpha, info = splat.rasterize(*inputs, V, K, W, H, backend=backend)
    assert img.shape == (1, H, W, 3)
    assert info["isect_offsets"].shape == (1, math.ceil(H / 16), math.ceil(W / 16))


@pytest.mark.parametrize("size", [(1, 1), (37, 23)])
@pytest.mark.parametrize("tile_size", [8, 16, 5, 32, 1])
def test_odd_sizes_agree(native, size, tile_size):
    W, H = size
    inputs = gaussians(200, seed=6, scale=(0.05, 0.5))
    V, K = cameras(2, W, H, seed=6)
    a = splat.rasterize(*inputs, V, K, W, H, backend="torch", tile_size=tile_size)
    b = [t.cpu() for t in splat.rasterize(*on(native, *inputs, V, K), W, H, backend=native, tile_size=tile_size)[:2]]
    assert (a[0] - b[0]).abs().max() < 1e-5 and (a[1] - b[1]).abs().max() < 1e-5
    assert a[1].max() > 0


# ------------------------------------------------------------------ bad inputs
def _good():
    m, q, s, o, c = gaussians(10)
    V, K = cameras(2, 16, 16)
    return dict(means=m, quats=q, scales=s, opacities=o, colors=c, viewmats=V, Ks=K, width=16, height=16)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(means=torch.zeros(10, 2)), r"means must be \[N, 3\]"),
        (dict(quats=torch.zeros(9, 4)), r"quats must be \[N, 4\]"),
        (dict(scales=torch.zeros(10)), r"scales must be \[N, 3\]"),
        (dict(opacities=torch.zeros(10, 1)), r"opacities must be \[N\]"),
        (dict(colors=torch.zeros(11, 3)), r"colors must be \[N, D\]"),
        (dict(viewmats=torch.zeros(2, 3, 4)), r"viewmats must be \[C, 4, 4\]"),
        (dict(Ks=torch.zeros(3, 3, 3)), r"Ks must be \[C, 3, 3\]"),
        (dict(width=0), r"width and height must be positive"),
        (dict(means=torch.zeros(10, 3, dtype=torch.float64)), r"share one dtype"),
        (dict(means=torch.zeros(10, 3, dtype=torch.int64)), r"floating-point"),
        (dict(means=[[0.0] * 3] * 10), r"must be a torch.Tensor"),
        (dict(opacities=torch.full((10,), 2.0)), r"opacities must lie in \[0, 1\]"),
        (dict(sh_degree=4), r"sh_degree must be an int in 0..3"),
        (dict(render_mode="rgb"), r"render_mode must be one of"),
        (dict(rasterize_mode="fancy"), r"rasterize_mode must be one of"),
        (dict(backend="vulkan"), r"backend must be one of"),
        (dict(tile_size=0), r"tile_size must be an int"),
        (dict(backgrounds=torch.zeros(2, 4)), r"backgrounds must be \[C, D\]"),
        (dict(packed=True), r"packed=True is not supported"),
        (dict(tiles=torch.tensor([0, 99])), r"tiles must lie in"),
        (dict(near_plane=0.0), r"near_plane must be > 0"),
    ],
)
def test_bad_inputs(change, message):
    args = _good()
    args.update(change)
    with pytest.raises(ValueError, match=message):
        splat.rasterize(**args)


def test_sh_needs_enough_coefficients():
    args = _good()
    args.update(colors=torch.zeros(10, 4, 3), sh_degree=2)
    with pytest.raises(ValueError, match="sh_degree=2 needs at least 9"):
        splat.rasterize(**args)


@pytest.mark.parametrize("name", ["means", "quats", "scales", "colors", "viewmats", "Ks"])
def test_nan_inputs(name):
    args = _good()
    t = args[name].clone()
    t.view(-1)[3] = float("nan")
    args[name] = t
    with pytest.raises(ValueError, match=f"{name} contains NaN or Inf"):
        splat.rasterize(**args)


def test_device_mismatch():
    args = _good()
    args["means"] = args["means"].to("meta")
    with pytest.raises(ValueError, match="one device"):
        splat.rasterize(**args)


def test_cpu_backend_rejects_float64(cpu_backend):
    args = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in _good().items()}
    with pytest.raises(ValueError, match="float32 only"):
        splat.rasterize(**args, backend="cpu")


def test_cuda_backend_needs_cuda_tensors():
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        splat.rasterize(**_good(), backend="cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is present")
def test_cuda_backend_without_a_gpu_says_so():
    from splat.backends import cuda
    from splat.backends._build import NativeBuildError

    with pytest.raises(NativeBuildError, match="needs a CUDA device"):
        cuda.load()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_backend_rejects_float64():
    args = {k: (v.double().cuda() if isinstance(v, torch.Tensor) else v) for k, v in _good().items()}
    with pytest.raises(ValueError, match="float32 only"):
        splat.rasterize(**args, backend="cuda")


def test_build_failure_is_clear_and_auto_falls_back(tmp_path):
    """A broken compiler: backend='cpu' says why; 'auto' warns once and renders with torch."""
    script = textwrap.dedent(
        """
        import sys, warnings
        sys.path.insert(0, "tests")
        import splat
        from splat.backends._build import NativeBuildError
        from scene_utils import cameras, gaussians
        m, q, s, o, c = gaussians(5); V, K = cameras(1, 8, 8)
        try:
            splat.rasterize(m, q, s, o, c, V, K, 8, 8, backend="cpu")
            print("NO ERROR")
        except NativeBuildError as e:
            print("ERROR:", str(e).splitlines()[0])
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            info = splat.rasterize(m, q, s, o, c, V, K, 8, 8)[2]
        print("AUTO:", info["backend"], "|", str(w[0].message) if w else "no warning")
        """
    )
    env = {"SPLAT_CACHE_DIR": str(tmp_path), "CXX": "no-such-compiler-xyz", "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **env}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr
    assert "ERROR: compiler 'no-such-compiler-xyz' not found" in res.stdout
    assert "AUTO: torch | splat: native CPU backend unavailable" in res.stdout


def test_compile_error_reports_compiler_output(tmp_path, monkeypatch):
    from splat.backends import _build

    bad = tmp_path / "src"
    (bad / "include").mkdir(parents=True)
    (bad / "broken.cpp").write_text("int main( { return 0; }\n")
    monkeypatch.setattr(_build, "SOURCE_DIR", bad)
    monkeypatch.setenv("SPLAT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(_build.NativeBuildError, match=r"(?s)building the native broken library failed.*error"):
        _build.build_library("broken", ["broken.cpp"], "g++", ["-shared", "-fPIC"])
    assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-written is left


def test_channel_chunk_must_be_positive():
    with pytest.raises(ValueError, match="channel_chunk must be a positive int"):
        splat.rasterize(**_good(), channel_chunk=0)


def test_too_many_camera_gaussian_pairs_for_int32_ids():
    # meta tensors: the shapes of 2 cameras x 2^30 Gaussians, without the memory
    N = 2 ** 30
    meta = dict(device="meta")
    args = dict(means=torch.empty(N, 3, **meta), quats=torch.empty(N, 4, **meta), scales=torch.empty(N, 3, **meta),
                opacities=torch.empty(N, **meta), colors=torch.empty(N, 3, **meta),
                viewmats=torch.empty(2, 4, 4, **meta), Ks=torch.empty(2, 3, 3, **meta), width=16, height=16)
    with pytest.raises(ValueError, match="exceed the int32 index range"):
        splat.rasterize(**args)


def test_native_stages_check_devices_and_id_dtype(cpu_backend):
    """Called directly (gsplat-style), the native stages refuse tensors on another
    device or ids of the wrong type instead of handing the C code a bad pointer."""
    from splat.backends import cpu

    inputs = gaussians(50)
    V, K = cameras(1, 16, 16)
    info = splat.rasterize(*inputs, V, K, 16, 16, backend="cpu")[2]
    args = (info["means2d"], info["conics"], torch.rand(1, 50, 3), info["opacities"], 16, 16, 16,
            info["isect_offsets"], info["flatten_ids"])
    cpu.rasterize_to_pixels(*args)  # fine as it is
    with pytest.raises(ValueError, match="one device.*backgrounds=meta"):
        cpu.rasterize_to_pixels(*args, backgrounds=torch.empty(1, 3, device="meta"))
    with pytest.raises(ValueError, match="flatten_ids must be int32"):
        cpu.rasterize_to_pixels(*args[:-1], info["flatten_ids"].long())
    with pytest.raises(ValueError, match="one device.*tile_mask=meta"):
        cpu.isect_tiles(info["means2d"], info["radii"], info["depths"], 16, 1, 1,
                        torch.ones(1, dtype=torch.bool, device="meta"))


def test_native_outputs_are_float32_under_a_float64_default(cpu_backend):
    """Buffers the C code writes are allocated as float32 whatever torch's default dtype."""
    inputs = gaussians(200, seed=2)
    V, K = cameras(1, 24, 24, seed=2)
    ref = splat.rasterize(*inputs, V, K, 24, 24, backend="cpu")[0]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        got = splat.rasterize(*inputs, V, K, 24, 24, backend="cpu")[0]
    finally:
        torch.set_default_dtype(old)
    assert got.dtype == torch.float32 and torch.equal(ref, got)
