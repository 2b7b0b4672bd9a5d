"""The viewer in a real headless Chromium (Debian's chromium + chromium-driver,
installed by scripts/test.sh; WebGL runs in software through SwiftShader).

It serves a small trained model on a loopback port, opens the page, waits for
the scene, and checks from screenshots that the browser shows the model: the
canvas matches the frame the server rendered for that browser's camera (and
not a blank or error page), and that changing the render mode in the page's
own control (a click on the dropdown, then on "depth") changes the picture to
the depth render.

Without chromium the test is skipped, unless SPLAT_REQUIRE_BROWSER=1 (set by
.ci/run), which makes a missing browser a failure.
"""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from browser_utils import (canvas_rect, canvas_view, find_chromium, median_diff, screenshot, start_browser,
                           subject_diff, subject_mask, wait_until)
from synthetic_data import make_views, write_blender

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

if find_chromium() is None:
    if os.environ.get("SPLAT_REQUIRE_BROWSER") == "1":
        raise RuntimeError("SPLAT_REQUIRE_BROWSER=1 but chromium/chromedriver are not installed "
                           "(apt-get install chromium chromium-driver)")
    pytest.skip("chromium and chromium-driver are not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from splat.models.static import StaticConfig
    from splat.strategies.adc import ADCStrategy
    from splat.train import TrainConfig, train

    root = tmp_path_factory.mktemp("viewer_browser")
    data = write_blender(root / "data", make_views(n_views=24, width=96, height=80, n_gauss=300),
                         test_ids=(0, 12))
    strat = ADCStrategy(refine_start_iter=20, refine_stop_iter=150, refine_every=20, reset_every=1000,
                        max_gaussians=4000)
    cfg = TrainConfig(data=data, out=root / "run", iterations=200, scale_schedule=False, adc=strat,
                      static=StaticConfig(sh_degree=1, sh_degree_interval=50), progress=False, save_every=0,
                      export=["ply"], save_renders=0)
    train(cfg, log=lambda *a: None)
    return root / "run"


def _shown(d, viewer, mode):
    """(canvas resized to the frame's size, frame, the frame's model pixels) once the last
    full-resolution frame in `mode` is what the browser shows, else None."""
    frames = list(viewer.last_frames.values())
    if not frames:
        return None
    img, full, m = frames[-1]
    if not full or m != mode:
        return None
    rect = canvas_rect(d)
    if rect is None:
        return None
    view = canvas_view(screenshot(d), rect, (img.shape[1], img.shape[0]))
    mask = subject_mask(img)
    ok = median_diff(view, img) < 8.0 and subject_diff(view, img, mask) < 16.0
    return (view, img, mask) if ok else None


def test_browser_shows_the_model_and_render_mode_changes_the_picture(trained_run, tmp_path):
    from selenium.webdriver.common.by import By

    from viewer.cli import ViewConfig, serve

    viewer = serve(ViewConfig(model=trained_run / "model.ply", port=0, snapshot_dir=tmp_path / "snaps"),
                   log=lambda *a: None)
    d = None
    try:
        assert viewer.host == "127.0.0.1"
        d = start_browser()
        d.get(viewer.url)
        # the model: the canvas shows the server's frame for this browser's camera
        rgb_view, rgb_img, rgb_mask = wait_until(lambda: _shown(d, viewer, "rgb"), timeout=120,
                                                 what="the model's first frame in the browser")
        assert d.title, "no page title: a browser error page?"
        # the camera sees the model: a good part of the frame is model, not background
        assert rgb_mask.mean() > 0.05, f"the model covers only {rgb_mask.mean():.1%} of the frame"
        # where the model is, the browser shows it: a blank (white) page would be far off there
        white = np.full_like(rgb_img, 255)
        assert subject_diff(rgb_view, white, rgb_mask) > 3 * subject_diff(rgb_view, rgb_img, rgb_mask) + 10
        assert len(viewer.server.get_clients()) == 1
        shot_rgb = screenshot(d)

        # change the render mode in the page: open the dropdown, pick "depth"
        label = d.find_element(By.XPATH, "//label[normalize-space()='Render mode']")
        d.find_element(By.ID, label.get_attribute("for")).click()
        wait_until(lambda: d.find_elements(By.XPATH, "//*[@role='option'][normalize-space()='depth']"),
                   timeout=20, what="the render-mode options")
        d.find_element(By.XPATH, "//*[@role='option'][normalize-space()='depth']").click()
        wait_until(lambda: viewer.mode.value == "depth", timeout=20, what="the server to see the mode change")
        depth_view, depth_img, depth_mask = wait_until(lambda: _shown(d, viewer, "depth"), timeout=60,
                                                       what="the depth frame in the browser")
        # the picture changed, and into the depth render, not some other one
        m = depth_mask | rgb_mask
        assert subject_diff(depth_view, rgb_img, m) > 3 * subject_diff(depth_view, depth_img, m) + 10
        shot_depth = screenshot(d)
        assert np.abs(shot_depth.astype(int) - shot_rgb.astype(int)).mean() > 10
        if os.environ.get("SPLAT_VIEWER_SCREENSHOTS"):
            from PIL import Image

            out = Path(os.environ["SPLAT_VIEWER_SCREENSHOTS"])
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(shot_rgb).save(out / "browser_rgb.png")
            Image.fromarray(shot_depth).save(out / "browser_depth.png")
        logs = [e for e in d.get_log("browser") if e.get("level") == "SEVERE"
                and "computeBoundingSphere" not in e.get("message", "")]
        assert not logs, f"browser console errors: {logs}"
    finally:
        if d is not None:
            d.quit()
        viewer.stop()
