"""Multi-process training (Grendel): the strip loss, tile-aligned crops, the balancer and the
shard helpers on their own; then real torchrun launches of 1, 2 and 4 gloo processes against
the one-process trainer, density control on shards, resume on another process count, a
rank that dies, the viewer's whole model on rank 0."""
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import splat
from splat.distributed.partition import Strip, balance, even_split, row_costs, strip_tiles, strips_of, units_of
from splat.distributed.shards import (concat_rows, pack_rows, rebalance_plan, shard_bounds, slice_rows,
                                      unpack_rows)
from splat.train.losses import photometric_loss, photometric_loss_rows

from synthetic_data import make_views, write_blender

TORCHRUN = shutil.which("torchrun")
WORKER = Path(__file__).resolve().parent / "dist_worker.py"


# ----------------------------------------------------------------------------- pieces


@pytest.mark.parametrize("with_mask", [False, True])
def test_strip_losses_add_up_to_the_image_loss(with_mask):
    """The rows' shares (each a crop with a one-tile halo) sum to photometric_loss, value and gradient."""
    g = torch.Generator().manual_seed(1)
    H, W = 70, 45
    pred = torch.rand(H, W, 3, dtype=torch.float64, generator=g, requires_grad=True)
    gt = torch.rand(H, W, 3, dtype=torch.float64, generator=g)
    mask = (torch.rand(H, W, 1, generator=g) > 0.3) if with_mask else None
    full = photometric_loss(pred, gt, 0.2, mask)
    g_full, = torch.autograd.grad(full, pred)
    total = 0.0
    for a, b in [(0, 16), (16, 48), (48, 70)]:
        h0, h1 = max(0, a - 16), min(H, b + 16)
        total = total + photometric_loss_rows(pred[h0:h1], gt[h0:h1], 0.2, slice(a - h0, b - h0),
                                              None if mask is None else mask[h0:h1],
                                              None if mask is None else float(mask.sum()), H * W)
    g_parts, = torch.autograd.grad(total, pred)
    assert abs(total.item() - full.item()) < 1e-12
    assert torch.allclose(g_parts, g_full, atol=1e-15, rtol=1e-10)
    # a halo narrower than the SSIM window's half-width does not add up
    bad = sum(photometric_loss_rows(pred[a:b], gt[a:b], 0.2, slice(0, b - a), None if mask is None else mask[a:b],
                                    None if mask is None else float(mask.sum()), H * W)
              for a, b in [(0, 16), (16, 48), (48, 70)])
    assert abs(bad.item() - full.item()) > 1e-6


@pytest.mark.parametrize("backend", ["cpu", "torch", "raytrace"])
@pytest.mark.parametrize("camera_model", ["pinhole", "fisheye"])
def test_strip_tiles_render_the_image_rows(backend, camera_model):
    """A strip's tile rows render exactly those rows of the whole image (colours, and the gradient
    of a loss on them), so the strips' renders are the image's."""
    views = make_views(n_views=1, width=70, height=61, n_gauss=200, seed=3)
    g = torch.Generator().manual_seed(0)
    N = len(views["points"])
    means = torch.tensor(views["points"], requires_grad=True)
    quats = torch.randn(N, 4, generator=g)
    scales = torch.rand(N, 3, generator=g) * 0.1 + 0.02
    opac = torch.rand(N, generator=g) * 0.8 + 0.1
    colors = torch.rand(N, 3, generator=g)
    args = (quats, scales, opac, colors, views["viewmats"], views["Ks"], 70, 61)
    kw = dict(backend=backend, camera_model=camera_model, backgrounds=torch.ones(1, 3))
    full, _, _ = splat.rasterize(means, *args, **kw)
    w = torch.rand(full.shape, generator=g)
    tw = 5  # ceil(70 / 16)
    for strip in (Strip(0, 0, 1, 4), Strip(0, 1, 3, 4), Strip(0, 3, 4, 4)):
        h0, h1 = strip.halo_rows
        y0, y1 = h0 * 16, min(61, h1 * 16)
        part, _, _ = splat.rasterize(means, *args, tiles=strip_tiles(strip, tw), **kw)
        assert torch.equal(part[:, y0:y1], full[:, y0:y1]), strip
        r0, r1 = strip.row0 * 16, min(61, strip.row1 * 16)
        gm_part, = torch.autograd.grad((part[:, r0:r1] * w[:, r0:r1]).sum(), means)
        gm_rows, = torch.autograd.grad((full[:, r0:r1] * w[:, r0:r1]).sum(), means, retain_graph=True)
        # the CPU tracer sums gradients in thread order: equal up to float order, so the
        # tolerance follows the gradients' scale (a cancelling sum loses digits of the largest terms)
        scale = float(gm_rows.abs().max())
        assert torch.allclose(gm_part, gm_rows, atol=1e-5 * scale, rtol=1e-4), strip
        assert gm_rows.abs().sum() > 0


def test_balance_cuts_equal_cost_runs():
    rng = np.random.default_rng(0)
    costs = rng.gamma(0.5, 10.0, size=200)
    for parts in (2, 3, 4, 7):
        b = balance(costs, parts)
        assert b[0] == 0 and b[-1] == 200 and np.all(np.diff(b) >= 0)
        sums = np.add.reduceat(costs, b[:-1]) if np.all(np.diff(b) > 0) else None
        # each run within one unit's cost of the ideal share
        ideal = costs.sum() / parts
        run = [costs[b[k]:b[k + 1]].sum() for k in range(parts)]
        assert max(abs(r - ideal) for r in run) <= costs.max() + 1e-9, (parts, run, sums)
    skewed = np.r_[np.full(50, 100.0), np.ones(150)]  # a busy top, an empty bottom
    b = balance(skewed, 2)
    e = even_split(200, 2)
    assert max(skewed[:b[1]].sum(), skewed[b[1]:].sum()) < max(skewed[:e[1]].sum(), skewed[e[1]:].sum()) / 1.5
    assert list(even_split(10, 3)) == [0, 3, 6, 10]
    assert list(balance(np.zeros(5), 2)) == [0, 2, 5]


def test_strips_of_units():
    tile_rows = [3, 2]
    units = units_of(tile_rows)
    parts = strips_of(units, np.array([0, 2, 5]), tile_rows)
    assert parts[0] == [Strip(0, 0, 2, 3)]
    assert parts[1] == [Strip(0, 2, 3, 3), Strip(1, 0, 2, 2)]
    assert parts[1][0].halo_rows == (1, 3) and parts[1][1].halo_rows == (0, 2)


def test_row_costs_count_tile_intersections():
    tmin = torch.tensor([[0, 0], [1, 1], [2, 3]], dtype=torch.int32)
    tmax = torch.tensor([[2, 2], [4, 2], [2, 4]], dtype=torch.int32)  # the last one is empty (culled)
    assert row_costs(tmin, tmax, 4).tolist() == [2.0, 5.0, 0.0, 0.0]


def test_shard_helpers_round_trip():
    N = 11
    obj = {"a": torch.arange(N * 2.0).reshape(N, 2), "s": torch.tensor(3.0), "l": [torch.arange(N), 7]}
    bounds = shard_bounds(N, 3)
    assert bounds == [(0, 3), (3, 7), (7, 11)]
    parts = [slice_rows(obj, N, a, b) for a, b in bounds]
    back = concat_rows(parts, [b - a for a, b in bounds])
    assert torch.equal(back["a"], obj["a"]) and torch.equal(back["l"][0], obj["l"][0]) and back["l"][1] == 7
    assert float(back["s"]) == 3.0
    t = [torch.randn(5, 3), torch.randn(5, 2, 2), torch.arange(5)]
    packed, layout = pack_rows(t, dtype=torch.float64)
    assert pack_rows([x[:0] for x in t])[0].shape == (0, 3 + 4 + 1)  # a rank that got no rows
    out = unpack_rows(packed[[4, 1]], layout)
    assert torch.equal(out[0], t[0][[4, 1]].double().float()) and out[2].dtype == torch.int64
    assert out[2].tolist() == [4, 1] and out[1].shape == (2, 2, 2)
    # rows of sizes [5, 1, 3] re-balanced to [3, 3, 3], in order
    sizes = [5, 1, 3]
    plans = [rebalance_plan(sizes, r) for r in range(3)]
    assert plans[0] == ([3, 2, 0], [3, 0, 0])
    assert plans[1] == ([0, 1, 0], [2, 1, 0])
    assert plans[2] == ([0, 0, 3], [0, 0, 3])


def test_shardable_refusals(tmp_path):
    from splat.optim.lm import LMOptimizer
    from splat.optim.adam import AdamOptimizer
    from splat.models.relightable import RelightableModel
    from splat.models.static import StaticModel
    from splat.train import TrainConfig
    from splat.train.sharded import check_shardable

    cfg = TrainConfig()
    check_shardable(cfg, StaticModel, AdamOptimizer)
    with pytest.raises(ValueError, match="--model relightable cannot train on several processes.*shadows"):
        check_shardable(TrainConfig(model="relightable"), RelightableModel, AdamOptimizer)
    with pytest.raises(ValueError, match="--optimizer lm"):
        check_shardable(TrainConfig(optimizer="lm"), StaticModel, LMOptimizer)
    with pytest.raises(ValueError, match="steepgs"):
        check_shardable(TrainConfig(strategy="steepgs"), StaticModel, AdamOptimizer)
    with pytest.raises(ValueError, match="absgrad"):
        check_shardable(TrainConfig(adc=dataclasses.replace(cfg.adc, absgrad=True)), StaticModel, AdamOptimizer)


# ----------------------------------------------------------------------------- real launches

pytestmark_launch = pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "scene"
    # 56 px = 4 tile rows: 4 processes get one row each
    return write_blender(root, make_views(n_views=12, width=64, height=56, n_gauss=300, seed=2))


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    return env


def _train_args(data, out, iterations, *extra):
    return ["--data", str(data), "--out", str(out), "--iterations", str(iterations), "--no-progress",
            "--no-scale-schedule", "--static.sh-degree", "1", "--save-renders", "0", *extra]


def _torchrun(n, args, timeout=240, check=True):
    cmd = [TORCHRUN, f"--nproc-per-node={n}", "--standalone", "-m", "splat.train", *args]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def _plain(args, timeout=240):
    r = subprocess.run([sys.executable, "-m", "splat.train", *args], env=_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _ckpt(out, step):
    return torch.load(Path(out) / "ckpts" / f"ckpt_{step}.pt", weights_only=True)


def _assert_same_params(a, b, atol=2e-4):
    assert set(a["splats"]) == set(b["splats"])
    for k in a["splats"]:
        x, y = a["splats"][k].float(), b["splats"][k].float()
        assert x.shape == y.shape, k
        assert torch.allclose(x, y, atol=atol, rtol=1e-3), (k, float((x - y).abs().max()))
    for k in a["optimizer"]:
        sa, sb = a["optimizer"][k]["state"], b["optimizer"][k]["state"]
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = sa[0][key], sb[0][key]
            # the gradients are the same sums in another order: an element 1e-4 of the largest (a sum
            # with cancellation) can differ by a few percent
            assert torch.allclose(x, y, atol=1e-5 * float(x.abs().max()) + 1e-12, rtol=1e-2), (k, key)


@pytestmark_launch
def test_processes_match_one_process(scene, tmp_path):
    """1 (the sharded code path), 2 and 4 gloo processes give the one-process parameters and Adam
    moments after a few steps of batch 2 (the same gradient sums in another order), with and
    without the balancer."""
    args = ("--batch-size", "2", "--save-every", "4")
    _plain(_train_args(scene, tmp_path / "one", 4, *args))
    ref = _ckpt(tmp_path / "one", 4)
    for n, extra in [(1, ()), (2, ()), (4, ()), (2, ("--dist.no-balance",))]:
        out = tmp_path / f"d{n}{len(extra)}"
        r = _torchrun(n, _train_args(scene, out, 4, *args, *extra))
        assert f"distributed: {n} process(es), gloo" in r.stdout
        assert r.stdout.count("test PSNR") == 1  # rank 0 alone reports
        _assert_same_params(ref, _ckpt(out, 4))
        stats = json.loads((out / "metrics.json").read_text())["distributed"]
        assert stats["processes"] == n and len(stats["per_rank"]) == n
        sent = [s["bytes_sent"] for s in stats["per_rank"]]
        assert (min(sent) > 0) == (n > 1) and (max(sent) == 0) == (n == 1)


@pytestmark_launch
def test_density_control_and_resume_on_another_process_count(scene, tmp_path):
    """Cloning on shards gives the one-process Gaussians (as a set: each shard appends its own
    clones), re-balancing keeps every shard equal, and a 2-process checkpoint resumes on 4
    processes and on 1 to the one-process result."""
    dc = ("--adc.refine-start-iter", "2", "--adc.refine-every", "3", "--adc.grow-grad2d", "0.00005",
          "--adc.grow-scale3d", "100", "--adc.prune-opa", "0", "--adc.reset-every", "0", "--save-every", "4",
          "--dist.rebalance-every", "2")
    _plain(_train_args(scene, tmp_path / "one", 8, *dc))
    _torchrun(2, _train_args(scene, tmp_path / "two", 8, *dc))
    for step in (4, 8):
        a, b = _ckpt(tmp_path / "one", step), _ckpt(tmp_path / "two", step)
        _assert_same_rows(a, b)
    assert len(a["splats"]["means"]) > len(_ckpt(tmp_path / "one", 4)["splats"]["means"]) > 300  # clones were made
    # the 2-process run's step-4 checkpoint resumed on 4 processes and on 1: the one-process run's result
    for n, run in ((4, "four"), (1, "single")):
        shutil.copytree(tmp_path / "two", tmp_path / run)
        (tmp_path / run / "ckpts" / "ckpt_8.pt").unlink()
        (tmp_path / run / "metrics.json").unlink()
        resume = ["--out", str(tmp_path / run), "--resume", "--no-progress", "--save-renders", "0"]
        _torchrun(n, resume) if n > 1 else _plain(resume)
        _assert_same_rows(_ckpt(tmp_path / "one", 8), _ckpt(tmp_path / run, 8))
    four = json.loads((tmp_path / "four" / "metrics.json").read_text())
    assert [s["steps"] for s in four["distributed"]["per_rank"]] == [4] * 4


def _assert_same_rows(a, b, tol=1e-4):
    """The same Gaussians in any order: every row (all parameters) has a twin in the other run."""
    na, nb = len(a["splats"]["means"]), len(b["splats"]["means"])
    assert na == nb
    va = torch.cat([a["splats"][k].reshape(na, -1) for k in sorted(a["splats"])], 1).double()
    vb = torch.cat([b["splats"][k].reshape(nb, -1) for k in sorted(b["splats"])], 1).double()
    d = torch.cdist(va, vb, compute_mode="donot_use_mm_for_euclid_dist")
    assert float(d.min(1).values.max()) < tol and float(d.min(0).values.max()) < tol


@pytestmark_launch
def test_rank_that_dies_ends_the_run_with_the_last_checkpoint_intact(scene, tmp_path):
    out = tmp_path / "run"
    cmd = [TORCHRUN, "--nproc-per-node=2", "--standalone", "-m", "splat.train",
           *_train_args(scene, out, 300, "--save-every", "5")]
    p = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.time() + 120
        while not list((out / "ckpts").glob("ckpt_*.pt")) and time.time() < deadline:
            time.sleep(0.2)
        assert list((out / "ckpts").glob("ckpt_*.pt")), "no checkpoint was written"
        rank1 = [pid for pid in _children(p.pid) if _environ(pid).get("RANK") == "1"]
        assert rank1, "rank 1 not found"
        os.kill(rank1[0], signal.SIGKILL)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode != 0
    assert "another process of the run stopped" in stderr and "Last checkpoint:" in stderr, stderr[-3000:]
    assert "--resume" in stderr
    last = sorted((out / "ckpts").glob("ckpt_*.pt"), key=lambda q: int(q.stem.split("_")[1]))[-1]
    step = int(last.stem.split("_")[1])
    ck = torch.load(last, weights_only=True)  # intact
    assert ck["step"] == step
    r = _plain(["--out", str(out), "--resume", "--no-progress", "--save-renders", "0"])  # on one process
    assert f"resuming {last}" in r.stdout
    assert json.loads((out / "metrics.json").read_text())["iterations"] == 300


def _children(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        out += [int(k) for k in kids]
        todo += [int(k) for k in kids]
    return out


def _environ(pid):
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)


@pytestmark_launch
def test_viewer_on_rank_zero_shows_the_whole_model(scene, tmp_path):
    from splat.train import TrainConfig
    from splat.train.config import config_to_json

    cfg = TrainConfig(data=scene, out=tmp_path / "run", iterations=6, scale_schedule=False, progress=False,
                      save_renders=0, viewer=True, viewer_port=0, viewer_wait=False)
    cfg.dist.viewer_every = 2
    cmd = [TORCHRUN, "--nproc-per-node=2", "--standalone", str(WORKER), json.dumps(config_to_json(cfg)),
           str(tmp_path / "rec")]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-4000:]
    rec0 = json.loads((tmp_path / "rec" / "rank0.json").read_text())
    rec1 = json.loads((tmp_path / "rec" / "rank1.json").read_text())
    assert rec0["sizes"] == [150, 150]
    assert rec0["shown"] and all(shown == total == 300 for _, shown, total in rec0["shown"])
    assert rec1["shown"] == []  # callbacks (the viewer) live on rank 0 only


def test_shard_slices_per_gaussian_entries_by_name():
    """A shared parameter (a decoder's weights) whose first dimension happens to equal the row
    count stays whole, with its Adam state; per-Gaussian ones and their state are cut."""
    from splat.distributed.world import World
    from splat.train.sharded import ShardedStep

    n = 16
    splats = {"means": torch.arange(n * 3.0).reshape(n, 3), "mlp_b1": torch.arange(16.0)}
    opt = {"means": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(n, 3)}}},
           "mlp_b1": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(16)}}}}
    strategy = {"grad2d": torch.arange(float(n)), "scene_scale": 1.0}
    step = ShardedStep(None, World(rank=1, size=2))
    s, o, st = step.shard(splats, opt, strategy, ("means",), n)
    assert torch.equal(s["means"], splats["means"][8:]) and torch.equal(s["mlp_b1"], splats["mlp_b1"])
    assert o["means"]["state"][0]["exp_avg"].shape == (8, 3) and o["mlp_b1"]["state"][0]["exp_avg"].shape == (16,)
    assert torch.equal(st["grad2d"], torch.arange(8.0, 16.0)) and st["scene_scale"] == 1.0
