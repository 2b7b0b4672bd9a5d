"""The training core serves more than one model kind: cameras, the model interface,
the optimizer and callbacks, option names old and new, and checkpoints of either
layout.

A toy model kind (`TimeColourModel`: per-Gaussian features that change with each
camera's time, decoded into colours by a shared linear layer after rendering)
trains through the same loop as the static model, with density control, a
regulariser, checkpoints and an exact resume.
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synthetic_data import interrupt_at, make_views, small_train_config, write_blender

import splat
from splat.cameras import Cameras
from splat.data import load_dataset
from splat.models.base import GaussianParams, Model
from splat.models.static import StaticConfig, StaticModel, init_splats, render_splats
from splat.render import Gaussians, RenderSettings, rasterize, render_gaussians
from splat.strategies import ADCStrategy, ops
from splat.optim import AdamOptimizer
from splat.train import MODELS, OPTIMIZERS, STRATEGIES, Callback, TrainConfig, Trainer, train
from splat.train.config import config_from_json, config_to_json

QUIET = lambda *a: None  # noqa: E731


@pytest.fixture(scope="module")
def blender_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return write_blender(root, make_views(n_views=32, width=48, height=40, n_gauss=300), test_ids=(0, 8, 16, 24))


# ----------------------------------------------------------------------------- Cameras


def _cams(C=3, **kw):
    V = torch.eye(4).repeat(C, 1, 1)
    V[:, 2, 3] = torch.arange(C, dtype=torch.float32) + 2.0
    K = torch.tensor([[50.0, 0, 32], [0, 50.0, 24], [0, 0, 1]]).repeat(C, 1, 1)
    return Cameras(V, K, 64, 48, **kw)


def test_cameras_select_move_and_concatenate():
    c = _cams(4, time=torch.tensor([0.0, 0.25, 0.5, 1.0]), names=["a", "b", "c", "d"])
    assert len(c) == 4 and c.device == torch.device("cpu")
    one = c[2]
    assert len(one) == 1 and one.names == ["c"] and one.time.tolist() == [0.5]
    assert torch.equal(one.viewmats[0], c.viewmats[2])
    assert c[-1].names == ["d"]
    assert c[1:3].names == ["b", "c"] and c[torch.tensor([3, 0])].names == ["d", "a"]
    assert c[torch.tensor([True, False, True, False])].names == ["a", "c"]
    both = Cameras.cat([c[0], c[3]])
    assert both.names == ["a", "d"] and both.time.tolist() == [0.0, 1.0]
    # centres from the view matrices (R = I, t = (0, 0, z)): at (0, 0, -z)
    assert torch.allclose(c.centers, torch.stack([torch.zeros(4), torch.zeros(4), -c.viewmats[:, 2, 3]], 1))
    assert torch.allclose(c.camtoworlds[:, :3, 3], c.centers)
    with pytest.raises(IndexError):
        c[4]


def test_cameras_take_any_integer_index_and_are_immutable():
    c = _cams(3, names=["a", "b", "c"])
    assert c[np.int64(1)].names == ["b"] and c[torch.tensor(2)].names == ["c"]
    assert c[::-1].names == ["c", "b", "a"] and len(c[[]]) == 0
    assert c[np.array([True, False, True])].names == ["a", "c"]
    with pytest.raises(IndexError, match="selected by integers"):
        c[1.5]
    with pytest.raises(IndexError, match="needs 3 entries"):
        c[[True, False]]
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.width = 10
    assert Cameras(c.viewmats, c.Ks, np.int64(64), 48).width == 64


@pytest.mark.parametrize("change, message", [
    (dict(viewmats=torch.eye(4)), "viewmats must be a \\[C,4,4\\] tensor"),
    (dict(Ks=torch.eye(3).repeat(2, 1, 1)), "Ks must be a \\[3,3,3\\] tensor"),
    (dict(width=0), "width and height must be positive integers"),
    (dict(height=2.5), "width and height must be positive integers"),
    (dict(camera_model="equirect"), "camera_model 'equirect'"),
    (dict(time=torch.zeros(2)), "time must be a \\[3\\] tensor"),
    (dict(light_position=torch.zeros(3, 2)), "light_position must be a \\[3,3\\] tensor"),
    (dict(radial_coeffs=torch.zeros(3)), "radial_coeffs must be a \\[3,6\\] tensor for a pinhole camera"),
    (dict(time=torch.tensor([0.0, float("nan"), 1.0])), "time has non-finite values"),
    (dict(Ks=torch.eye(3, dtype=torch.int64).repeat(3, 1, 1)), "Ks must be floating point"),
    (dict(names=["a"]), "1 names for 3 cameras"),
    (dict(width=None), "width and height must be positive integers, got None"),
    (dict(width=float("inf")), "width and height must be positive integers, got inf"),
    (dict(width="64"), "width and height must be positive integers, got '64'"),
    (dict(Ks=torch.eye(3, dtype=torch.float64).repeat(3, 1, 1)), "Ks is torch.float64 on cpu, viewmats torch.float32"),
    (dict(camera_model="fisheye", radial_coeffs=torch.zeros(3, 6)), "radial_coeffs must be a \\[3,4\\] tensor for a fish"),
    (dict(camera_model="ortho", radial_coeffs=torch.zeros(3, 6)), "camera_model .ortho. takes no radial_coeffs"),
])
def test_cameras_refuse_bad_fields(change, message):
    base = dict(viewmats=_cams().viewmats, Ks=_cams().Ks, width=64, height=48)
    base.update(change)
    with pytest.raises(ValueError, match=message):
        Cameras(**base)


def test_cameras_cat_refuses_mixed_batches():
    with pytest.raises(ValueError, match="cannot batch 32x48 pinhole cameras with 64x48 pinhole ones"):
        Cameras.cat([_cams(1), Cameras(_cams(1).viewmats, _cams(1).Ks, 32, 48)])
    with pytest.raises(ValueError, match="time is set in some batches"):
        Cameras.cat([_cams(1, time=torch.zeros(1)), _cams(1)])


def test_datasets_hand_out_cameras(blender_dir):
    ds = load_dataset(blender_dir)
    cams = ds.train.cameras()
    assert len(cams) == len(ds.train) and cams.names == ds.train.names
    assert torch.equal(cams.viewmats, torch.from_numpy(ds.train.viewmats))
    assert cams.time is None and cams.light_position is None
    ds.train.times = np.linspace(0, 1, len(ds.train), dtype=np.float32)
    assert ds.train.cameras([1, 2]).time.tolist() == pytest.approx(ds.train.times[[1, 2]].tolist())


def test_render_gaussians_passes_the_camera_model_on():
    g = Gaussians(torch.tensor([[0.1, 0.0, 2.0]]), torch.tensor([[1.0, 0, 0, 0]]), torch.ones(1, 3) * 0.1,
                  torch.ones(1) * 0.9, torch.ones(1, 3))
    cams = _cams(1, camera_model="fisheye", radial_coeffs=torch.tensor([[0.05, 0.0, 0.0, 0.0]]))
    got, _, info = render_gaussians(g, cams)
    want, _, _ = rasterize(g.means, g.quats, g.scales, g.opacities, g.colors, cams.viewmats, cams.Ks, cams.width,
                           cams.height, camera_model="fisheye", radial_coeffs=cams.radial_coeffs,
                           near_plane=0.01)
    assert info["with_ut"] and info["camera_model"] == "fisheye"
    assert torch.equal(got, want) and got.sum() > 0
    pinhole, _, _ = render_gaussians(g, _cams(1))
    assert not torch.equal(pinhole, got)


# ----------------------------------------------------------------------------- the static model


def test_static_model_renders_exactly_like_render_splats(blender_dir):
    ds = load_dataset(blender_dir)
    splats = init_splats(ds.points[:120], ds.points_rgb[:120], sh_degree=1)
    splats["shN"] = torch.randn(splats["shN"].shape, generator=torch.Generator().manual_seed(0)) * 0.1
    model = StaticModel(StaticConfig(sh_degree=1, sh_degree_interval=10), {k: v.clone() for k, v in splats.items()})
    cams = ds.train.cameras([0, 1])
    bg = torch.rand(2, 3, generator=torch.Generator().manual_seed(1))
    for step, degree in ((0, 0), (25, 1), (None, 1)):  # the SH degree rises with the step
        out = model.render(cams, RenderSettings("cpu"), step=step, backgrounds=bg)
        ref = {k: v.clone().requires_grad_(True) for k, v in splats.items()}
        colors, alphas, _ = render_splats(ref, cams.viewmats, cams.Ks, cams.width, cams.height, sh_degree=degree,
                                          backgrounds=bg, backend="cpu")
        assert torch.equal(out.colors, colors) and torch.equal(out.alphas, alphas)
        assert out.gaussians.sh_degree == degree
        w = torch.randn(colors.shape, generator=torch.Generator().manual_seed(2))
        (out.colors * w).sum().backward()
        (colors * w).sum().backward()
        for k in splats:
            assert torch.equal(model.params[k].grad, ref[k].grad), k
        model.zero_grad()


def test_static_learning_rates_follow_the_recipe():
    m = StaticModel(StaticConfig(), init_splats(np.random.default_rng(0).normal(size=(10, 3)),
                                               np.zeros((10, 3), np.uint8)), scene_scale=2.0)
    a, b = m.learning_rates(0, 100), m.learning_rates(100, 100)
    assert a["means"] == pytest.approx(2.0 * 1.6e-4) and b["means"] == pytest.approx(2.0 * 1.6e-6)
    assert a["scales"] == b["scales"] == 5e-3 and set(a) == set(m.params.keys())


def test_density_ops_leave_shared_parameters_alone():
    g = torch.Generator().manual_seed(0)
    N = 8
    params = GaussianParams({"means": torch.randn(N, 3, generator=g), "scales": torch.randn(N, 3, generator=g) - 2,
                             "quats": torch.randn(N, 4, generator=g), "opacities": torch.randn(N, generator=g),
                             "feat": torch.randn(N, 4, generator=g),
                             "decoder": torch.randn(N, 3, generator=g)},  # shared, though its first dim is also N
                            per_gaussian=("means", "scales", "quats", "opacities", "feat"))
    opts = {k: torch.optim.Adam([p], lr=0.01) for k, p in params.items()}
    sum((p ** 2).sum() for p in params.values()).backward()
    for o in opts.values():
        o.step()
    decoder = params["decoder"].detach().clone()
    mask = torch.zeros(N, dtype=torch.bool)
    mask[[1, 5]] = True
    ops.duplicate(params, opts, {}, mask)
    ops.split(params, opts, {}, torch.cat([mask, torch.zeros(2, dtype=torch.bool)]),
              generator=torch.Generator().manual_seed(1))
    ops.remove(params, opts, {}, torch.arange(params.num_gaussians) == 0)
    assert params.num_gaussians == N + 2 + 2 - 1
    assert all(params[k].shape[0] == params.num_gaussians for k in params.per_gaussian)
    assert torch.equal(params["decoder"].detach(), decoder)
    assert opts["decoder"].param_groups[0]["params"][0] is params["decoder"]
    with pytest.raises(ValueError, match="disagree on N"):
        GaussianParams({"means": torch.zeros(3, 3), "feat": torch.zeros(4, 2)}, per_gaussian=("means", "feat"))
    with pytest.raises(ValueError, match="name the per-Gaussian parameters"):
        GaussianParams({"means": torch.zeros(3, 3)}, per_gaussian=())


# ----------------------------------------------------------------------------- a second model kind


@dataclasses.dataclass
class TimeColourConfig:
    lr: float = 0.05
    smooth: float = 1e-3
    """Weight of the regulariser that keeps the colour change over time small."""


class TimeColourModel(Model):
    """Toy kind: per-Gaussian features f0 + t f1 (4 channels) for a camera at time t, decoded
    into RGB by a shared linear layer after rasterization."""

    name = "toy-time"
    Config = TimeColourConfig
    per_gaussian = ("means", "scales", "quats", "opacities", "f0", "f1")
    requires = ("time",)
    feature_channels = 4

    @classmethod
    def create(cls, config, dataset, *, seed=0):
        s = init_splats(dataset.points, dataset.points_rgb, sh_degree=0, init_opacity=0.3)
        N = s["means"].shape[0]
        g = torch.Generator().manual_seed(seed)
        return cls(config, {"means": s["means"], "scales": s["scales"], "quats": s["quats"],
                            "opacities": s["opacities"], "f0": torch.rand(N, 4, generator=g),
                            "f1": torch.zeros(N, 4), "decoder_w": torch.eye(4, 3), "decoder_b": torch.zeros(3)},
                   float(dataset.scene_scale))

    def gaussians(self, cameras, settings=RenderSettings(), step=None):
        p = self.params
        feats = p["f0"][None] + cameras.time[:, None, None] * p["f1"][None]  # [C, N, 4]
        return Gaussians(p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), feats)

    def decode(self, features, alphas, cameras, step=None):
        # features are alpha-weighted sums: the affine decoder's bias is weighted by alpha too
        return features @ self.params["decoder_w"] + alphas * self.params["decoder_b"]

    def learning_rates(self, step, iterations):
        return {k: (1e-3 if k == "means" else self.config.lr) for k in self.params.keys()}

    def losses(self, step, out, cameras, images):
        assert images.shape == out.colors.shape and len(cameras) == 1
        return {"smooth": self.config.smooth * self.params["f1"].pow(2).mean()}


@pytest.fixture
def toy_kind():
    MODELS.register("toy-time", TimeColourModel)
    yield
    MODELS.unregister("toy-time")


def _timed_dataset(blender_dir):
    """The synthetic views with a time per view; the images darken over time, so the
    model has to learn the change."""
    ds = load_dataset(blender_dir)
    for split in (ds.train, ds.test):
        split.times = np.linspace(0.0, 1.0, len(split), dtype=np.float32)
        split.images = [(im.astype(np.float32) * (1.0 - 0.5 * t)).round().astype(np.uint8)
                        for im, t in zip(split.images, split.times)]
    return ds


def _toy_cfg(out, **kw):
    strat = ADCStrategy(refine_start_iter=10, refine_stop_iter=120, refine_every=10, reset_every=0,
                        grow_grad2d=0.00005, max_gaussians=2000)
    base = dict(out=out, model="toy-time", iterations=150, scale_schedule=False, adc=strat, progress=False,
                save_every=30, export=["ply"], save_renders=0, backend="cpu")
    base.update(kw)
    return TrainConfig(**base)


def test_a_second_model_kind_trains_through_the_same_loop(blender_dir, tmp_path, toy_kind):
    ds = _timed_dataset(blender_dir)
    t = Trainer(_toy_cfg(tmp_path / "toy"), log=QUIET, dataset=ds)
    assert isinstance(t.model, TimeColourModel)
    start = t.evaluate(0)["psnr"]
    decoder0 = t.model.params["decoder_w"].detach().clone()
    n0 = t.num_gaussians
    m = t.train()
    assert m["psnr"] > start + 6, (start, m["psnr"])
    assert m["num_gaussians"] != n0  # density control cloned/split/pruned the toy's Gaussians
    assert all(t.model.params[k].shape[0] == t.num_gaussians for k in TimeColourModel.per_gaussian)
    assert t.model.params["decoder_w"].shape == (4, 3)
    assert not torch.equal(t.model.params["decoder_w"].detach(), decoder0)  # the shared decoder trained too
    assert t.model.params["f1"].abs().max() > 0  # and the time dependence was learned
    assert not (tmp_path / "toy" / "model.ply").exists()  # no static form: --export is skipped, not an error
    ck = torch.load(tmp_path / "toy" / "ckpts" / "ckpt_150.pt", weights_only=True)
    assert ck["model"] == "toy-time" and set(ck["splats"]) == set(t.model.params.keys())
    assert json.loads((tmp_path / "toy" / "metrics.json").read_text())["model_kind"] == "toy-time"


def test_a_second_model_kind_resumes_bit_for_bit(blender_dir, tmp_path, toy_kind, monkeypatch):
    ds = _timed_dataset(blender_dir)
    Trainer(_toy_cfg(tmp_path / "a"), log=QUIET, dataset=ds).train()
    ref = torch.load(tmp_path / "a" / "ckpts" / "ckpt_150.pt", weights_only=True)
    # Ctrl-C at step 75: between two density-control rounds, with the strategy's statistics half-accumulated
    interrupt_at(monkeypatch, 75, lambda: Trainer(_toy_cfg(tmp_path / "b"), log=QUIET, dataset=ds).train())
    Trainer(TrainConfig(out=tmp_path / "b", resume=True, progress=False), log=QUIET, dataset=ds).train()
    got = torch.load(tmp_path / "b" / "ckpts" / "ckpt_150.pt", weights_only=True)
    assert got["splats"].keys() == ref["splats"].keys()
    for k in ref["splats"]:
        assert torch.equal(got["splats"][k], ref["splats"][k]), k
    for k in ref["optimizer"]:
        for a, b in zip(ref["optimizer"][k]["state"].values(), got["optimizer"][k]["state"].values()):
            assert all(torch.equal(a[s], b[s]) for s in a), k


def test_a_model_that_needs_time_refuses_data_without_it(blender_dir, tmp_path, toy_kind):
    with pytest.raises(ValueError, match="--model toy-time needs per-camera time; .* \\(train views\\) has none"):
        Trainer(_toy_cfg(tmp_path / "x", data=blender_dir), log=QUIET)
    ds = _timed_dataset(blender_dir)
    ds.test.times = None  # refused before training, not in the final evaluation
    with pytest.raises(ValueError, match="needs per-camera time; .* \\(test views\\) has none"):
        Trainer(_toy_cfg(tmp_path / "y"), log=QUIET, dataset=ds)
    assert not (tmp_path / "y").exists()


def test_render_cli_refuses_cameras_a_model_cannot_render(blender_dir, tmp_path, toy_kind):
    from splat.render_cli import RenderConfig, render

    Trainer(_toy_cfg(tmp_path / "toy", iterations=5, save_every=0), log=QUIET, dataset=_timed_dataset(blender_dir)).train()
    for cams in ("orbit", "test"):
        out = tmp_path / f"render_{cams}"
        with pytest.raises(ValueError, match="--model toy-time needs per-camera time; .* has none"):
            render(RenderConfig(model=tmp_path / "toy", cameras=cams, frames=3, data=blender_dir, out=out), log=QUIET)
        assert not out.exists()


def test_unknown_pieces_are_refused_by_name(blender_dir, tmp_path):
    for kind, value in (("model", "nerf"), ("strategy", "steepest"), ("optimizer", "sgd")):
        with pytest.raises(ValueError, match=f"unknown {kind} '{value}'"):
            Trainer(small_train_config(blender_dir, tmp_path / kind, **{kind: value}), log=QUIET)
    # the 0.1 Python form, an options object where the name goes, says what to write instead
    with pytest.raises(ValueError, match="strategy is chosen by name .* TrainConfig\\(strategy='adc', adc=...\\)"):
        TrainConfig(strategy=ADCStrategy()).options("strategy")


class PenalisedADC(ADCStrategy):
    """ADC plus a loss term (as MCMC adds its opacity regulariser)."""

    def losses(self, params, state, step, info):
        return {"opacity": 10.0 * torch.sigmoid(params["opacities"]).mean()}


class AttachedAdam(AdamOptimizer):
    attached = []

    def attach(self, trainer):
        AttachedAdam.attached.append((trainer.model, len(trainer.train_views)))


def test_strategies_add_loss_terms_and_optimizers_see_the_trainer(blender_dir, tmp_path):
    STRATEGIES.register("penalised", PenalisedADC)
    OPTIMIZERS.register("attached", AttachedAdam)
    try:
        runs = {}
        for name, kw in (("plain", {}), ("penalised", dict(strategy="penalised", optimizer="attached"))):
            t = Trainer(small_train_config(blender_dir, tmp_path / name, iterations=30, export=[], **kw), log=QUIET)
            t.train()
            runs[name] = torch.sigmoid(t.model.params["opacities"]).mean().item()
        assert runs["penalised"] < 0.8 * runs["plain"], runs  # the term reached the gradient
        assert AttachedAdam.attached == [(t.model, len(t.train_views))]
    finally:
        STRATEGIES.unregister("penalised")
        OPTIMIZERS.unregister("attached")


# ----------------------------------------------------------------------------- callbacks


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def on_train_start(self, trainer):
        self.calls.append(("start", trainer.start_step))

    def on_step(self, trainer, step, stats):
        assert set(stats) == {"loss", "psnr", "events"}
        self.calls.append(("step", step))

    def on_eval(self, trainer, step, metrics):
        self.calls.append(("eval", step, round(metrics["psnr"], 6)))

    def on_checkpoint(self, trainer, step, path):
        assert path.exists()
        self.calls.append(("checkpoint", step))

    def on_pause_point(self, trainer, step, should_stop):
        assert should_stop() is False
        self.calls.append(("pause", step))

    def on_train_end(self, trainer, metrics):
        self.calls.append(("end", metrics["num_gaussians"]))

    def close(self, trainer, completed):
        self.calls.append(("close", completed))


def test_callbacks_see_every_event_in_order_and_change_nothing(blender_dir, tmp_path):
    rec = Recorder()
    cfg = small_train_config(blender_dir, tmp_path / "cb", iterations=6, eval_every=3, save_every=4, export=[])
    t = Trainer(cfg, log=QUIET, callbacks=[rec])
    m = t.train()
    t.close()
    t.close()  # once only
    evals = {h["step"]: round(h["psnr"], 6) for h in m["history"]}
    want = [("start", 0)]
    for s in range(1, 7):
        want.append(("step", s))
        if s == 3:
            want.append(("eval", 3, evals[3]))
        if s == 4:
            want.append(("checkpoint", 4))
        want.append(("pause", s))
    want += [("checkpoint", 6), ("end", m["num_gaussians"]), ("close", True)]
    assert rec.calls == want
    # the same run without the callback ends with the same model
    plain = Trainer(small_train_config(blender_dir, tmp_path / "plain", iterations=6, eval_every=3, save_every=4,
                                       export=[]), log=QUIET)
    plain.train()
    for k, v in plain.model.params.items():
        assert torch.equal(v, t.model.params[k]), k


def test_callbacks_are_closed_as_failed_when_training_fails(blender_dir, tmp_path, monkeypatch):
    rec = Recorder()
    t = Trainer(small_train_config(blender_dir, tmp_path / "fail", iterations=5, export=[]), log=QUIET, callbacks=[rec])

    def boom(step):
        raise RuntimeError("boom")

    monkeypatch.setattr(t, "train_step", boom)
    with pytest.raises(RuntimeError, match="boom"):
        t.train()
    assert rec.calls == [("start", 0), ("close", False)]


def test_a_missing_plugin_is_a_clear_error():
    from splat.train.callbacks import load_callback

    with pytest.raises(ValueError, match="no 'nope' plugin is installed .*splat.train_callbacks has viewer"):
        load_callback("nope", TrainConfig())


# ----------------------------------------------------------------------------- option names and saved configs

# every flag of splat-train 0.1 (its --help), with a value and where it lands today
LEGACY_FLAGS = [
    (["--sh-degree", "2"], "static.sh_degree", 2),
    (["--sh-degree-interval", "7"], "static.sh_degree_interval", 7),
    (["--init-opacity", "0.2"], "static.init_opacity", 0.2),
    (["--init-scale", "0.5"], "static.init_scale", 0.5),
    (["--lr-means", "1e-3"], "static.lr_means", 1e-3),
    (["--lr-means-final", "1e-5"], "static.lr_means_final", 1e-5),
    (["--lr-scales", "0.1"], "static.lr_scales", 0.1),
    (["--lr-quats", "0.2"], "static.lr_quats", 0.2),
    (["--lr-opacities", "0.3"], "static.lr_opacities", 0.3),
    (["--lr-sh0", "0.4"], "static.lr_sh0", 0.4),
    (["--lr-shN", "0.5"], "static.lr_shN", 0.5),
    (["--strategy.absgrad"], "adc.absgrad", True),
    (["--strategy.no-absgrad"], "adc.absgrad", False),
    (["--strategy.grow-grad2d", "0.001"], "adc.grow_grad2d", 0.001),
    (["--strategy.grow-scale3d", "0.02"], "adc.grow_scale3d", 0.02),
    (["--strategy.max-gaussians", "99"], "adc.max_gaussians", 99),
    (["--strategy.revised-opacity"], "adc.revised_opacity", True),
    (["--strategy.no-revised-opacity"], "adc.revised_opacity", False),
    (["--strategy.prune-opa", "0.01"], "adc.prune_opa", 0.01),
    (["--strategy.prune-scale3d", "0.3"], "adc.prune_scale3d", 0.3),
    (["--strategy.refine-every", "50"], "adc.refine_every", 50),
    (["--strategy.refine-start-iter", "10"], "adc.refine_start_iter", 10),
    (["--strategy.refine-stop-iter", "20"], "adc.refine_stop_iter", 20),
    (["--strategy.reset-every", "30"], "adc.reset_every", 30),
    (["--backend", "torch"], "backend", "torch"),
    (["--background", "0", "0.5", "1"], "background", (0.0, 0.5, 1.0)),
    (["--data", "d"], "data", "d"),
    (["--data-format", "colmap"], "data_format", "colmap"),
    (["--device", "cuda"], "device", "cuda"),
    (["--downscale", "4"], "downscale", 4),
    (["--eval-every", "5"], "eval_every", 5),
    (["--export", "ply", "spz"], "export", ["ply", "spz"]),
    (["--iterations", "12"], "iterations", 12),
    (["--keep-checkpoints", "3"], "keep_checkpoints", 3),
    (["--max-init-points", "100"], "max_init_points", 100),
    (["--no-normalize"], "normalize", False),
    (["--normalize"], "normalize", True),
    (["--num-random-points", "7"], "num_random_points", 7),
    (["--out", "o"], "out", "o"),
    (["--no-progress"], "progress", False),
    (["--progress"], "progress", True),
    (["--resume"], "resume", True),
    (["--no-resume"], "resume", False),
    (["--rasterize-mode", "antialiased"], "rasterize_mode", "antialiased"),
    (["--save-every", "9"], "save_every", 9),
    (["--save-renders", "2"], "save_renders", 2),
    (["--no-scale-schedule"], "scale_schedule", False),
    (["--scale-schedule"], "scale_schedule", True),
    (["--seed", "3"], "seed", 3),
    (["--ssim-lambda", "0.4"], "ssim_lambda", 0.4),
    (["--test-every", "4"], "test_every", 4),
    (["--viewer"], "viewer", True),
    (["--no-viewer"], "viewer", False),
    (["--viewer-host", "0.0.0.0"], "viewer_host", "0.0.0.0"),
    (["--viewer-port", "9"], "viewer_port", 9),
    (["--viewer-wait"], "viewer_wait", True),
    (["--no-viewer-wait"], "viewer_wait", False),
]


def _field(cfg, path):
    for part in path.split("."):
        cfg = getattr(cfg, part)
    return str(cfg) if path in ("data", "out") else cfg


@pytest.mark.parametrize("argv, path, value", LEGACY_FLAGS, ids=[a[0][0] for a in LEGACY_FLAGS])
def test_every_flag_of_0_1_still_works(argv, path, value):
    import tyro

    cfg = tyro.cli(TrainConfig, args=argv)
    assert _field(cfg, path) == value
    new = "--" + path.replace("_", "-") if "." in path else None
    if new is not None and not argv[0].startswith("--strategy.no-"):  # the new name lands in the same place
        assert _field(tyro.cli(TrainConfig, args=[new] + argv[1:]), path) == value


def test_pieces_are_chosen_by_name():
    import tyro

    cfg = tyro.cli(TrainConfig, args=["--model", "static", "--strategy", "adc", "--optimizer", "adam",
                                      "--adam.eps", "1e-8", "--adc.grow-grad2d", "0.3", "--static.sh-degree", "1"])
    assert (cfg.model, cfg.strategy, cfg.optimizer) == ("static", "adc", "adam")
    assert cfg.options("optimizer").eps == 1e-8 and cfg.options("strategy").grow_grad2d == 0.3
    assert cfg.options("model").sh_degree == 1
    with pytest.raises(SystemExit):
        tyro.cli(TrainConfig, args=["--model", "nope"])


def test_saved_configs_round_trip_and_0_1_layout_loads():
    cfg = TrainConfig(data=Path("d"), iterations=5, background=(0.0, 0.5, 1.0), static=StaticConfig(sh_degree=2),
                      adc=ADCStrategy(grow_grad2d=0.3), export=["spz"])
    assert config_from_json(json.loads(json.dumps(config_to_json(cfg)))) == cfg
    old = {"data": None, "out": "runs/x", "iterations": 7, "sh_degree": 1, "lr_means": 1e-3, "ssim_lambda": 0.3,
           "background": [0, 0, 0], "strategy": {"grow_grad2d": 0.5, "absgrad": True}}
    got = config_from_json(old)
    assert got.strategy == "adc" and got.adc.grow_grad2d == 0.5 and got.adc.absgrad
    assert got.static.sh_degree == 1 and got.static.lr_means == 1e-3 and got.ssim_lambda == 0.3
    assert got.background == (0, 0, 0) and got.iterations == 7
    with pytest.raises(ValueError, match="unknown fields \\['bogus'\\]"):
        config_from_json({"bogus": 1})
    with pytest.raises(ValueError, match="static has unknown fields \\['nope'\\]"):
        config_from_json({"static": {"nope": 1}})


def _to_0_1_layout(ck: dict) -> dict:
    """A checkpoint as splat 0.1 wrote it: version 1, 'optimizers', no model kind, the
    strategy's options under 'strategy' and the model's at the top of the config."""
    cfg = dict(ck["config"])
    cfg.update(cfg.pop("static"))
    cfg["strategy"] = cfg.pop("adc")
    for k in ("model", "optimizer", "adam"):
        cfg.pop(k)
    old = {k: v for k, v in ck.items() if k not in ("model", "optimizer")}
    old.update(version=1, optimizers=ck["optimizer"], config=cfg)
    return old


def test_checkpoints_of_splat_0_1_resume(blender_dir, tmp_path, monkeypatch):
    cfg = small_train_config(blender_dir, tmp_path / "a", export=[])
    train(cfg, log=QUIET)
    ref = torch.load(tmp_path / "a" / "ckpts" / "ckpt_120.pt", weights_only=True)["splats"]
    b = tmp_path / "b"
    orig = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, s: (_ for _ in ()).throw(KeyboardInterrupt) if s == 50
                        else orig(self, s))
    with pytest.raises(KeyboardInterrupt):
        train(small_train_config(blender_dir, b, export=[]), log=QUIET)
    monkeypatch.setattr(Trainer, "train_step", orig)
    path = b / "ckpts" / "ckpt_50.pt"
    torch.save(_to_0_1_layout(torch.load(path, weights_only=True)), path)
    for other in (b / "ckpts").glob("ckpt_*.pt"):
        if other != path:
            other.unlink()
    train(TrainConfig(out=b, resume=True, progress=False), log=QUIET)
    got = torch.load(b / "ckpts" / "ckpt_120.pt", weights_only=True)
    assert got["version"] == 2 and got["model"] == "static"
    for k in ref:
        assert torch.equal(got["splats"][k], ref[k]), k
    # a checkpoint that lacks what a resume needs is refused by name
    broken = tmp_path / "broken" / "ckpts"
    broken.mkdir(parents=True)
    ck = torch.load(b / "ckpts" / "ckpt_120.pt", weights_only=True)
    del ck["config"]
    torch.save(ck, broken / "ckpt_5.pt")
    with pytest.raises(ValueError, match="ckpt_5.pt: a splat training checkpoint without config"):
        Trainer(TrainConfig(out=broken.parent, resume=True), log=QUIET)
    # and splat-render opens the resumed run as before
    from splat.train.run import load_model

    model, run_cfg = load_model(b)
    assert isinstance(model, StaticModel) and run_cfg["static"]["sh_degree"] == 1
    assert splat.io.load(b / "ckpts" / "ckpt_120.pt")["means"].shape == ref["means"].shape


def test_splat_trainer_is_still_a_program():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "splat.trainer", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--model" in r.stdout and "--strategy.grow-grad2d" in r.stdout, r.stderr


def test_help_reflows_option_descriptions():
    """An option's description wrapped in the source reads as one paragraph in --help."""
    from tyro import _docstrings

    from splat.cli_help import reflow_help

    reflow_help()
    text = _docstrings.get_field_docstring(TrainConfig, "data", ())
    assert text == ("Dataset folder (format detected); omit to train the embedded default scene (the dynamic one "
                    "for dynamic models).")
    assert "\n" not in _docstrings.get_field_docstring(TrainConfig, "batch_size", ()).split("(losses")[0]
