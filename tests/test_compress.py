"""Compression around the formats: the self-organising grid's training loss (--compress sog), the
model-level quantisers and splat-export's compression options."""
import json
import zipfile

import numpy as np
import pytest
import torch

import splat.io as sio
from splat.compress.grid_loss import GridConfig, GridSmoothness
from splat.compress.plas import grid_features, grid_order, neighbour_distance
from splat.compress.quantize import quantize_sh, reduce_sh_degree
from splat.data import load_dataset
from splat.export_cli import main as export_main
from splat.io.codebooks import codebook_1d, default_palette_size, sh_palette
from splat.io.sog import image_shape
from splat.train import TrainConfig, Trainer
from splat.strategies.adc import ADCStrategy
from synthetic_data import interrupt_at, make_views, write_blender

QUIET = lambda *a: None  # noqa: E731


def make_splats(n=300, degree=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(means=torch.randn(n, 3, generator=g), scales=torch.randn(n, 3, generator=g) * 0.3 - 3,
                quats=torch.randn(n, 4, generator=g), opacities=torch.randn(n, generator=g),
                sh0=torch.randn(n, 1, 3, generator=g), shN=torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g) * 0.2)


# ------------------------------------------------------------------ codebooks and quantisers
def test_codebook_1d_is_the_nearest_entry_and_exact_for_few_values():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(0, 1, 5000), rng.normal(6, 0.1, 50)])  # a sparse far cluster
    book, labels = codebook_1d(v, 256)
    assert book.shape == (256,) and np.all(np.diff(book) >= 0)
    dist = np.abs(v[:, None] - book[None].astype(np.float64))
    np.testing.assert_array_equal(np.abs(v - book[labels]), dist.min(1))  # the nearest entry
    assert np.abs(v - book[labels])[-50:].max() < 0.05  # sqrt-count weights: the sparse cluster is resolved
    few = np.array([[0.5, -1.0], [0.5, 2.0]])
    book, labels = codebook_1d(few, 256)
    np.testing.assert_array_equal(book[labels], few.astype(np.float32))
    with pytest.raises(ValueError, match="finite"):
        codebook_1d(np.array([0.0, np.nan]))


def test_sh_palette_and_quantize_sh():
    s = make_splats(400, 2)
    cen, lab = sh_palette(s["shN"].numpy(), 32)
    assert cen.shape[1:] == (8, 3) and len(cen) <= 32 and lab.max() < len(cen)
    # k-means: each vector's entry is its nearest one
    d = ((s["shN"].numpy().reshape(400, 1, -1) - cen.reshape(1, len(cen), -1)) ** 2).sum(-1)
    assert (d[np.arange(400), lab] <= d.min(1) + 1e-5).all()
    q = quantize_sh(s, 32)
    assert len(np.unique(q["shN"].reshape(400, -1).numpy(), axis=0)) <= 32
    assert torch.equal(q["means"], s["means"])
    assert torch.equal(quantize_sh(make_splats(10, 0))["shN"], make_splats(10, 0)["shN"])
    assert default_palette_size(36_795) == 1024 and default_palette_size(23_822) == 512 and \
        default_palette_size(100) == 256 and default_palette_size(2_000_000) == 32768 and default_palette_size(10**8) == 65536
    with pytest.raises(ValueError, match="1..65536"):
        sh_palette(s["shN"].numpy(), 0)


def test_reduce_sh_degree_keeps_the_lower_bands():
    s = make_splats(20, 3)
    r = reduce_sh_degree(s, 1)
    assert r["shN"].shape == (20, 3, 3) and torch.equal(r["shN"], s["shN"][:, :3])
    assert reduce_sh_degree(s, 3)["shN"] is s["shN"]
    with pytest.raises(ValueError, match="0..3"):
        reduce_sh_degree(s, 4)


# ------------------------------------------------------------------ the grid and its loss
def test_grid_order_beats_morton_on_the_features_it_sorts():
    from splat.io.compressed_ply import morton_order

    s = make_splats(2000, 0)
    s["sh0"] = s["means"][:, None, :] * 0.5 + 0.1 * torch.randn(2000, 1, 3)  # colour follows position
    f, shape = grid_features(s), image_shape(2000)
    plas = neighbour_distance(f, grid_order(s), shape)
    morton = neighbour_distance(f, torch.from_numpy(morton_order(s["means"].numpy())), shape)
    assert plas < 0.8 * morton


def test_grid_loss_is_lower_on_a_sorted_grid_and_differentiable():
    s = make_splats(900, 1)
    s["sh0"] = s["means"][:, None] + 0.1 * torch.randn(900, 1, 3)  # attributes that vary smoothly in space
    s["scales"] = s["means"].flip(1) * 0.3 - 3
    s = {k: v.clone().requires_grad_(True) for k, v in s.items()}
    g = GridSmoothness(GridConfig(smoothness=1.0, start=0.0), iterations=100)
    assert GridSmoothness(GridConfig(start=0.5), 100).loss(s, 10) is None  # before the start
    g.order = torch.randperm(900, generator=torch.Generator().manual_seed(0))
    g.sorted_at = 0
    random_loss = g.loss(s, 1)
    g.sorted_at = -10**9  # force a sort
    sorted_loss = g.loss(s, 2)
    assert g.sorts == 1 and sorted_loss < 0.8 * random_loss
    sorted_loss.backward()
    for k in ("scales", "quats", "opacities", "sh0"):
        assert torch.isfinite(s[k].grad).all() and s[k].grad.abs().sum() > 0, k
    assert s["means"].grad is None or s["means"].grad.abs().sum() == 0  # positions only with --sog.positions
    g2 = GridSmoothness(GridConfig(smoothness=1.0, start=0.0, positions=True), iterations=100)
    g2.loss(s, 0).backward()
    assert s["means"].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="sort-every"):
        GridConfig(sort_every=0).check()


@pytest.fixture(scope="module")
def blender_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return write_blender(root, make_views(n_views=12, width=40, height=32, n_gauss=300), test_ids=(0, 6))


def _cfg(out, **kw):
    base = dict(out=out, iterations=60, scale_schedule=False, progress=False, save_every=20, save_renders=0,
                backend="cpu", compress="sog", sog=GridConfig(start=0.25, sort_every=15),
                adc=ADCStrategy(refine_start_iter=5, refine_stop_iter=30, refine_every=10, reset_every=0))
    base.update(kw)
    return TrainConfig(**base)


def test_compress_sog_training_writes_its_grid_and_resumes_bit_for_bit(blender_dir, tmp_path, monkeypatch):
    ds = load_dataset(blender_dir)
    t = Trainer(_cfg(tmp_path / "a"), log=QUIET, dataset=ds)
    t.train()
    assert t.grid.sorts >= 3
    sog = tmp_path / "a" / "model.sog"
    assert sog.is_file() and (tmp_path / "a" / "model.ply").is_file()
    # the file holds the model in the grid (re-sorted from the trained one for the final values) or in
    # Morton order, whichever made the smaller file
    from splat.io.compressed_ply import morton_order
    ply = sio.load(tmp_path / "a" / "model.ply")
    back = sio.load(sog)
    final = t.grid.sort(ply, 60, keep=False)
    morton = torch.from_numpy(morton_order(ply["means"].numpy()))
    assert min((back["means"] - ply["means"][o]).abs().max() for o in (final, morton)) < 1e-3
    lines = []  # splat-export of the run starts PLAS from the grid it trained in
    from splat.export_cli import ExportCommand, export
    export(ExportCommand(input=tmp_path / "a", output=tmp_path / "again.sog"), out=lines.append)
    assert any("trained grid" in line for line in lines) and sio.load(tmp_path / "again.sog")["means"].shape[0] == \
        ply["means"].shape[0]
    ref = torch.load(tmp_path / "a" / "ckpts" / "ckpt_60.pt", weights_only=True)
    assert torch.equal(ref["grid"]["order"], t.grid.order) and len(t.grid.order) == ply["means"].shape[0]
    # Ctrl-C at step 37: the grid sorted at 30, next at 45
    interrupt_at(monkeypatch, 37, lambda: Trainer(_cfg(tmp_path / "b"), log=QUIET, dataset=ds).train())
    Trainer(TrainConfig(out=tmp_path / "b", resume=True, progress=False), log=QUIET, dataset=ds).train()
    got = torch.load(tmp_path / "b" / "ckpts" / "ckpt_60.pt", weights_only=True)
    for k in ref["splats"]:
        assert torch.equal(got["splats"][k], ref["splats"][k]), k
    assert torch.equal(got["grid"]["order"], ref["grid"]["order"])
    assert got["grid"]["sorts"] == ref["grid"]["sorts"] >= 3


def test_compress_sog_refuses_other_models(blender_dir, tmp_path):
    with pytest.raises(ValueError, match="--compress sog"):
        Trainer(_cfg(tmp_path / "x", model="4dgs"), log=QUIET, dataset=load_dataset(blender_dir))


# ------------------------------------------------------------------ splat-export's options
def test_export_options(tmp_path, capsys):
    s = make_splats(500, 3)
    src = sio.save(tmp_path / "m.ply", s)
    assert export_main([str(src), str(tmp_path / "d1.spz"), "--sh-degree", "1"]) == 0
    assert sio.load(tmp_path / "d1.spz")["shN"].shape == (500, 3, 3)
    assert export_main([str(src), str(tmp_path / "p.ply"), "--sh-palette", "16"]) == 0
    assert len(np.unique(sio.load(tmp_path / "p.ply")["shN"].reshape(500, -1).numpy(), axis=0)) <= 16
    assert export_main([str(src), str(tmp_path / "m.sog"), "--sh-palette", "64", "--sog-order", "morton"]) == 0
    meta = json.loads(zipfile.ZipFile(tmp_path / "m.sog").read("meta.json"))
    assert meta["shN"]["count"] <= 64
    out = capsys.readouterr().out
    assert "bits per Gaussian" in out and "SH degree 3 -> 1" in out
    assert export_main([str(src), str(tmp_path / "b.ply"), "--budget", "0.25", "--budget-distill", "0"]) == 0
    assert sio.load(tmp_path / "b.ply")["means"].shape[0] == 125
    assert "views around the model" in capsys.readouterr().out
    for bad, msg in ((["--budget", "0"], "--budget must be"), (["--budget", "1.5"], "--budget must be"),
                     (["--sh-degree", "5"], "--sh-degree must be"), (["--sh-palette", "0"], "--sh-palette must be"),
                     (["--prune-below", "1e9"], "no Gaussian contributes")):
        assert export_main([str(src), str(tmp_path / "bad.spz"), *bad]) == 1
        assert msg in capsys.readouterr().err
        assert not (tmp_path / "bad.spz").exists()


def test_export_prune_below_drops_the_unseen(tmp_path):
    s = make_splats(300, 0)
    s["means"] = s["means"] * 0.3
    s["opacities"][:50] = -12.0  # practically invisible: they contribute nothing
    src = sio.save(tmp_path / "m.ply", s)
    assert export_main([str(src), str(tmp_path / "p.ply"), "--prune-below", "0.01"]) == 0
    n = sio.load(tmp_path / "p.ply")["means"].shape[0]
    assert n <= 250


def test_grid_loss_options_must_be_finite_and_one_gaussian_has_no_loss():
    """--sog.blur-sigma inf passed the check and crashed the run at the loss's start (OverflowError);
    a huge finite sigma must not build a kernel of billions of taps; one Gaussian gave a NaN loss."""
    for bad in (dict(blur_sigma=float("inf")), dict(huber_delta=float("inf")), dict(blur_sigma=float("nan"))):
        with pytest.raises(ValueError, match="finite number > 0"):
            GridConfig(**bad).check()
    s = {k: v.clone().requires_grad_(True) for k, v in make_splats(50, 1).items()}
    big = GridSmoothness(GridConfig(start=0.0, blur_sigma=1e12), 100).loss(s, 0)
    big.backward()
    assert torch.isfinite(big) and all(torch.isfinite(v.grad).all() for v in s.values() if v.grad is not None)
    one = {k: v[:1].clone().requires_grad_(True) for k, v in make_splats(1, 1).items()}
    assert GridSmoothness(GridConfig(start=0.0), 100).loss(one, 0) is None
    two = {k: v[:2].clone().requires_grad_(True) for k, v in make_splats(2, 1).items()}
    assert torch.isfinite(GridSmoothness(GridConfig(start=0.0), 100).loss(two, 0))
