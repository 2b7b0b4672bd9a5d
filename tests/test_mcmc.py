"""--strategy mcmc (3DGS as MCMC): the relocation formula against the paper's claim, the moves
keep parameters and optimizer state aligned, noise, regularisers, training and exact resume."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scene_utils import look_at
from splat.render import rasterize
from splat.strategies.mcmc import MCMCStrategy, relocation


def _render(means, scales, opacities, size=64):
    N = means.shape[0]
    V = look_at(torch.tensor([0.0, 0.0, -3.0]), up=(0.0, -1.0, 0.0))[None].float()
    f = 60.0
    K = torch.tensor([[[f, 0, size / 2], [0, f, size / 2], [0, 0, 1.0]]])
    colors = torch.ones(N, 3)
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(N, 1)
    _, alphas, _ = rasterize(means, quats, scales, opacities, colors, V, K, size, size, backend="torch",
                             eps2d=0.0)
    return alphas[0, ..., 0]


@pytest.mark.parametrize("o,n", [(0.3, 2), (0.6, 2), (0.9, 3), (0.5, 5)])
def test_relocation_preserves_the_image_to_first_order(o, n):
    """N co-located copies with the relocated opacity and scale render the original Gaussian: the
    same alpha at the centre (1 - (1 - o')^N = o exactly) and nearly the same elsewhere, far
    closer than naive copies (original opacity and scale, or only the opacity corrected)."""
    s = torch.tensor([[0.3, 0.2, 0.25]])
    new_o, new_s = relocation(torch.tensor([o]), s, torch.tensor([n]))
    assert 1 - (1 - float(new_o)) ** n == pytest.approx(o, abs=1e-6)
    centre = torch.zeros(1, 3)
    orig = _render(centre, s, torch.tensor([o]))
    reloc = _render(centre.repeat(n, 1), new_s.repeat(n, 1), new_o.repeat(n))
    naive = _render(centre.repeat(n, 1), s.repeat(n, 1), torch.tensor([o]).repeat(n))
    opac_only = _render(centre.repeat(n, 1), s.repeat(n, 1), new_o.repeat(n))
    c = orig.shape[0] // 2
    assert float(reloc[c - 1:c + 1, c - 1:c + 1].mean()) == pytest.approx(float(orig[c - 1:c + 1, c - 1:c + 1].mean()),
                                                                          abs=0.01)
    err = float((reloc - orig).abs().sum())
    assert err < 0.25 * float((naive - orig).abs().sum())
    assert err < 0.6 * float((opac_only - orig).abs().sum())
    # the integral of the opacity profile is kept to first order (small o: exactly the sum)
    small, small_s = relocation(torch.tensor([1e-3]), s, torch.tensor([n]))
    vol = lambda op, sc: float(op) * float(sc.prod())  # noqa: E731
    assert n * vol(small, small_s) == pytest.approx(vol(1e-3, s), rel=2e-3)


def _params(N=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.ParameterDict({
        "means": torch.randn(N, 3, generator=g), "scales": torch.full((N, 3), -2.0),
        "quats": torch.randn(N, 4, generator=g), "opacities": torch.logit(torch.rand(N, generator=g) * 0.9 + 0.05),
        "sh0": torch.rand(N, 1, 3, generator=g)})
    opts = {k: torch.optim.Adam([v], lr=1e-3) for k, v in p.items()}
    for v in p.values():  # give Adam state
        v.grad = torch.ones_like(v)
    for o in opts.values():
        o.step()
    return p, opts


def test_relocation_moves_dead_onto_live_and_keeps_state_aligned():
    p, opts = _params()
    with torch.no_grad():
        p["opacities"][:10] = -10.0  # dead
    strat = MCMCStrategy(cap_max=60, min_opacity=0.005)
    g = torch.Generator().manual_seed(1)
    before = {k: v.detach().clone() for k, v in p.items()}
    moved = strat.relocate(p, opts, strat.initialize_state(), g)
    assert moved == 10
    o = torch.sigmoid(p["opacities"])
    assert bool((o > 0.005).all())
    for i in range(10):  # each dead row is now a copy of a live one, in every parameter
        src = [j for j in range(10, 50) if torch.equal(p["means"][i], before["means"][j])]
        assert src and torch.equal(p["sh0"][i], before["sh0"][src[0]])
    assert float(opts["means"].state[p["means"]]["exp_avg"][:10].abs().max()) == 0
    added = strat.grow(p, opts, strat.initialize_state(), g)
    assert added == 2 and p["means"].shape[0] == 52  # 5% of 50, capped at 60
    for k, v in p.items():
        assert v.shape[0] == 52 and opts[k].state[v]["exp_avg"].shape[0] == 52
        assert opts[k].param_groups[0]["params"][0] is v
    for _ in range(5):
        strat.grow(p, opts, strat.initialize_state(), g)
    assert p["means"].shape[0] == 60  # the cap


def test_noise_is_gated_by_opacity_and_shaped_by_the_covariance():
    p, opts = _params(N=2000)
    with torch.no_grad():
        p["opacities"][:1000] = 8.0  # opaque: no noise
        p["opacities"][1000:] = math.log(0.001 / 0.999)  # nearly transparent: gate sigmoid(100 * 0.004)
        p["quats"][:] = torch.tensor([1.0, 0, 0, 0])
        p["scales"][:] = torch.log(torch.tensor([0.2, 0.02, 0.02]))
    before = p["means"].detach().clone()
    MCMCStrategy(noise_lr=5e5).inject_noise(p, 1e-5, torch.Generator().manual_seed(0))
    d = p["means"].detach() - before
    assert float(d[:1000].abs().max()) < 1e-6
    std = d[1000:].std(0)
    gate = 1 / (1 + math.exp(-100 * (0.999 - 0.995)))
    assert float(std[0]) == pytest.approx(5.0 * gate * 0.04, rel=0.1)  # lr * noise_lr * gate * sigma_x^2
    assert float(std[1] / std[0]) == pytest.approx(0.01, rel=0.2)


def test_regularisers():
    p, _ = _params()
    r = MCMCStrategy(opacity_reg=0.1, scale_reg=0.2).losses(p, {}, 0, {})
    assert float(r["opacity_reg"].detach()) == pytest.approx(0.1 * float(torch.sigmoid(p["opacities"]).mean()))
    assert float(r["scale_reg"]) == pytest.approx(0.2 * float(torch.exp(p["scales"]).mean()), rel=1e-6)
    assert float(r["scale_reg"]) == pytest.approx(0.2 * math.exp(-2.0), rel=2e-3)  # scales ~ -2 after one step


def test_mcmc_trains_grows_and_resumes_exactly(tmp_path):
    import shutil

    from splat.train import TrainConfig, Trainer
    from splat.train.run import default_scene_path

    def cfg(out, **kw):
        return TrainConfig(data=default_scene_path("static"), out=out, strategy="mcmc", iterations=40,
                           progress=False, eval_every=0, save_renders=0, export=[], scale_schedule=False,
                           downscale=4, save_every=20, keep_checkpoints=5,
                           mcmc=MCMCStrategy(refine_start_iter=5, refine_every=10, cap_max=100_000), **kw)

    full = Trainer(cfg(tmp_path / "full"), log=lambda *a: None)
    n0 = full.num_gaussians
    m = full.train()
    assert full.num_gaussians > n0 and np.isfinite(m["psnr"])
    half = tmp_path / "half"
    shutil.copytree(tmp_path / "full", half)
    (half / "ckpts" / "ckpt_40.pt").unlink()
    resumed = Trainer(cfg(half, resume=True), log=lambda *a: None)
    assert resumed.start_step == 20
    resumed.train()
    differ = [k for k, v in full.model.params.items() if not torch.equal(v, resumed.model.params[k])]
    assert not differ


def test_a_shorter_run_scales_the_interval_and_the_cap():
    """As gsplat's steps_scaler: start, stop, interval and (here) the cap follow the run's length,
    so a 2000-step run grows per step as a 30k one does, to a budget its time can pay for."""
    s = MCMCStrategy().scaled(2000 / 30000)
    assert (s.refine_start_iter, s.refine_stop_iter, s.refine_every, s.cap_max) == (33, 1666, 6, 33_333)
    s = MCMCStrategy(refine_every=10).scaled(0.01)
    assert s.refine_every == 1  # never below every step
