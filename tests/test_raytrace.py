"""The ray-tracing backend (3DGRT): native tracer against the dense torch reference, the reference's
gradients against finite differences, the tracer against the rasterizer, and its edge cases."""
import math

import pytest
import torch

from scene_utils import cameras as make_cameras
from scene_utils import gaussians as make_gaussians
from splat.backends import raytrace as rt
from splat.render import rasterize


def psnr(a, b):
    return -10 * math.log10(max(float(((a - b) ** 2).mean()), 1e-20))


def cos(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


def _rays(R, seed=0, dtype=torch.float32):
    """R rays from around (0, 0, -4) towards the unit cube."""
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(R, 3, generator=g, dtype=torch.float64) * 0.05 + torch.tensor([0.0, 0.0, -4.0],
                                                                                      dtype=torch.float64)
    target = (torch.rand(R, 3, generator=g, dtype=torch.float64) * 2 - 1) * 0.9
    d = target - o
    d = d / d.norm(dim=-1, keepdim=True)
    return o.to(dtype), d.to(dtype), torch.full((R,), 0.01, dtype=dtype), torch.full((R,), 100.0, dtype=dtype)


def _scene(N, seed=0, dtype=torch.float32, D=3, scale=(0.05, 0.3)):
    means, quats, scales, opac, cols = make_gaussians(N, seed=seed, D=D, scale=scale, dtype=dtype)
    precs = rt.precisions(quats, scales, None, torch.zeros(1, N, dtype=dtype))[0]
    return means, precs, opac, cols


@pytest.mark.parametrize("N,seed", [(1, 0), (50, 1), (400, 2)])
def test_native_tracer_matches_the_dense_reference(N, seed, cpu_backend):
    means, precs, opac, cols = _scene(N, seed)
    o, d, tmin, tmax = _rays(600, seed)
    bg = torch.tensor([0.2, 0.5, 0.7])
    c1, T1, hits = rt.trace_rays(means, precs, opac, cols, o, d, tmin, tmax, bg)
    c2, T2 = rt.trace_reference(means, precs, opac, cols, o, d, tmin, tmax, bg)
    assert torch.allclose(c1, c2, atol=2e-5) and torch.allclose(T1, T2, atol=2e-5)
    assert hits.max() > 0 or N == 1


def test_rays_with_more_hits_than_the_k_buffer_take_several_rounds(cpu_backend):
    """300 faint Gaussians along the axis, pairs at the very same place (equal depths): every ray meets
    more than the CPU's 64-hit buffer, and ties must be neither lost nor counted twice."""
    N = 300
    z = torch.linspace(-1, 1, N // 2).repeat_interleave(2)
    means = torch.stack([torch.zeros(N), torch.zeros(N), z], -1)
    precs = rt.pack_sym(torch.eye(3).expand(N, 3, 3) / 0.2 ** 2)
    opac = torch.full((N,), 0.02)
    cols = torch.rand(N, 3, generator=torch.Generator().manual_seed(0))
    o = torch.tensor([[0.0, 0.0, -4.0], [0.01, -0.02, -4.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    tmin, tmax = torch.full((2,), 0.01), torch.full((2,), 100.0)
    c1, T1, hits = rt.trace_rays(means, precs, opac, cols, o, d, tmin, tmax)
    c2, T2 = rt.trace_reference(means, precs, opac, cols, o, d, tmin, tmax)
    assert hits.tolist() == [N, N]
    assert torch.allclose(c1, c2, atol=1e-5) and torch.allclose(T1, T2, atol=1e-5)
    # the ray span cuts the hits: only those with peak depth inside [tmin, tmax]
    c3, T3, hits3 = rt.trace_rays(means, precs, opac, cols, o, d, tmin, torch.full((2,), 4.0))
    assert 0 < hits3[0] < N and float(T3[0]) > float(T1[0])


def test_native_gradients_match_the_reference(cpu_backend):
    means, precs, opac, cols = _scene(200, 3)
    o, d, tmin, tmax = _rays(800, 3)
    bg = torch.tensor([0.3, 0.1, 0.6])
    w = torch.rand(800, 3, generator=torch.Generator().manual_seed(1))
    wa = torch.rand(800, generator=torch.Generator().manual_seed(2))
    grads = []
    for fn in (rt.trace_rays, rt.trace_reference):
        xs = [t.clone().requires_grad_() for t in (means, precs, opac, cols, bg)]
        out = fn(*xs[:4], o, d, tmin, tmax, xs[4])
        ((out[0] * w).sum() + ((1 - out[1]) * wa).sum()).backward()
        grads.append([x.grad for x in xs])
    for name, a, b in zip(("means", "precs", "opacities", "colors", "background"), *grads):
        assert (a - b).norm() <= 1e-4 * b.norm() + 1e-6, name


def test_reference_gradients_match_finite_differences():
    """float64 gradcheck of the reference tracer (central differences), through the precision
    parameterisation from rotations and scales, away from the alpha threshold's steps."""
    torch.manual_seed(0)
    means, quats, scales, opac, cols = [t.double() for t in make_gaussians(6, seed=4, scale=(0.2, 0.5))]
    opac = opac * 0.5 + 0.3
    o, d, tmin, tmax = _rays(40, 4, dtype=torch.float64)
    bg = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)

    def f(m, q, s, op, c):
        P = rt.precisions(q, s, None, torch.zeros(1, 6, dtype=torch.float64))[0]
        col, T = rt.trace_reference(m, P, op, c, o, d, tmin, tmax, bg)
        return col, T

    ins = tuple(t.clone().requires_grad_() for t in (means, quats, scales, opac, cols))
    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-6)


def _random_view_scene(seed, N=300):
    means, quats, scales, opac, cols = make_gaussians(N, seed=seed, scale=(0.03, 0.2))
    V, K = make_cameras(1, 64, 48, seed=seed)
    return means, quats, scales, opac, cols, V, K


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ray_tracer_agrees_with_the_rasterizer(seed, cpu_backend):
    """Random scenes of a few hundred Gaussians: images within 25 dB and gradients of means and colours
    with cosine >= 0.8 (both backends, same eps2d: the tracer dilates each Gaussian in 3D by the
    rasterizer's 0.3 px^2 blur at its distance)."""
    means, quats, scales, opac, cols, V, K = _random_view_scene(seed)
    bg = torch.tensor([[0.2, 0.3, 0.4]])
    w = torch.rand(1, 48, 64, 3, generator=torch.Generator().manual_seed(seed))
    out = {}
    for be in ("cpu", "raytrace"):
        xs = [t.clone().requires_grad_() for t in (means, quats, scales, opac, cols)]
        img, alpha, info = rasterize(*xs, V, K, 64, 48, backend=be, backgrounds=bg)
        info["means2d"].retain_grad()
        (img * w).sum().backward()
        out[be] = (img.detach(), alpha.detach(), xs[0].grad, xs[4].grad, info["means2d"].grad)
    a, b = out["cpu"], out["raytrace"]
    assert a[1].mean() > 0.3
    assert psnr(a[0], b[0]) >= 25.0
    assert cos(a[2], b[2]) >= 0.8 and cos(a[3], b[3]) >= 0.8
    assert cos(a[4], b[4]) >= 0.8  # the image-plane gradient density control reads
    # without the dilation, the tracer matches the rasterizer without its blur (and not with it)
    nodil, _, _ = rasterize(means, quats, scales, opac, cols, V, K, 64, 48, backend="raytrace", backgrounds=bg,
                            raytrace_options={"dilate": False})
    sharp, _, _ = rasterize(means, quats, scales, opac, cols, V, K, 64, 48, backend="cpu", backgrounds=bg, eps2d=0.0)
    assert psnr(nodil, sharp) > psnr(nodil, a[0])


def test_tile_subsets_render_those_tiles_only(cpu_backend):
    means, quats, scales, opac, cols, V, K = _random_view_scene(5)
    full, fa, _ = rasterize(means, quats, scales, opac, cols, V, K, 64, 48, backend="raytrace")
    tiles = torch.tensor([0, 5, 11])  # of 4 x 3 tiles of 16 px
    part, pa, _ = rasterize(means, quats, scales, opac, cols, V, K, 64, 48, backend="raytrace", tiles=tiles)
    mask = torch.zeros(48, 64, dtype=torch.bool)
    for t in tiles.tolist():
        ty, tx = divmod(t, 4)
        mask[ty * 16:(ty + 1) * 16, tx * 16:(tx + 1) * 16] = True
    assert torch.equal(part[0][mask], full[0][mask]) and torch.equal(pa[0][mask], fa[0][mask])
    assert part[0][~mask].abs().max() == 0 and pa[0][~mask].abs().max() == 0


def test_edge_cases_render_finite_results(cpu_backend):
    V, K = make_cameras(1, 16, 12, seed=0)
    bg = torch.tensor([[0.4, 0.5, 0.6]])
    # no Gaussians; every Gaussian below the 1/255 threshold; a flat one; a 1x1 image; behind the camera
    empty = [torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3)]
    img, alpha, _ = rasterize(*empty, V, K, 16, 12, backend="raytrace", backgrounds=bg)
    assert torch.allclose(img, bg.expand(16 * 12, 3).reshape(1, 12, 16, 3)) and alpha.abs().max() == 0
    means, quats, scales, opac, cols = make_gaussians(20, seed=1)
    faint = opac * 0 + 1e-3
    img, alpha, _ = rasterize(means, quats, scales, faint, cols, V, K, 16, 12, backend="raytrace")
    assert alpha.abs().max() == 0
    flat = scales.clone()
    flat[:, 2] = 0.0
    xs = [t.clone().requires_grad_() for t in (means, quats, flat, opac, cols)]
    img, alpha, _ = rasterize(*xs, V, K, 16, 12, backend="raytrace")
    img.sum().backward()
    assert torch.isfinite(img).all() and all(torch.isfinite(x.grad).all() for x in xs)
    one, _, _ = rasterize(means, quats, scales, opac, cols, V, K / 16 * torch.tensor([[1.0], [1.0], [16.0]]), 1, 1,
                          backend="raytrace")
    assert one.shape == (1, 1, 1, 3) and torch.isfinite(one).all()
    behind = means.clone()
    behind[:] = torch.tensor([0.0, 0.0, 0.0])
    eye = -V[0, :3, :3].T @ V[0, :3, 3]
    behind[:] = eye - 2.0 * V[0, 2, :3]  # two units behind the camera
    img, alpha, _ = rasterize(behind, quats, scales, opac, cols, V, K, 16, 12, backend="raytrace")
    assert alpha.abs().max() == 0


def test_too_many_channels_are_refused(cpu_backend):
    means, precs, opac, _ = _scene(5)
    o, d, tmin, tmax = _rays(3)
    with pytest.raises(ValueError, match="at most 64 feature channels"):
        rt.trace_rays(means, precs, opac, torch.zeros(5, 65), o, d, tmin, tmax)


def test_cuda_kernels_match_the_cpu_tracer_under_host_emulation(cpu_backend):
    """The CUDA kernels (16-hit k-buffer, backward by tracing again with atomics) compiled for the host
    against the CPU tracer (64-hit buffer, backward from kept lists): same images and gradients."""
    from conftest import _emulated_cuda_lib

    lib = _emulated_cuda_lib()
    means, precs, opac, cols = _scene(120, 6)
    o, d, tmin, tmax = _rays(64, 6)
    bg = torch.tensor([0.3, 0.1, 0.6])
    res = []
    for engine in (None, lib):
        xs = [t.clone().requires_grad_() for t in (means, precs, opac, cols, bg)]
        c, T, hits = rt.trace_rays(*xs[:4], o, d, tmin, tmax, xs[4], engine=engine)
        ((c * c).sum() + T.sum()).backward()
        res.append((c.detach(), T.detach(), hits, [x.grad for x in xs]))
    (c1, T1, h1, g1), (c2, T2, h2, g2) = res
    assert torch.equal(h1, h2) and h1.max() > 16  # several rounds of the GPU's 16-hit buffer
    assert torch.allclose(c1, c2, atol=1e-6) and torch.allclose(T1, T2, atol=1e-6)
    for a, b in zip(g1, g2):  # sums in another order (atomics per ray against per-thread buffers)
        assert (a - b).norm() <= 1e-5 * b.norm() + 1e-7


# ------------------------------------------------------------------ secondary rays (splat.secondary_rays)
def _blob_scene():
    """One opaque red blob at height 1 above the plane z = 0, seen from the side and above."""
    from splat.cameras import Cameras
    from splat.render import Gaussians
    from scene_utils import look_at

    g = Gaussians(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.full((1, 3), 0.15),
                  torch.tensor([0.95]), torch.tensor([[1.0, 0.1, 0.1]]))
    V = look_at((0.0, -5.0, 2.5), target=(0.0, 0.0, 0.5), up=(0.0, 0.0, -1.0)).float()[None]
    K = torch.tensor([[[80.0, 0, 48], [0, 80.0, 48], [0, 0, 1]]])
    return g, Cameras(V, K, 96, 96)


def _pixel_of(cams, x):
    p = cams.viewmats[0, :3, :3] @ x + cams.viewmats[0, :3, 3]
    uv = cams.Ks[0] @ (p / p[2])
    return int(uv[1]), int(uv[0])  # row, column


def test_secondary_rays_without_effects_render_what_the_tracer_renders(cpu_backend):
    from splat.secondary_rays import ThinLens, render_secondary
    from splat.cameras import Cameras
    from splat.render import Gaussians

    means, quats, scales, opac, cols, V, K = _random_view_scene(7)
    g = Gaussians(means, quats, scales, opac, cols)
    cams = Cameras(V, K, 64, 48)
    bg = torch.tensor([0.2, 0.3, 0.4])
    want, _, _ = rasterize(means, quats, scales, opac, cols, V, K, 64, 48, backend="raytrace", backgrounds=bg[None])
    got, alpha = render_secondary(g, cams, bg)
    assert psnr(got, want[0]) > 50
    pin, _ = render_secondary(g, cams, bg, lens=ThinLens(0.0, 4.0))
    assert torch.equal(pin, got)
    focused, _ = render_secondary(g, cams, bg, lens=ThinLens(0.3, 4.0, samples=8))  # the scene's distance
    blurred, _ = render_secondary(g, cams, bg, lens=ThinLens(0.3, 1.5, samples=8))  # focused far in front
    assert 15 < psnr(blurred, got) < 35 and psnr(focused, got) > psnr(blurred, got) + 3


def test_mirror_plane_shows_the_reflection_and_shadow_plane_the_shadow(cpu_backend):
    from splat.secondary_rays import Plane, render_secondary

    g, cams = _blob_scene()
    bg = torch.tensor([1.0, 1.0, 1.0])
    mirror = Plane((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), "mirror", reflectance=1.0)
    img, _ = render_secondary(g, cams, bg, plane=mirror)
    r, c = _pixel_of(cams, torch.tensor([0.0, 0.0, -1.0]))  # the blob mirrored in the plane
    assert img[r, c, 0] > 0.8 and img[r, c, 1] < 0.3  # red: the reflection
    r2, c2 = _pixel_of(cams, torch.tensor([1.5, 0.0, 0.0]))  # the mirror beside it: the white sky
    assert img[r2, c2].min() > 0.9
    shadow = Plane((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), "shadow", light=(0.0, 0.0, 1.0), ambient=0.2, checker=100.0)
    img, _ = render_secondary(g, cams, bg, plane=shadow)
    under = img[_pixel_of(cams, torch.tensor([0.0, 0.0, 0.0]))]
    beside = img[_pixel_of(cams, torch.tensor([1.2, 0.5, 0.0]))]
    assert float(under.mean()) < 0.5 * float(beside.mean())  # the light from above: a shadow under the blob
    with pytest.raises(ValueError, match="kind must be 'mirror' or 'shadow'"):
        Plane((0, 0, 0), (0, 0, 1), "glass")
    with pytest.raises(ValueError, match="one camera at a time"):
        render_secondary(g, cams[[0, 0]], bg)


def test_cuda_tracer_matches_the_cpu_tracer_on_a_gpu(cpu_backend):
    """On a GPU (skipped elsewhere; scripts/gpu_validate.sh runs it): the CUDA traversal against the
    CPU one, images and gradients, through rasterize(backend="raytrace")."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    means, quats, scales, opac, cols, V, K = _random_view_scene(8, N=2000)
    bg = torch.tensor([[0.2, 0.3, 0.4]])
    out = {}
    for dev in ("cpu", "cuda"):
        xs = [t.to(dev).clone().requires_grad_() for t in (means, quats, scales, opac, cols)]
        img, alpha, _ = rasterize(*xs, V.to(dev), K.to(dev), 64, 48, backend="raytrace", backgrounds=bg.to(dev))
        (img.sum() + alpha.sum()).backward()
        out[dev] = [img.detach().cpu()] + [x.grad.cpu() for x in xs]
    assert psnr(out["cpu"][0], out["cuda"][0]) > 60
    for a, b in zip(out["cpu"][1:], out["cuda"][1:]):
        assert (a - b).norm() <= 1e-3 * b.norm() + 1e-6


def test_training_refuses_pieces_that_need_the_rasterizer(tmp_path):
    from splat.train import Trainer
    from synthetic_data import make_views, small_train_config, write_blender

    blender_dir = write_blender(tmp_path / "data", make_views(n_views=4, n_gauss=50))

    from splat.strategies import ADCStrategy

    for kw, msg in ((dict(optimizer="lm"), "--optimizer lm takes its Jacobian"),
                    (dict(strategy="steepgs"), "--strategy steepgs splits on the gradients"),
                    (dict(adc=ADCStrategy(absgrad=True)), "--adc.absgrad \\(AbsGS\\) needs per-pixel")):
        with pytest.raises(ValueError, match=msg):
            Trainer(small_train_config(blender_dir, tmp_path / "r", backend="raytrace", **kw), log=lambda *a: None)


def test_covariances_trace_like_rotations_and_scales(cpu_backend):
    """rasterize(covars=) (what a 4D Gaussian's time slice gives) on the tracer equals quats/scales."""
    from splat.backends.torch_ref import quat_scale_to_covar

    means, quats, scales, opac, cols, V, K = _random_view_scene(9)
    a, _, _ = rasterize(means, quats, scales, opac, cols, V, K, 64, 48, backend="raytrace")
    b, _, _ = rasterize(means, None, None, opac, cols, V, K, 64, 48, backend="raytrace",
                        covars=quat_scale_to_covar(quats, scales))
    assert psnr(a, b) > 60


def test_tracer_refuses_what_it_cannot_do_and_keeps_the_rasterizer_conventions(cpu_backend):
    means, quats, scales, opac, cols, V, K = _random_view_scene(10)
    with pytest.raises(ValueError, match="absgrad=True .* the ray tracer does not form"):
        rasterize(means, quats, scales, opac, cols, V, K, 64, 48, backend="raytrace", absgrad=True)
    with pytest.raises(ValueError, match="no gradient to viewmats"):
        rasterize(means, quats, scales, opac, cols, V.clone().requires_grad_(), K, 64, 48, backend="raytrace")
    with pytest.raises(ValueError, match="raytrace_options takes 'dilate' and 'reference', got \\['foo'\\]"):
        rasterize(means, quats, scales, opac, cols, V, K, 64, 48, backend="raytrace", raytrace_options={"foo": 1})
    with pytest.raises(ValueError, match="float32 or float64"):
        rasterize(*[t.half() for t in (means, quats, scales, opac, cols)], V.half(), K.half(), 64, 48,
                  backend="raytrace")
    with pytest.raises(ValueError, match="positive focal lengths"):
        rasterize(means, quats, scales, opac, cols, V, -K, 64, 48, backend="raytrace")
    # radius_clip culls the same Gaussians as on the rasterizer: everything here
    img, alpha, _ = rasterize(means, quats, scales, opac, cols, V, K, 64, 48, backend="raytrace", radius_clip=1e6)
    assert alpha.abs().max() == 0


def test_fisheye_pixels_outside_the_image_circle_get_the_background_in_tile_subsets_too(cpu_backend):
    means, quats, scales, opac, cols, V, _ = _random_view_scene(11)
    K = torch.tensor([[[64 / (math.pi / 2), 0, 32], [0, 64 / (math.pi / 2), 24], [0, 0, 1.0]]]) * 0.45
    K[0, 2, 2] = 1.0
    bg = torch.tensor([[0.0, 0.0, 1.0]])
    kw = dict(camera_model="fisheye", backend="raytrace", backgrounds=bg)
    full, _, _ = rasterize(means, quats, scales, opac, cols, V, K, 64, 48, **kw)
    part, _, _ = rasterize(means, quats, scales, opac, cols, V, K, 64, 48, tiles=torch.arange(12), **kw)
    assert torch.equal(full[0, 0, 0], bg[0]) and torch.equal(part, full)


def test_a_fisheye_sees_behind_its_image_plane_on_both_backends(cpu_backend):
    ang = math.radians(100)
    m = torch.tensor([[3 * math.sin(ang), 0.0, 3 * math.cos(ang)]])
    args = (m, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.3), torch.tensor([0.9]), torch.ones(1, 3))
    V, K = torch.eye(4)[None], torch.tensor([[[30.0, 0, 64], [0, 30.0, 48], [0, 0, 1]]])
    out = {}
    for be in ("cpu", "raytrace"):
        img, alpha, info = rasterize(*args, V, K, 128, 96, camera_model="fisheye", backend=be, render_mode="RGB+ED")
        out[be] = img
        assert alpha.sum() > 50 and (info["radii"] > 0).all()
        assert img[..., 3].max() == pytest.approx(3.0, abs=1e-3)  # a fisheye's depth: the distance
    assert psnr(out["cpu"][..., :3], out["raytrace"][..., :3]) > 30
