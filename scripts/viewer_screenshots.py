"""The README's viewer pictures: a live training of the default scene in the
browser (status, loss plot), then the trained model in depth mode.

    python scripts/viewer_screenshots.py            # -> docs/viewer_training.png, docs/viewer_depth.png

Needs Debian's chromium + chromium-driver (as the browser test does).
"""
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from PIL import Image  # noqa: E402

from browser_utils import screenshot, start_browser, wait_until  # noqa: E402


def main(out_dir: Path = ROOT / "docs", steps: int = 1500, shot_at: int = 1200) -> None:
    from selenium.webdriver.common.by import By

    from splat.train import TrainConfig, Trainer
    from viewer.training import ViewerCallback

    cfg = TrainConfig(out=Path("/tmp/splat_viewer_shots"), iterations=steps, progress=False, viewer=True,
                      viewer_port=0, viewer_wait=False, export=["ply"], save_renders=0)
    t = Trainer(cfg, log=lambda *a: None)
    viewer, link = ViewerCallback.attached_to(t).start(t)
    done = threading.Event()

    def run():
        try:
            t.train()
        finally:
            done.set()

    d = start_browser(1280, 760)
    try:
        d.get(viewer.url)
        wait_until(lambda: viewer.render_count > 0, timeout=120, what="the first frame")
        threading.Thread(target=run, daemon=True).start()
        wait_until(lambda: link.step >= shot_at, timeout=1200, period=1.0, what=f"step {shot_at}")
        link.set_paused(True)  # hold the step for the picture; the viewer renders the current model
        time.sleep(4.0)
        Image.fromarray(screenshot(d)).save(out_dir / "viewer_training.png")
        link.set_paused(False)
        done.wait()
        label = d.find_element(By.XPATH, "//label[normalize-space()='Render mode']")
        d.find_element(By.ID, label.get_attribute("for")).click()
        wait_until(lambda: d.find_elements(By.XPATH, "//*[@role='option'][normalize-space()='depth']"), timeout=20)
        d.find_element(By.XPATH, "//*[@role='option'][normalize-space()='depth']").click()
        wait_until(lambda: any(f[2] == "depth" and f[1] for f in viewer.last_frames.values()), timeout=60)
        time.sleep(3.0)
        Image.fromarray(screenshot(d)).save(out_dir / "viewer_depth.png")
        print(f"step {link.step}, {link.num_gaussians:,} Gaussians -> {out_dir}/viewer_training.png, viewer_depth.png")
    finally:
        d.quit()
        t.close()


if __name__ == "__main__":
    main()
