"""The trainer, the density strategy, metrics, checkpoints and the render CLI."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from synthetic_data import interrupt_at, make_views, small_train_config, write_blender

import splat.io
from splat.metrics import psnr, ssim
from splat.strategies import ADCStrategy, ops
from splat.train import TrainConfig, Trainer, main as train_main, train


@pytest.fixture(scope="module")
def blender_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return write_blender(root, make_views(n_views=32, width=48, height=40, n_gauss=300), test_ids=(0, 8, 16, 24))


# ----------------------------------------------------------------------------- metrics


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(40, 52, 3, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    ref = skm.structural_similarity(a.numpy(), b.numpy(), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0, channel_axis=2)
    assert ssim(a, b).item() == pytest.approx(ref, abs=1e-10)
    assert ssim(a, a).item() == pytest.approx(1.0)
    # "same" padding (the training loss) differs only near the border and has a gradient
    b.requires_grad_(True)
    s = ssim(a, b, padding="same")
    s.backward()
    assert abs(s.item() - ref) < 0.05 and b.grad.abs().sum() > 0


def test_psnr_known_value():
    a = torch.zeros(4, 4, 3)
    assert psnr(a, a + 0.1).item() == pytest.approx(20.0, abs=1e-4)


# ----------------------------------------------------------------------------- strategy ops


def _params_and_opts(N=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.randn(N, 3, generator=g)),
        "scales": torch.nn.Parameter(torch.randn(N, 3, generator=g) * 0.1 - 2),
        "quats": torch.nn.Parameter(torch.randn(N, 4, generator=g)),
        "opacities": torch.nn.Parameter(torch.randn(N, generator=g)),
        "sh0": torch.nn.Parameter(torch.randn(N, 1, 3, generator=g)),
        "shN": torch.nn.Parameter(torch.randn(N, 3, 3, generator=g)),
    })
    opts = {k: torch.optim.Adam([params[k]], lr=1e-2) for k in params}
    loss = sum((p ** 2).sum() for p in params.values())
    loss.backward()
    for o in opts.values():
        o.step()
    return params, opts


def test_duplicate_and_remove_keep_optimizer_state_aligned():
    params, opts = _params_and_opts()
    before = {k: (p.detach().clone(), opts[k].state[p]["exp_avg"].clone()) for k, p in params.items()}
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[2, 7]] = True
    state = {"grad2d": torch.arange(10.0)}
    ops.duplicate(params, opts, state, mask)
    for k, p in params.items():
        assert p.shape[0] == 12
        assert torch.equal(p[:10], before[k][0]) and torch.equal(p[10:], before[k][0][[2, 7]])
        m = opts[k].state[p]["exp_avg"]
        assert torch.equal(m[:10], before[k][1]) and torch.all(m[10:] == 0)
        assert opts[k].param_groups[0]["params"][0] is p
    assert torch.equal(state["grad2d"], torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 2, 7.0]))
    rm = torch.zeros(12, dtype=torch.bool)
    rm[[0, 10]] = True
    ops.remove(params, opts, state, rm)
    assert params["means"].shape[0] == 10
    assert torch.equal(params["means"][0], before["means"][0][1])
    assert torch.equal(opts["means"].state[params["means"]]["exp_avg"][0], before["means"][1][1])
    # the optimizer still steps the new tensors
    (params["means"] ** 2).sum().backward()
    opts["means"].step()


def test_split_samples_inside_the_parent():
    params, opts = _params_and_opts(N=2000)
    mask = torch.zeros(2000, dtype=torch.bool)
    mask[:1000] = True
    parent_means = params["means"][:1000].detach().clone()
    parent_scales = params["scales"][:1000].detach().clone()
    ops.split(params, opts, {}, mask, generator=torch.Generator().manual_seed(0))
    assert params["means"].shape[0] == 3000
    kids = params["means"][1000:].detach().reshape(2, 1000, 3)
    # children are N(parent mean, parent covariance): the mean offset is ~0, and their scales are / 1.6
    off = (kids - parent_means).reshape(-1, 3)
    assert off.mean(0).abs().max() < 0.02
    assert torch.allclose(params["scales"][1000:2000].detach(), parent_scales - np.log(1.6), atol=1e-6)
    # Mahalanobis distance of the offsets under the parent covariance is chi-square(3): mean 3
    from splat.backends.torch_ref import quat_to_rotmat

    R = quat_to_rotmat(params["quats"][1000:2000].detach())
    s = torch.exp(parent_scales)
    local = torch.einsum("nji,bnj->bni", R, kids - parent_means) / s
    assert (local ** 2).sum(-1).mean().item() == pytest.approx(3.0, rel=0.1)


def test_adc_clones_splits_and_prunes():
    params, opts = _params_and_opts(N=6)
    with torch.no_grad():
        params["scales"][:] = torch.log(torch.tensor([0.001, 0.001, 0.5, 0.5, 0.001, 0.001]))[:, None]
        params["opacities"][:] = torch.logit(torch.tensor([0.5, 0.5, 0.5, 0.5, 0.001, 0.5]))
    strat = ADCStrategy(refine_start_iter=0, refine_every=1, reset_every=0)
    state = strat.initialize_state(scene_scale=1.0)
    means2d = torch.zeros(1, 6, 2, requires_grad=True)
    # pixel gradients: Gaussians 0 and 2 high, the others low
    means2d.grad = torch.tensor([[[0.01, 0], [0, 0], [0.01, 0], [0, 0], [0, 0], [0, 0]]])
    info = {"means2d": means2d, "radii": torch.ones(1, 6, 2, dtype=torch.int32), "width": 100, "height": 100}
    ev = strat.step_post_backward(params, opts, state, 1, info, generator=torch.Generator().manual_seed(0))
    assert ev == {"clone": 1, "split": 1, "prune": 1}
    assert params["means"].shape[0] == 6 + 1 + 1 - 1


def _adc_info(grads, radii=None, width=100, height=100):
    means2d = torch.zeros(1, len(grads), 2, requires_grad=True)
    means2d.grad = torch.tensor([[[g, 0.0] for g in grads]])
    r = torch.ones(1, len(grads), 2, dtype=torch.int32) if radii is None else radii
    return {"means2d": means2d, "radii": r, "width": width, "height": height}


def test_adc_schedule_boundaries():
    """Density control runs at steps start < step < stop with step % every == 0 (gsplat's
    DefaultStrategy), and an opacity reset every reset_every steps; the state keys are part of
    the checkpoint format. (Cases a mutation pass over adc.py found untested.)"""
    strat = ADCStrategy(refine_start_iter=4, refine_stop_iter=12, refine_every=4, reset_every=8, prune_opa=0.01)
    assert strat.initialize_state(2.5) == {"scene_scale": 2.5, "grad2d": None, "count": None}
    params, opts = _params_and_opts(N=4)
    ev = strat.step_post_backward(params, opts, strat.initialize_state(1.0), 0, _adc_info([0.0] * 4))
    assert "reset" not in ev  # step 0 is not a reset step
    for step, grows in ((4, False), (8, True), (11, False), (12, False)):
        params, opts = _params_and_opts(N=4)
        with torch.no_grad():
            params["scales"][:] = -6.0  # small: cloned
            params["opacities"][:] = 2.0
        state = strat.initialize_state(1.0)
        ev = strat.step_post_backward(params, opts, state, step, _adc_info([1.0, 0, 0, 0]),
                                      generator=torch.Generator().manual_seed(0))
        assert (ev.get("clone", 0) == 1) == grows, (step, ev)
        if step >= 12:
            assert ev == {} and state["grad2d"] is None  # nothing accumulated after the stop
        else:
            assert state["grad2d"] is not None
        if step == 8:  # a reset step: opacities clamped to 2 * prune_opa
            assert ev["reset"] == 1
            assert torch.sigmoid(params["opacities"]).max().item() == pytest.approx(0.02, rel=1e-5)


def test_adc_thresholds_are_strict_where_gsplat_is():
    """grad > grow_grad2d grows, max scale <= grow_scale3d * scene_scale clones (else splits),
    opacity < prune_opa prunes, and scale > prune_scale3d * scene_scale prunes only after the
    first reset; gradients are in NDC-like units (pixels * size / 2 * cameras)."""
    strat = ADCStrategy(refine_start_iter=0, refine_every=1, reset_every=5, grow_grad2d=0.5, grow_scale3d=0.1,
                        prune_scale3d=0.3, prune_opa=0.25)
    params, opts = _params_and_opts(N=6)
    with torch.no_grad():
        # scene scale 2: clone up to 0.2, prune above 0.6
        params["scales"][:] = torch.log(torch.tensor([0.2, 0.2, 0.21, 0.7, 0.05, 0.05]))[:, None]
        params["opacities"][:] = torch.logit(torch.tensor([0.5, 0.5, 0.5, 0.5, 0.25, 0.2499]))
    state = strat.initialize_state(2.0)
    # 2D gradient 0.01 px * 100 / 2 = 0.5: exactly the threshold (not grown); 0.0102 -> 0.51 grows
    grads = [0.0102, 0.01, 0.0102, 0.0, 0.0, 0.0]
    ev = strat.step_post_backward(params, opts, state, 3, _adc_info(grads),
                                  generator=torch.Generator().manual_seed(0))
    assert ev == {"clone": 1, "split": 1, "prune": 1}, ev  # 0 cloned, 2 split, 5 pruned; 3 kept (before a reset)
    params, opts = _params_and_opts(N=6)
    with torch.no_grad():
        params["scales"][:] = torch.log(torch.tensor([0.6, 0.61, 0.05, 0.05, 0.05, 0.05]))[:, None]
        params["opacities"][:] = 2.0
    state = strat.initialize_state(2.0)
    ev = strat.step_post_backward(params, opts, state, 6, _adc_info([0.0] * 6),
                                  generator=torch.Generator().manual_seed(0))
    assert ev == {"clone": 0, "split": 0, "prune": 1}, ev  # after the reset at 5: only 0.61 > 0.6 goes
    # the gradient normalisation: width / 2 * cameras, height likewise
    state = strat.initialize_state(1.0)
    params, _ = _params_and_opts(N=2)
    info = _adc_info([0.02, 0.0], width=40)
    info["means2d"].grad[0, 1, 1] = 0.03
    strat._update_state(params, state, info)
    torch.testing.assert_close(state["grad2d"], torch.tensor([0.4, 1.5]))
    torch.testing.assert_close(state["count"], torch.tensor([1.0, 1.0]))
    info = _adc_info([0.02, 0.02], radii=torch.tensor([[[1, 1], [0, 1]]], dtype=torch.int32))
    strat._update_state(params, state, info)  # only Gaussians with both radii > 0 count
    torch.testing.assert_close(state["count"], torch.tensor([2.0, 1.0]))


def test_adc_max_gaussians_keeps_the_strongest_candidates():
    strat = ADCStrategy(refine_start_iter=0, refine_every=1, reset_every=0, grow_grad2d=0.1, max_gaussians=7)
    params, opts = _params_and_opts(N=5)
    with torch.no_grad():
        params["scales"][:] = -6.0
        params["opacities"][:] = 2.0
    means = params["means"].detach().clone()
    state = strat.initialize_state(1.0)
    ev = strat.step_post_backward(params, opts, state, 1, _adc_info([0.01, 0.05, 0.03, 0.0, 0.04]),
                                  generator=torch.Generator().manual_seed(0))
    assert ev["clone"] == 2 and params["means"].shape[0] == 7
    torch.testing.assert_close(params["means"][5:].detach(), means[[1, 4]])  # the two largest gradients
    ev = strat.step_post_backward(params, opts, state, 2, _adc_info([1.0] * 7),
                                  generator=torch.Generator().manual_seed(0))
    assert ev["clone"] == 0 and ev["split"] == 0  # full


def test_adc_scaled_schedule():
    s = ADCStrategy(refine_start_iter=500, refine_stop_iter=15_000, refine_every=100, reset_every=3000)
    short = s.scaled(0.1)
    assert (short.refine_start_iter, short.refine_stop_iter, short.refine_every, short.reset_every) == (50, 1500, 100,
                                                                                                        300)
    long = s.scaled(2.0)
    assert (long.refine_start_iter, long.refine_stop_iter, long.refine_every, long.reset_every) == (1000, 30_000, 200,
                                                                                                    6000)
    assert ADCStrategy(refine_every=50).scaled(0.1).refine_every == 50  # never raised above the user's choice
    assert ADCStrategy(refine_every=150).scaled(0.1).refine_every == 100  # nor shrunk below 100
    assert short.grow_grad2d == s.grow_grad2d and short.prune_opa == s.prune_opa


def test_adc_error_messages():
    strat = ADCStrategy()
    with pytest.raises(ValueError, match=r"^ADCStrategy: info\['means2d'\] does not require grad; render with "
                                         r"gradients enabled$"):
        strat.step_pre_backward(None, None, {}, 0, {"means2d": torch.zeros(1, 2, 2)})
    params, _ = _params_and_opts(N=2)
    info = {"means2d": torch.zeros(1, 2, 2, requires_grad=True), "radii": torch.ones(1, 2, 2), "width": 8, "height": 8}
    with pytest.raises(ValueError, match=r"^ADCStrategy: no gradient on info\['means2d'\]$"):
        strat._update_state(params, strat.initialize_state(), info)
    with pytest.raises(ValueError, match=r"absgrad=True needs rasterize\(\.\.\., absgrad=True\)"):
        ADCStrategy(absgrad=True)._update_state(params, strat.initialize_state(), info)


# ----------------------------------------------------------------------------- training


def test_training_raises_psnr_well_above_its_start(blender_dir, tmp_path):
    strat = ADCStrategy(refine_start_iter=20, refine_stop_iter=300, refine_every=20, reset_every=200,
                        max_gaussians=3000)
    cfg = small_train_config(blender_dir, tmp_path / "run", iterations=500, adc=strat)
    t = Trainer(cfg, log=lambda *a: None)
    start = t.evaluate(0)["psnr"]
    m = t.train()
    assert m["psnr"] > start + 6, (start, m["psnr"])
    assert m["psnr"] > 25
    assert m["num_gaussians"] > 300  # density control grew the model
    for k in ("psnr", "ssim", "num_gaussians", "train_seconds"):
        assert k in json.loads((tmp_path / "run" / "metrics.json").read_text())
    # the exported model renders exactly like the trained parameters
    loaded = splat.io.load(tmp_path / "run" / "model.ply")
    for k, v in t.model.params.items():
        assert torch.equal(loaded[k], v.detach()), k


def _ckpt_params(path):
    return torch.load(path, weights_only=False)["splats"]


def test_resume_continues_bit_for_bit(blender_dir, tmp_path, monkeypatch):
    a = tmp_path / "a"
    train(small_train_config(blender_dir, a, export=[]), log=lambda *x: None)
    ref = _ckpt_params(a / "ckpts" / "ckpt_120.pt")

    # interrupt at step 75 (Ctrl-C): a checkpoint is written, --resume continues from it
    b = tmp_path / "b"
    interrupt_at(monkeypatch, 75, lambda: train(small_train_config(blender_dir, b, export=[]), log=lambda *x: None))
    assert (b / "ckpts" / "ckpt_75.pt").exists()
    # resuming uses the saved config, whatever else the command line says
    train(TrainConfig(out=b, resume=True, iterations=999, progress=False), log=lambda *x: None)
    got = _ckpt_params(b / "ckpts" / "ckpt_120.pt")
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_results_do_not_depend_on_the_thread_count(blender_dir, tmp_path, monkeypatch):
    """--threads 0 changes the thread count while a run goes on (splat.train.threads), so a run
    must give the same bits on any count: one thread throughout, and two threads interrupted at
    step 75 then resumed on one thread, end with identical parameters and optimizer state."""
    a = tmp_path / "a"
    train(small_train_config(blender_dir, a, export=[], threads=1), log=lambda *x: None)
    b = tmp_path / "b"
    interrupt_at(monkeypatch, 75, lambda: train(small_train_config(blender_dir, b, export=[], threads=2),
                                                  log=lambda *x: None))
    train(TrainConfig(out=b, resume=True, threads=1, progress=False), log=lambda *x: None)
    ref = torch.load(a / "ckpts" / "ckpt_120.pt", weights_only=False)
    got = torch.load(b / "ckpts" / "ckpt_120.pt", weights_only=False)
    for part in ("splats", "optimizer"):
        flat_ref, flat_got = _tensors(ref[part]), _tensors(got[part])
        assert flat_got.keys() == flat_ref.keys() and flat_ref, part
        for k in flat_ref:
            assert torch.equal(flat_got[k], flat_ref[k]), (part, k)


def _tensors(x, path="") -> dict:
    """The tensors in a nested dict/list, by path."""
    if isinstance(x, torch.Tensor):
        return {path: x}
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, (list, tuple)) else ()
    out = {}
    for k, v in items:
        out.update(_tensors(v, f"{path}/{k}"))
    return out


def test_cli_writes_run_directory_and_bad_inputs_fail_clearly(blender_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    train_main(["--data", str(blender_dir), "--out", str(out), "--iterations", "30", "--no-progress",
                "--export", "ply", "spz"])
    m = json.loads((out / "metrics.json").read_text())
    assert m["iterations"] == 30 and m["num_gaussians"] > 0 and m["psnr"] > 10
    assert (out / "model.spz").exists() and (out / "config.json").exists()
    assert sorted(p.name for p in (out / "renders").iterdir()) == [f"test_{i:03d}.png" for i in range(4)]
    capsys.readouterr()

    with pytest.raises(SystemExit) as e:
        train_main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--no-progress"])
    assert e.value.code == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # nothing written for a run that could not start

    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path / "empty"), "--resume", "--no-progress"])
    assert "no checkpoint" in capsys.readouterr().err

    bad = tmp_path / "bad"
    shutil.copytree(blender_dir, bad)
    (bad / "train" / "r_3.png").unlink()
    with pytest.raises(SystemExit):
        train_main(["--data", str(bad), "--out", str(tmp_path / "y"), "--no-progress"])
    assert "r_3" in capsys.readouterr().err


def test_corrupt_checkpoint_is_refused(tmp_path, capsys):
    ck = tmp_path / "run" / "ckpts"
    ck.mkdir(parents=True)
    (ck / "ckpt_10.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path / "run"), "--resume", "--no-progress"])
    assert "ckpt_10.pt" in capsys.readouterr().err
    assert (ck / "ckpt_10.pt").read_bytes() == b"not a checkpoint"


# ----------------------------------------------------------------------------- render CLI


def test_render_cli_test_views_orbit_and_modes(blender_dir, tmp_path, capsys):
    from PIL import Image

    from splat.render_cli import RenderConfig, main as render_main, render

    run = tmp_path / "run"
    m = train(small_train_config(blender_dir, run, iterations=60), log=lambda *x: None)
    r = render(RenderConfig(model=run), log=lambda *x: None)
    assert r["views"] == 4 and r["psnr"] == pytest.approx(m["psnr"], abs=0.05)  # same views, 8-bit PNG aside
    r = render(RenderConfig(model=run / "model.ply", data=blender_dir, mode="depth"), log=lambda *x: None)
    depth = np.asarray(Image.open(sorted(Path(r["folder"]).glob("*depth.png"))[0]))
    assert depth.std() > 5  # a colour-mapped depth image, not a flat one
    r = render(RenderConfig(model=run, cameras="orbit", frames=6, mode="alpha", video=tmp_path / "o.gif"),
               log=lambda *x: None)
    frames = Image.open(tmp_path / "o.gif")
    assert frames.n_frames == 6 and frames.size == (48, 40)
    r = render(RenderConfig(model=run, cameras="path", frames=8), log=lambda *x: None)
    assert Path(r["video"]).stat().st_size > 1000
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        render_main([str(tmp_path / "missing.ply")])
    assert e.value.code == 2
    assert "missing.ply: no such model file" in capsys.readouterr().err
    render_main([str(run), "--cameras", "orbit", "--frames", "3", "--video", str(tmp_path / "cli.gif")])
    assert Image.open(tmp_path / "cli.gif").n_frames == 3
    # secondary rays and the ray tracer from the command line
    r = render(RenderConfig(model=run, backend="raytrace"), log=lambda *x: None)
    assert r["psnr"] > m["psnr"] - 3.0  # trained with the rasterizer, rendered by the tracer
    for effect in ("dof", "mirror", "shadow"):
        r = render(RenderConfig(model=run, effect=effect, out=tmp_path / effect), log=lambda *x: None)
        pics = sorted(Path(r["folder"]).glob("*_rgb.png"))
        assert len(pics) == 4 and np.asarray(Image.open(pics[0])).std() > 5
    plain = np.asarray(Image.open(sorted((run / "render" / "test").glob("*_rgb.png"))[0])).astype(float)
    mirrored = np.asarray(Image.open(sorted((tmp_path / "mirror" / "test").glob("*_rgb.png"))[0])).astype(float)
    assert np.abs(plain - mirrored).mean() > 1.0  # the plane shows
    with pytest.raises(ValueError, match="renders colour"):
        render(RenderConfig(model=run, effect="dof", mode="depth"), log=lambda *x: None)


def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_exits_130(blender_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sig"
    p = subprocess.Popen([sys.executable, "-m", "splat.train", "--data", str(blender_dir), "--out", str(out),
                          "--iterations", "100000", "--save-every", "20", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not (out / "ckpts" / "ckpt_20.pt").exists():
            assert p.poll() is None and time.time() < deadline, p.communicate()
            time.sleep(0.1)
        p.send_signal(signal.SIGINT)
        stdout, _ = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 130
    assert "interrupted at step" in stdout and "--resume" in stdout
    step = int(stdout.split("interrupted at step ")[1].split(":")[0])
    ck = torch.load(out / "ckpts" / f"ckpt_{step}.pt", weights_only=False)
    assert ck["step"] == step >= 20
    assert not list((out / "ckpts").glob("*.tmp*"))


def test_orbit_and_path_cameras_are_upright_opencv_cameras(blender_dir):
    from splat.data import load_dataset
    from splat.cameras import orbit_cameras, path_cameras

    ds = load_dataset(blender_dir)
    V = ds.train.viewmats.astype(np.float64)
    centres = -np.einsum("nji,nj->ni", V[:, :3, :3], V[:, :3, 3])
    for Vs in (orbit_cameras(12, V, None, 25.0), path_cameras(12, V)):
        for Vo in Vs:
            R = Vo[:3, :3]
            assert np.allclose(R @ R.T, np.eye(3), atol=1e-6) and np.linalg.det(R) > 0
            c = -R.T @ Vo[:3, 3]
            k = int(np.argmin(np.linalg.norm(centres - c, axis=1)))
            # same handedness and orientation as the nearest training camera: right is right, down is down
            assert R[0] @ V[k, 0, :3] > 0.7 and R[1] @ V[k, 1, :3] > 0.7, (R, V[k, :3, :3])


def test_depth_mode_on_an_orbit_without_data(blender_dir, tmp_path):
    from splat.render_cli import RenderConfig, render

    run = tmp_path / "run"
    train(small_train_config(blender_dir, run, iterations=20, export=["ply", "spz"], rasterize_mode="antialiased"),
          log=lambda *x: None)
    from splat.io.spz import read_header

    assert read_header(run / "model.spz")["antialiased"]  # the flag follows --rasterize-mode
    # a bare model file with no run config and no --data: the orbit comes from the Gaussians alone
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(run / "model.ply", bare / "m.ply")
    r = render(RenderConfig(model=bare / "m.ply", cameras="orbit", frames=4, mode="depth", resolution=(64, 48),
                            video=tmp_path / "d.gif"), log=lambda *x: None)
    assert r["frames"] == 4
