"""Block-partitioned training (``splat-train --blocks K``): the partition's properties, the camera
assignment, the merge, a seam-free border on a toy scene, ``--block i`` then ``--blocks K``, a
two-process run with a stand-in `World`, and clear errors for bad options."""
import json
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from scene_utils import gaussians, look_at
from synthetic_data import render_views, small_train_config, write_blender

import splat
from splat.distributed.blocks import (BlockPartition, block_cameras, camera_visibility, ground_frame,
                                      merge_blocks, partition_points, point_loads)

QUIET = (lambda *a, **k: None)


# ----------------------------------------------------------------------------- partition


def _ground_partition(points, loads, K, margin=0.2):
    up, axes = np.array([0.0, 0.0, 1.0]), np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    return partition_points(points, loads, K, up, axes, margin)


@pytest.mark.parametrize("K", [2, 3, 4, 5, 7])
def test_partition_has_k_disjoint_covering_cells_with_balanced_load(K):
    """A cloud with a known density (uniform over 8 x 2 m plus a dense cluster holding half the
    points): K cells, every point of the plane (far outside the cloud too) in exactly one core
    cell, and each cell's load within 5% of the mean (a weighted-median cut of many points)."""
    rng = np.random.default_rng(K)
    n = 40_000
    uniform = np.c_[rng.uniform(-4, 4, n), rng.uniform(-1, 1, n), rng.uniform(0, 1, n)]
    cluster = np.c_[rng.normal(2.5, 0.2, n), rng.normal(0.3, 0.2, n), rng.uniform(0, 1, n)]
    pts = np.concatenate([uniform, cluster])
    loads = np.ones(len(pts))
    p = _ground_partition(pts, loads, K)
    assert p.num_blocks == K and len(p.loads) == K
    probe = np.c_[rng.uniform(-50, 50, (20_000, 2)), rng.uniform(-5, 5, 20_000)]
    probe = np.concatenate([probe, pts[:5000]])
    member = np.stack([np.all((p.ground(probe) >= p.lo[k]) & (p.ground(probe) < p.hi[k]), 1) for k in range(K)])
    assert (member.sum(0) == 1).all()  # disjoint and covering
    assert (p.block_of(probe) == member.argmax(0)).all()
    counts = np.bincount(p.block_of(pts), minlength=K)
    assert np.allclose(counts, p.loads)
    assert counts.max() / counts.mean() < 1.05 and counts.min() / counts.mean() > 0.95, counts
    # the dense cluster gets smaller cells: the cell holding its centre is narrower than the widest cell
    if K >= 3:
        k_c = int(p.block_of(np.array([[2.5, 0.3, 0.5]]))[0])
        width = lambda k: np.prod(np.minimum(p.hi[k], [4, 1]) - np.maximum(p.lo[k], [-4, -1]))  # noqa: E731
        assert width(k_c) < max(width(k) for k in range(K))
    # regions contain their cores and reach past their bounded sides by the margin
    for k in range(K):
        core = p.in_core(pts, k)
        assert p.in_region(pts, k)[core].all()
        lo, hi = p.region_bounds(k)
        assert np.all(lo <= p.lo[k]) and np.all(hi >= p.hi[k])
    q = BlockPartition.from_json(json.loads(p.dumps()))
    assert (q.block_of(probe) == p.block_of(probe)).all()


def test_partition_follows_loads_and_refuses_bad_input():
    """Loads, not point counts, are balanced: points seen by more cameras weigh more; too few
    points or blocks < 1 raise ValueError."""
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(0, 10, 20_000), rng.uniform(0, 1, 20_000), np.zeros(20_000)]
    loads = np.where(pts[:, 0] < 2.0, 9.0, 1.0)  # the first fifth is seen 9x as often: 9/(9+4) of the load
    p = _ground_partition(pts, loads, 2)
    cut = p.hi[p.block_of(np.array([[0.0, 0.5, 0.0]]))[0]][0]
    assert 1.1 < cut < 1.7, cut  # the load's median: 1.44, not the count's 5.0
    with pytest.raises(ValueError, match="at least 1"):
        _ground_partition(pts, loads, 0)
    with pytest.raises(ValueError, match="3 points into 4 blocks"):
        _ground_partition(pts[:3], loads[:3], 4)
    with pytest.raises(ValueError, match="loads"):
        _ground_partition(pts, loads[:10], 2)


# ----------------------------------------------------------------------------- a wide toy scene


def _toy_views(n_views=18, width=48, height=40, n_gauss=500, seed=0):
    """Gaussians over a 4 x 1 ground strip (x across, y down = OpenCV's up is -y) seen by cameras 1.4
    above it, each looking down at a patch about 1.6 wide: a scene no single camera sees whole."""
    means, quats, scales, opac, sh = gaussians(n_gauss, seed=seed, sh_degree=1, extent=1.0, scale=(0.04, 0.14))
    means = means * torch.tensor([2.0, 0.1, 0.5])
    opac = opac * 0.4 + 0.55
    f = 0.5 * width / math.tan(math.radians(60) / 2)
    viewmats, Ks = [], []
    for i in range(n_views):
        x = -2.0 + 4.0 * i / (n_views - 1)
        a = 2.4 * i
        eye = (x, -1.4, 0.3 * math.sin(a))
        target = (x + 0.5 * math.cos(a), 0.0, 0.5 * math.sin(a))
        viewmats.append(look_at(eye, target).float())
        Ks.append(torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]))
    return render_views((means, quats, scales, opac, sh), torch.stack(viewmats), torch.stack(Ks), width, height,
                        backend="cpu")


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return write_blender(tmp_path_factory.mktemp("blocks_toy"), _toy_views(), test_ids=(1, 5, 8, 12, 16))


def _cfg(data, out, **kw):
    base = dict(iterations=150, save_every=0, save_renders=-1)
    base.update(kw)
    return small_train_config(data, out, **base)


def test_ground_frame_and_camera_assignment(toy_dir):
    """Up is the cameras' up (-y here); a block's cameras see it (each chosen camera sees a good share
    of the block's points), the left and right blocks get mostly different cameras, and the floor on
    the count holds."""
    from splat.data import load_dataset

    d = load_dataset(toy_dir)
    up, axes = ground_frame(d.train.viewmats)
    assert up @ np.array([0.0, -1.0, 0.0]) > 0.95
    assert np.allclose(axes @ up, 0, atol=1e-9) and np.allclose(axes @ axes.T, np.eye(2), atol=1e-9)
    tr = d.train
    vis = camera_visibility(d.points, tr.viewmats, tr.Ks, tr.widths, tr.heights)
    p = partition_points(d.points, point_loads(d.points, vis), 2, up, axes)
    centres = np.stack([np.linalg.inv(v)[:3, 3] for v in tr.viewmats])
    chosen = [block_cameras(p, k, d.points, vis, centres, min_views=3) for k in range(2)]
    for k, ids in enumerate(chosen):
        region = p.in_region(d.points, k)
        assert len(ids) >= 3
        share = vis[ids][:, region].sum(1) / np.maximum(vis[ids].sum(1), 1)
        assert share.min() > 0.25, share
        assert len(ids) < len(tr)  # not every camera: the far ones see none of it
    assert len(set(chosen[0]) & set(chosen[1])) < 0.5 * min(len(chosen[0]), len(chosen[1])) + 2
    assert len(block_cameras(p, 0, d.points, vis, None, min_ratio=2.0, min_image_ratio=2.0, min_views=5)) == 5


# ----------------------------------------------------------------------------- merge


def _splats(N, seed, extent=3.0):
    g = torch.Generator().manual_seed(seed)
    return {"means": (torch.rand(N, 3, generator=g) * 2 - 1) * extent, "quats": torch.randn(N, 4, generator=g),
            "scales": torch.rand(N, 3, generator=g) - 3, "opacities": torch.randn(N, generator=g),
            "sh0": torch.randn(N, 1, 3, generator=g), "shN": torch.randn(N, 3, 3, generator=g)}


def test_merge_keeps_each_gaussian_once_in_its_core_cell():
    rng = np.random.default_rng(1)
    p = _ground_partition(rng.uniform(-3, 3, (5000, 3)), np.ones(5000), 3)
    blocks = [_splats(4000, s) for s in range(3)]
    merged, kept = merge_blocks(p, blocks)
    assert len(merged["means"]) == sum(kept)
    owner = np.concatenate([np.full(n, k) for k, n in enumerate(kept)])
    assert (p.block_of(merged["means"]) == owner).all()  # every kept Gaussian lies in its block's core cell
    for name in blocks[0]:
        assert merged[name].shape[1:] == blocks[0][name].shape[1:]
    # the same Gaussians in every block (a duplicate at each border, were the blocks' regions kept):
    # the merge holds each exactly once
    same = _splats(3000, 7)
    merged, kept = merge_blocks(p, [same, same, same])
    assert sum(kept) == 3000
    a = merged["means"][torch.argsort(merged["means"][:, 0])]
    b = same["means"][torch.argsort(same["means"][:, 0])]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="2 block models for a partition into 3"):
        merge_blocks(p, blocks[:2])
    bad = dict(blocks[2], shN=torch.zeros(4000, 8, 3))
    with pytest.raises(ValueError, match="SH shape"):
        merge_blocks(p, [blocks[0], blocks[1], bad])


# ----------------------------------------------------------------------------- training


def _label_render(model, cams, partition):
    """Per pixel, the share of the render's colour that comes from block 0's core cell ([H,W])."""
    from splat.render import rasterize

    s = model.to_splats()
    lab = torch.from_numpy(partition.block_of(s["means"]) == 0).float()
    colors = torch.stack([lab, 1 - lab, torch.zeros_like(lab)], -1)
    img, alpha, _ = rasterize(s["means"], s["quats"], torch.exp(s["scales"]), torch.sigmoid(s["opacities"]), colors,
                              cams.viewmats, cams.Ks, cams.width, cams.height, backend="cpu")
    return img[0, ..., 0] / alpha[0, ..., 0].clamp_min(1e-6), alpha[0, ..., 0]


def test_block_then_blocks_merges_without_seams(toy_dir, tmp_path):
    """``--blocks 2 --block 1`` trains only block 1 (and the coarse model and partition); a later
    ``--blocks 2`` trains block 0, leaves block 1 as it was and merges. The merged run opens as one
    model (load_model, model.ply, metrics.json), comes close to one model trained with the same
    steps per block, and the pixels at the block border (where both blocks' Gaussians blend) are
    no worse than that model's there, while the merge with a gap cut at the border is clearly worse."""
    from splat.train.blocks import train_blocks
    from splat.train.cli import train
    from splat.train.run import load_model
    from splat.data import load_dataset
    from splat.render import RenderSettings

    out = tmp_path / "blocks"
    m1 = train_blocks(_cfg(toy_dir, out, blocks=2, block=1), log=QUIET)
    assert m1["block"]["index"] == 1
    assert (out / "blocks" / "1" / "metrics.json").is_file() and not (out / "blocks" / "0").exists()
    assert not (out / "metrics.json").exists()
    ck1 = sorted((out / "blocks" / "1" / "ckpts").glob("*.pt"))
    stamp = [p.stat().st_mtime_ns for p in ck1]
    logs = []
    m = train(_cfg(toy_dir, out, blocks=2), log=logs.append)  # through the CLI's entry point
    assert [p.stat().st_mtime_ns for p in sorted((out / "blocks" / "1" / "ckpts").glob("*.pt"))] == stamp
    assert not any("[block 1]" in line for line in logs)  # block 1 was done: not trained again
    assert any("[block 0]" in line for line in logs)
    assert m["blocks"] == 2 and len(m["per_block"]) == 2
    assert m["num_gaussians"] == sum(b["kept_gaussians"] for b in m["per_block"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["psnr"] == pytest.approx(m["psnr"])
    model, run_cfg = load_model(out)
    assert model.num_gaussians == m["num_gaussians"] and run_cfg["blocks"] == 2
    assert splat.io.load(out / "model.ply")["means"].shape[0] == m["num_gaussians"]
    assert (out / "renders" / "test_000.png").is_file()

    single = train(_cfg(toy_dir, tmp_path / "single"), log=QUIET)
    assert m["psnr"] > single["psnr"] - 1.5, (m["psnr"], single["psnr"])

    single_model, _ = load_model(tmp_path / "single")
    partition = BlockPartition.from_json(json.loads((out / "blocks" / "partition.json").read_text()))
    d = load_dataset(toy_dir)
    settings = RenderSettings("cpu").for_scene(model.scene_scale)
    bg = torch.ones(1, 3)
    cut = model.to_splats()
    g = partition.ground(cut["means"])
    k0 = partition.block_of(cut["means"]) == 0
    axis = int(np.argmax(np.isfinite(partition.hi[0])))
    edge = partition.hi[0][axis] if np.isfinite(partition.hi[0][axis]) else partition.lo[0][axis]
    gap = torch.from_numpy(np.abs(g[:, axis] - edge) > 0.08)
    gapped = type(model).from_state(model.config, {k: v[gap] for k, v in cut.items()}, model.scene_scale)
    err = {"merged": [], "single": [], "gapped": []}
    n_border = 0
    for i in range(len(d.test)):
        cams = d.test.cameras(i)
        share, alpha = _label_render(model, cams, partition)
        border = (share > 0.15) & (share < 0.85) & (alpha > 0.5)
        n_border += int(border.sum())
        if not border.any():
            continue
        gt = torch.from_numpy(d.test.images[i]).float() / 255
        for name, mdl in (("merged", model), ("single", single_model), ("gapped", gapped)):
            with torch.no_grad():
                img = mdl.render(cams, settings, backgrounds=bg).colors[0].clamp(0, 1)
            err[name].append(((img - gt).abs().mean(-1))[border])
    assert n_border > 20, n_border
    e = {k: float(torch.cat(v).mean()) for k, v in err.items()}
    print("border errors", e, n_border)
    assert e["merged"] < 1.35 * e["single"] + 0.01, e
    assert e["gapped"] > 1.5 * e["merged"], e  # the check sees a seam where there is one
    assert k0.any() and (~k0).any()


class _ThreadWorld:
    """A stand-in `World` for ranks run as threads: barrier, broadcast_object, gather_objects."""

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.distributed = rank, size, True
        self.shared = shared

    def barrier(self, what=""):
        self.shared["barrier"].wait(timeout=120)

    def broadcast_object(self, obj=None, src=0, what=""):
        if self.rank == src:
            self.shared["obj"] = obj
        self.barrier()
        return self.shared["obj"]

    def gather_objects(self, obj, what=""):
        raise NotImplementedError


def test_two_ranks_share_the_blocks(toy_dir, tmp_path):
    """Two ranks (threads with a stand-in World): rank 0 makes the coarse model and the partition,
    rank r trains blocks i with i % 2 == r (3 blocks: rank 0 trains 0 and 2, rank 1 trains 1), rank 0
    merges and both get the merged metrics."""
    from splat.train.blocks import train_blocks

    shared = {"barrier": threading.Barrier(2)}
    results, logs, errors = {}, {0: [], 1: []}, []

    def run(rank):
        try:
            results[rank] = train_blocks(_cfg(toy_dir, tmp_path / "run", blocks=3, iterations=60),
                                         log=logs[rank].append, world=_ThreadWorld(rank, 2, shared))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            shared["barrier"].abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    trained = {r: sorted({int(line.split("]")[0].split()[-1]) for line in logs[r] if line.startswith("[block ")})
               for r in (0, 1)}
    assert trained == {0: [0, 2], 1: [1]}
    assert not any(line.startswith("[coarse]") for line in logs[1])
    assert results[1]["blocks_trained"] == [1] and results[0]["blocks"] == 3 and results[0]["psnr"] > 10


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not found")
def test_torchrun_shares_the_blocks(toy_dir, tmp_path):
    """A real launch: `torchrun --nproc-per-node=2 -m splat.train --blocks 3` trains blocks 0 and 2 on
    rank 0 and block 1 on rank 1, rank 0 merges, the run opens like any other."""
    import subprocess

    from splat.train.run import load_model

    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    r = subprocess.run([shutil.which("torchrun"), "--standalone", "--nproc-per-node=2", "-m", "splat.train",
                        "--data", str(toy_dir), "--out", str(out), "--blocks", "3", "--iterations", "40",
                        "--no-progress", "--no-scale-schedule", "--static.sh-degree", "1", "--save-renders", "0"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "merged 3 blocks" in r.stdout and r.stdout.count("merged 3 blocks") == 1
    m = json.loads((out / "metrics.json").read_text())
    assert m["blocks"] == 3 and len(m["per_block"]) == 3
    model, _ = load_model(out)
    assert model.num_gaussians == m["num_gaussians"] > 0


@pytest.mark.parametrize("kw, match", [
    (dict(blocks=1), "--blocks must be at least 2"),
    (dict(blocks=-3), "--blocks must be at least 2"),
    (dict(blocks=2, block=2), r"--block must be in 0\.\.1"),
    (dict(blocks=3, block=-1), r"--block must be in 0\.\.2"),
    (dict(blocks=2, model="4dgs"), "--model 4dgs"),
    (dict(blocks=2, resume=True), "--resume"),
    (dict(blocks=2, iterations=0), "--iterations"),
])
def test_bad_options_are_refused_naming_the_option(tmp_path, kw, match):
    from splat.train.cli import train

    with pytest.raises(ValueError, match=match):
        train(_cfg(tmp_path / "nodata", tmp_path / "out", **kw), log=QUIET)
    assert not (tmp_path / "out").exists()


def test_cli_error_exit(tmp_path, capsys):
    from splat.train.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--blocks", "1", "--no-progress"])
    assert e.value.code == 2
    assert "--blocks must be at least 2" in capsys.readouterr().err


def test_stale_partition_with_other_k_is_refused(toy_dir, tmp_path, monkeypatch):
    import splat.train.blocks as tb

    (tmp_path / "o" / "blocks" / "coarse").mkdir(parents=True)
    rng = np.random.default_rng(0)
    p = _ground_partition(rng.uniform(-1, 1, (100, 3)), np.ones(100), 3)
    (tmp_path / "o" / "blocks" / "partition.json").write_text(p.dumps())
    monkeypatch.setattr(tb, "train_coarse", lambda *a, **k: {})  # only the partition is read
    with pytest.raises(ValueError, match="3 blocks, not --blocks 2"):
        tb.train_blocks(_cfg(toy_dir, tmp_path / "o", blocks=2), log=QUIET)


def test_block_model_never_densifies_auxiliary_gaussians():
    """A block's auxiliary Gaussians (BlockGaussian) and frozen context (CityGaussian) render with its
    own, but density control counts only its own (their radii are zeroed in the render's info), and
    neither reaches ``to_splats`` (what the merge and exports see)."""
    from splat.cameras import Cameras
    from splat.models.static import StaticConfig
    from splat.strategies.adc import accumulate_grad2d
    from splat.train.blocks import BlockModel

    s = _splats(300, 3, extent=0.6)
    s["scales"] = s["scales"] - 0.5
    s["shN"] = s["shN"][:, :0]
    aux = torch.zeros(300)
    aux[150:] = 1
    ctx = {k: v[:100].clone() for k, v in _splats(100, 4, extent=0.6).items()}
    ctx["shN"] = ctx["shN"][:, :0]
    model = BlockModel(StaticConfig(sh_degree=0), dict(s, aux=aux), 1.0, context=ctx)
    V = look_at((0.0, -0.5, -3.0)).float()[None]
    K = torch.tensor([[[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]]])
    cams = Cameras(viewmats=V, Ks=K, width=64, height=48)
    out = model.render(cams, absgrad=False)
    assert out.info["radii"].shape[1] == 400  # own + auxiliary + context all rendered
    out.info["means2d"].retain_grad()
    out.colors.sum().backward()
    state = {"grad2d": None, "count": None}
    accumulate_grad2d(model.params, state, out.info)
    assert state["count"][:150].sum() > 50 and state["count"][150:].sum() == 0
    assert model.params["opacities"].grad[150:].abs().sum() > 0  # auxiliary ones are optimised
    assert len(model.to_splats()["means"]) == 150 and torch.equal(model.to_splats()["means"], s["means"][:150])


def test_region_masks_cover_the_region_and_the_background():
    """The optional masked loss (``MASK_LOSS``): a view's mask holds the pixels where the region's
    Gaussians show and the background, not those where other blocks' Gaussians show."""
    from splat.data import Split
    from splat.train.blocks import region_masks

    s = _splats(400, 5, extent=1.0)
    s["means"] = s["means"] * torch.tensor([0.25, 0.25, 0.05]) + torch.tensor([0.0, 0.0, 0.0])
    s["means"][:200, 0] -= 0.6  # left cluster: the region
    s["means"][200:, 0] += 0.6
    s["scales"] = torch.full((400, 3), math.log(0.05))
    s["opacities"] = torch.full((400,), 3.0)
    region = torch.arange(400) < 200
    V = look_at((0.0, 0.0, -3.0)).float().numpy()[None]
    K = np.array([[[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]]], np.float32)
    split = Split(names=["v"], images=[np.zeros((48, 64, 3), np.uint8)], viewmats=V, Ks=K, widths=[64], heights=[48])
    m = region_masks(s, region, split, backend="cpu")[0]
    assert m.shape == (48, 64)
    def pixel(p):
        x = V[0, :3, :3] @ np.asarray(p) + V[0, :3, 3]
        return int(K[0, 1, 1] * x[1] / x[2] + K[0, 1, 2]), int(K[0, 0, 0] * x[0] / x[2] + K[0, 0, 2])

    assert m[pixel((-0.6, 0.0, 0.0))] and not m[pixel((0.6, 0.0, 0.0))]  # the region in, the other block out
    assert m[2, 2] and m[45, 32]  # background
