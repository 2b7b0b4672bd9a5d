"""Levenberg-Marquardt: PCG, the Jacobian-vector products (native and reference), the optimizer."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from scene_utils import DEVICES
from synthetic_data import make_views, small_train_config, write_blender

from splat.backends import torch_ref
from splat.cameras import Cameras
from splat.models.static import render_jvp, render_splats
from splat.optim.lm import LMConfig, pcg
from splat.render import RenderSettings
from splat.train import Trainer

QUIET = lambda *a: None  # noqa: E731


# ----------------------------------------------------------------------------- PCG


@pytest.mark.parametrize("precondition", [False, True])
def test_pcg_solves_a_small_spd_system_like_numpy(precondition):
    rng = np.random.default_rng(0)
    n = 12
    Q = rng.normal(size=(n, n))
    A = Q @ Q.T + np.diag(rng.uniform(0.1, 10, n))  # SPD, badly scaled diagonal
    b = rng.normal(size=n)
    At, bt = torch.from_numpy(A), torch.from_numpy(b)
    inv = 1.0 / torch.diagonal(At) if precondition else None
    x, iters = pcg(lambda v: At @ v, bt, inv, iterations=50, tol=1e-12)
    assert np.allclose(x.numpy(), np.linalg.solve(A, b), rtol=1e-8, atol=1e-10)
    assert iters <= n + 2  # CG's finite termination (plus rounding)
    # a few iterations already lower the A-norm error monotonically
    errs = []
    for k in (1, 3, 6):
        xk, _ = pcg(lambda v: At @ v, bt, inv, iterations=k)
        e = xk.numpy() - np.linalg.solve(A, b)
        errs.append(e @ A @ e)
    assert errs[0] > errs[1] > errs[2]


def test_pcg_of_a_zero_right_hand_side_is_zero():
    x, iters = pcg(lambda v: 2 * v, torch.zeros(5))
    assert iters == 0 and not x.any()


# ----------------------------------------------------------------------------- J v


def _scene(N=80, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    splats = {"means": r(N, 3) * 0.5, "quats": r(N, 4), "scales": torch.log(torch.rand(N, 3, generator=g,
                                                                                      dtype=torch.float64) * 0.2 + 0.05),
              "opacities": r(N), "sh0": r(N, 1, 3) * 0.5, "shN": r(N, 3, 3) * 0.2}
    splats = {k: v.to(device, dtype) for k, v in splats.items()}
    V = torch.eye(4, dtype=torch.float64)[None].repeat(2, 1, 1)
    V[:, 2, 3] = torch.tensor([4.0, 3.5])
    V[1, :3, :3] = torch.linalg.matrix_exp(torch.tensor([[0, -0.3, 0.2], [0.3, 0, 0.1], [-0.2, -0.1, 0]],
                                                        dtype=torch.float64))
    K = torch.tensor([[[40.0, 0, 24], [0, 40.0, 20], [0, 0, 1]]], dtype=torch.float64).repeat(2, 1, 1)
    cams = Cameras(V.to(device, dtype), K.to(device, dtype), 48, 40)
    tangents = {k: r(*v.shape).to(device, dtype) for k, v in splats.items()}
    bg = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.3, 0.4]], dtype=dtype, device=device)
    return splats, tangents, cams, bg


def _images(splats, cams, bg, backend):
    return render_splats(splats, cams.viewmats, cams.Ks, cams.width, cams.height, sh_degree=1, backgrounds=bg,
                         backend=backend)[0]


def test_reference_jvp_matches_finite_differences():
    """The reference J v (float64) against central differences of the renderer, per parameter."""
    splats, tangents, cams, bg = _scene(dtype=torch.float64)
    for name in splats:
        jv = render_jvp(splats, {name: tangents[name]}, 1, cams, RenderSettings("torch"), bg)
        h = 1e-6
        plus = {k: v + h * tangents[k] if k == name else v for k, v in splats.items()}
        minus = {k: v - h * tangents[k] if k == name else v for k, v in splats.items()}
        fd = (_images(plus, cams, bg, "torch") - _images(minus, cams, bg, "torch")) / (2 * h)
        assert fd.abs().max() > 1e-3, name
        assert ((jv - fd).norm() / fd.norm()) < 1e-6, name


def test_native_jvp_matches_the_reference_and_is_the_transpose_of_the_vjp(native):
    """The native compositing JVP (cpu, cuda, the CUDA source run on the host) against the
    float64 reference, and <J v, w> = <v, J^T w> with J^T w from the native backward."""
    device = DEVICES[native]
    splats, tangents, cams, bg = _scene(device=device)
    jv = render_jvp(splats, tangents, 1, cams, RenderSettings(native), bg)
    s64, t64, c64, bg64 = _scene(dtype=torch.float64)
    ref = render_jvp(s64, t64, 1, c64, RenderSettings("torch"), bg64)
    assert jv.shape == ref.shape == (2, 40, 48, 3)
    rel = ((jv.double().cpu() - ref).norm() / ref.norm()).item()
    assert rel < 1e-3, rel
    w = torch.randn(jv.shape, generator=torch.Generator().manual_seed(5)).to(device)
    params = {k: v.clone().requires_grad_(True) for k, v in splats.items()}
    out = _images(params, cams, bg, native)
    grads = torch.autograd.grad((out * w).sum(), list(params.values()))
    lhs = float((jv * w).sum())
    rhs = float(sum((g * tangents[k]).sum() for k, g in zip(params, grads)))
    assert abs(lhs - rhs) <= 1e-3 * (abs(lhs) + abs(rhs)) + 1e-4, (lhs, rhs)


def test_native_jvp_kernel_alone_matches_the_reference(native):
    """rasterize_to_pixels_jvp on given 2D inputs, tiles included, no projection."""
    import math

    from splat.render import get_backend

    device = DEVICES[native]
    impl = get_backend(native, torch.device(device))
    g = torch.Generator().manual_seed(2)
    C, N, D, W, H = 2, 40, 4, 37, 29
    means2d = torch.rand(C, N, 2, generator=g) * torch.tensor([W, H])
    conics = torch.stack([torch.rand(C, N, generator=g) * 0.3 + 0.05, (torch.rand(C, N, generator=g) - 0.5) * 0.05,
                          torch.rand(C, N, generator=g) * 0.3 + 0.05], -1)
    colors = torch.rand(C, N, D, generator=g)
    opac = torch.rand(C, N, generator=g) * 0.99  # some clamp at 0.99
    opac[:, :3] = 1.0
    depths = torch.rand(C, N, generator=g) + 1
    radii = torch.full((C, N, 2), 8, dtype=torch.int32)
    tans = [torch.randn(x.shape, generator=g) for x in (means2d, conics, colors, opac)]
    bg = torch.rand(C, D, generator=g)
    tw, th = math.ceil(W / 16), math.ceil(H / 16)
    _, _, fids, offs = torch_ref.isect_tiles(means2d, radii, depths, 16, tw, th)
    ref = torch_ref.rasterize_to_pixels_jvp(*(x.double() for x in (means2d, conics, colors, opac)),
                                            *(t.double() for t in tans), W, H, 16, offs, fids, bg.double())
    to = lambda x: x.to(device)  # noqa: E731
    got = impl.rasterize_to_pixels_jvp(*map(to, (means2d, conics, colors, opac)), *map(to, tans), W, H, 16,
                                       to(offs), to(fids), to(bg))
    for a, b in zip(got, ref):
        assert torch.allclose(a.double().cpu(), b, atol=2e-4 * b.abs().max().item() + 1e-6)


def test_jvp_refuses_a_tangent_of_the_wrong_shape():
    splats, tangents, cams, bg = _scene(N=5)
    with pytest.raises(ValueError, match="tangent 'means' is \\[4, 3\\], the parameter \\[5, 3\\]"):
        render_jvp(splats, {"means": tangents["means"][:4]}, 1, cams, RenderSettings("cpu"), bg)


# ----------------------------------------------------------------------------- the optimizer


@pytest.fixture(scope="module")
def blender_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    return write_blender(root, make_views(n_views=12, width=40, height=32, n_gauss=200), test_ids=(0, 6))


def _cfg(d, out, **kw):
    kw.setdefault("lm", LMConfig(lm_steps=4, pcg_iterations=4, probes=2))
    kw.setdefault("iterations", 64)
    return small_train_config(d, out, optimizer="lm", save_every=62, keep_checkpoints=5, save_renders=0, **kw)


def test_lm_steps_lower_the_training_error(blender_dir, tmp_path):
    tr = Trainer(_cfg(blender_dir, tmp_path / "a"), log=QUIET)
    tr.train()
    log = tr.optimizer.log
    assert [e["step"] for e in log] == [60, 61, 62, 63]
    assert all(e["mse_after"] <= e["mse_before"] for e in log)
    assert sum(e["accepted"] for e in log) >= 3
    assert log[-1]["mse_after"] < 0.8 * log[0]["mse_before"]


def test_lm_resumes_bit_for_bit(blender_dir, tmp_path):
    full = Trainer(_cfg(blender_dir, tmp_path / "full"), log=QUIET)
    full.train()
    half = tmp_path / "half"
    shutil.copytree(full.out, half)
    (half / "ckpts" / "ckpt_64.pt").unlink()
    resumed = Trainer(_cfg(blender_dir, half, resume=True), log=QUIET)
    assert resumed.start_step == 62  # inside the LM phase
    resumed.train()
    differ = [k for k, v in full.model.params.items() if not torch.equal(v, resumed.model.params[k])]
    assert not differ
    assert resumed.optimizer.damping == full.optimizer.damping


def test_lm_refuses_other_model_kinds_and_bad_options(blender_dir, tmp_path):
    from test_dynamic import _cfg as dyn_cfg, synthetic_dataset

    with pytest.raises(ValueError, match="--optimizer lm: .*--model 4dgs does not provide"):
        Trainer(dyn_cfg(tmp_path, "4dgs", optimizer="lm"), dataset=synthetic_dataset(n_cams=3, n_times=3, W=16),
                log=QUIET)
    with pytest.raises(ValueError, match="pcg-iterations"):
        Trainer(_cfg(blender_dir, tmp_path / "b", lm=LMConfig(pcg_iterations=0)), log=QUIET)


def test_lm_uses_the_runs_adam_options_and_stops_density_control(blender_dir, tmp_path):
    """The warm-up is the run's Adam (--adam.*, batch scaling included); LM steps run no density
    control even where the strategy's window reaches into them."""
    from splat.optim.adam import AdamConfig
    from splat.strategies import ADCStrategy

    adc = ADCStrategy(refine_start_iter=2, refine_every=5, refine_stop_iter=1000, reset_every=0, grow_grad2d=1e-6)
    counts = {}
    cb = type("C", (), {"on_step": lambda self, tr, s, r: counts.__setitem__(s, tr.num_gaussians),
                        "__getattr__": lambda self, name: (lambda *a, **k: None)})()
    tr = Trainer(_cfg(blender_dir, tmp_path / "a", iterations=30, batch_size=2, adc=adc,
                      adam=AdamConfig(eps=1e-8, batch_scaling="none"), lm=LMConfig(lm_steps=10, pcg_iterations=2,
                                                                                  probes=1)),
                 log=QUIET, callbacks=[cb])
    g = tr.optimizer.optimizers["means"].param_groups[0]
    assert g["eps"] == 1e-8 and tuple(g["betas"]) == (0.9, 0.999) and tr.optimizer.adam.lr_scale == 1.0
    tr.train()
    assert counts[20] != counts[5]  # ADC acted in the Adam steps ...
    assert len({counts[s] for s in range(20, 31)}) == 1  # ... and not in the LM steps (20..29)


@pytest.mark.parametrize("kw, message", [
    (dict(lm=LMConfig(max_backtracks=-1)), "max-backtracks must be >= 0"),
    (dict(lm=LMConfig(damping_up=0.5)), "damping-up must be > 1"),
])
def test_lm_refuses_bad_options_before_loading_data(tmp_path, kw, message):
    from splat.train import TrainConfig

    with pytest.raises(ValueError, match=message):
        Trainer(TrainConfig(data=tmp_path / "missing", out=tmp_path / "o", optimizer="lm", **kw), log=QUIET)
