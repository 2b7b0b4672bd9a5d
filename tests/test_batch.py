"""--batch-size: B views per optimizer step, gradients averaged, for every model kind."""
from __future__ import annotations

import shutil

import pytest
import torch

from synthetic_data import make_views, small_train_config, write_blender
from test_dynamic import synthetic_dataset

from splat.render import merge_infos
from splat.strategies.adc import ADCStrategy
from splat.train import Trainer
from splat.train.data import view_for_step

QUIET = lambda *a: None  # noqa: E731


@pytest.fixture(scope="module")
def blender_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    return write_blender(root, make_views(n_views=12, width=40, height=32, n_gauss=200), test_ids=(0, 6))


@pytest.fixture(scope="module")
def dyn_dataset():
    return synthetic_dataset(n_cams=4, n_times=4, W=24)


def _grads_of_step(tr, step, views):
    """The parameter gradients of one training step on `views` (no update)."""
    tr.step_views = lambda s: list(views)
    grads = {}

    def step_fn(forward):
        loss, outs = forward()
        loss.backward()
        for k, p in tr.model.params.items():
            if p.grad is not None:
                grads[k] = p.grad.clone()
                p.grad = None
        return loss, outs

    tr.optimizer.step = step_fn
    tr.train_step(step)
    return grads


@pytest.mark.parametrize("kind", ["static", "4dgs"])
def test_a_batch_gradient_is_the_mean_of_its_views_gradients(blender_dir, dyn_dataset, tmp_path, kind):
    """One call for B static views, one call per view for a dynamic model: either way the
    step's gradient is the mean of the single-view gradients."""
    adc = ADCStrategy(refine_start_iter=10_000)
    if kind == "static":
        cfg = small_train_config(blender_dir, tmp_path / "b", batch_size=3, adc=adc)
        tr = Trainer(cfg, log=QUIET)
    else:
        from test_dynamic import _cfg

        tr = Trainer(_cfg(tmp_path, "4dgs", batch_size=3, adc=adc), dataset=dyn_dataset, log=QUIET)
    views = [1, 4, 2]
    if kind == "static":
        assert tr.view_groups(views) == [views]
    else:
        assert tr.view_groups(views) == [[1], [4], [2]]
    batch = _grads_of_step(tr, 5, views)
    singles = [_grads_of_step(tr, 5, [v]) for v in views]
    assert batch
    for k, g in batch.items():
        mean = sum(s[k] for s in singles) / 3
        assert (g - mean).abs().max() <= 1e-4 * mean.abs().max() + 1e-10, (k, (g - mean).abs().max(), mean.abs().max())


def test_batches_follow_the_one_view_order(blender_dir, tmp_path):
    tr = Trainer(small_train_config(blender_dir, tmp_path / "o", batch_size=4), log=QUIET)
    n = len(tr.train_views)
    assert tr.step_views(3) == [view_for_step(12 + k, n, 0) for k in range(4)]
    # every view once per epoch, across batch boundaries
    seen = sum((tr.step_views(s) for s in range(n)), [])  # 4 epochs
    assert sorted(seen) == sorted(list(range(n)) * 4)


def test_merged_infos_scatter_each_render_into_the_model_rows():
    from splat.render import rasterize

    torch.manual_seed(0)
    N = 6
    means = torch.randn(N, 3) * 0.3
    means[:, 2] += 3
    means.requires_grad_(True)
    quats, scales = torch.randn(N, 4), torch.full((N, 3), 0.2)
    opac, cols = torch.full((N,), 0.7), torch.rand(N, 3)
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 12], [0, 0, 1]])
    infos, ids_list = [], [torch.tensor([0, 2, 4]), torch.tensor([1, 2, 5, 3])]
    for ids, (W, H) in zip(ids_list, [(32, 24), (64, 48)]):
        Ks = (K * torch.tensor([[W / 32], [H / 24], [1.0]]))[None]
        _, _, info = rasterize(means[ids], quats[ids], scales[ids], opac[ids], cols[ids], torch.eye(4)[None], Ks,
                               W, H, backend="torch")
        info["means2d"].retain_grad()
        info["param_ids"] = ids
        infos.append(info)
    loss = sum((i["means2d"] ** 2).sum() for i in infos)
    loss.backward()
    m = merge_infos(infos, N)
    assert m["means2d"].shape == (2, N, 2) and m["radii"].shape == (2, N, 2)
    for c, (info, ids) in enumerate(zip(infos, ids_list)):
        assert torch.equal(m["means2d"][c, ids], info["means2d"].detach()[0])
        scale = torch.tensor([info["width"] / 32, info["height"] / 24])
        assert torch.allclose(m["means2d"].grad[c, ids], info["means2d"].grad[0] * scale)
        rest = torch.ones(N, dtype=torch.bool)
        rest[ids] = False
        assert (m["radii"][c, rest] == 0).all() and (m["means2d"].grad[c, rest] == 0).all()
    assert m["width"] == 32 and m["Ks"].shape == (2, 3, 3)
    with pytest.raises(ValueError, match="no infos"):
        merge_infos([], N)


def test_grendel_scaling_of_adam(blender_dir, tmp_path):
    tr = Trainer(small_train_config(blender_dir, tmp_path / "g", batch_size=4), log=QUIET)
    lrs = tr.model.learning_rates(0, tr.iterations)
    tr.optimizer.set_learning_rates(lrs)
    g = tr.optimizer.optimizers["means"].param_groups[0]
    assert g["lr"] == pytest.approx(lrs["means"] * 2.0)
    assert g["betas"] == pytest.approx((0.9 ** 4, 0.999 ** 4))
    from splat.optim.adam import AdamConfig

    tr = Trainer(small_train_config(blender_dir, tmp_path / "g2", batch_size=4, adam=AdamConfig(batch_scaling="none")),
                 log=QUIET)
    tr.optimizer.set_learning_rates(lrs)
    g = tr.optimizer.optimizers["means"].param_groups[0]
    assert g["lr"] == pytest.approx(lrs["means"]) and g["betas"] == pytest.approx((0.9, 0.999))


def test_batched_training_densifies_and_resumes_bit_for_bit(blender_dir, tmp_path):
    cfg = small_train_config(blender_dir, tmp_path / "full", batch_size=3, iterations=60, save_every=30,
                             keep_checkpoints=5, save_renders=0)
    full = Trainer(cfg, log=QUIET)
    n0 = full.num_gaussians
    m = full.train()
    assert full.num_gaussians != n0 and m["psnr"] > 15
    half = tmp_path / "half"
    shutil.copytree(cfg.out, half)
    (half / "ckpts" / "ckpt_60.pt").unlink()
    resumed = Trainer(small_train_config(blender_dir, half, resume=True), log=QUIET)
    assert resumed.start_step == 30 and resumed.cfg.batch_size == 3
    resumed.train()
    differ = [k for k, v in full.model.params.items() if not torch.equal(v, resumed.model.params[k])]
    assert not differ


def test_bad_batch_size_is_refused(blender_dir, tmp_path):
    with pytest.raises(ValueError, match="--batch-size must be at least 1, got 0"):
        Trainer(small_train_config(blender_dir, tmp_path / "x", batch_size=0), log=QUIET)


@pytest.mark.parametrize("piece", ["mcmc", "steepgs", "lm"])
def test_batches_work_with_every_strategy_and_optimizer(blender_dir, tmp_path, piece):
    from splat.optim.lm import LMConfig
    from splat.strategies import MCMCStrategy, SteepGSStrategy

    kw = {"mcmc": dict(strategy="mcmc", mcmc=MCMCStrategy(refine_start_iter=5, refine_every=10, cap_max=400)),
          "steepgs": dict(strategy="steepgs", steepgs=SteepGSStrategy(refine_start_iter=5, refine_every=10,
                                                                      reset_every=20, grow_grad2d=1e-5)),
          "lm": dict(optimizer="lm", lm=LMConfig(lm_steps=2, pcg_iterations=2, probes=1))}[piece]
    tr = Trainer(small_train_config(blender_dir, tmp_path / piece, batch_size=2, iterations=30, save_renders=0, **kw),
                 log=QUIET)
    n0 = tr.num_gaussians
    m = tr.train()
    assert m["psnr"] > 12
    if piece != "lm":
        assert tr.num_gaussians != n0
    else:
        assert [e["step"] for e in tr.optimizer.log] == [28, 29]


def test_resume_says_which_given_options_it_ignores(blender_dir, tmp_path):
    cfg = small_train_config(blender_dir, tmp_path / "r", batch_size=2, iterations=30, save_renders=0)
    Trainer(cfg, log=QUIET).train()
    logs = []
    tr = Trainer(small_train_config(blender_dir, tmp_path / "r", resume=True, batch_size=5, iterations=80),
                 log=logs.append)
    assert tr.cfg.batch_size == 2 and tr.iterations == 30
    line = [m for m in logs if "ignored" in m]
    assert line and "--batch-size (5 -> the run's 2)" in line[0] and "--iterations (80 -> the run's 30)" in line[0]
