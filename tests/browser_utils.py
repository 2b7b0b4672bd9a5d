"""Drive Debian's chromium + chromium-driver (selenium, no browser download) for the viewer tests."""
from __future__ import annotations

import io
import os
import shutil
import time

import numpy as np

CHROMIUM_FLAGS = ("--headless=new --no-sandbox --disable-dev-shm-usage --disable-background-networking "
                  "--disable-component-update --disable-sync --no-first-run --disable-quic "
                  "--use-angle=swiftshader --enable-unsafe-swiftshader").split()
NOTICE = (0, 0, 330, 170)  # viser's "Software WebGL rendering detected" notice, top left: masked


def find_chromium():
    """(chromium, chromedriver) paths or None."""
    b = shutil.which("chromium") or (os.path.exists("/usr/bin/chromium") and "/usr/bin/chromium")
    d = shutil.which("chromedriver") or (os.path.exists("/usr/bin/chromedriver") and "/usr/bin/chromedriver")
    return (b, d) if b and d else None


def start_browser(width=1100, height=700):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = find_chromium()
    o = webdriver.ChromeOptions()
    o.binary_location = binary
    for f in CHROMIUM_FLAGS:
        o.add_argument(f)
    d = webdriver.Chrome(service=Service(driver), options=o)
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return d


def screenshot(d) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(d.get_screenshot_as_png())).convert("RGB"))


def canvas_rect(d):
    """(x, y, w, h) of viser's 3D canvas in CSS pixels."""
    r = d.execute_script("const c = document.querySelector('canvas');"
                         "if (!c) return null; const b = c.getBoundingClientRect();"
                         "return [b.left, b.top, b.width, b.height];")
    return None if r is None else tuple(int(round(v)) for v in r)


def canvas_view(shot: np.ndarray, rect, size) -> np.ndarray:
    """The canvas part of a screenshot resized to `size` (w, h), float [h, w, 3], with
    the notice area (and what resizing mixes into it) set to NaN."""
    from PIL import Image

    x, y, w, h = rect
    crop = shot[y:y + h, x:x + w].astype(np.float32)
    crop[max(0, NOTICE[1] - y):max(0, NOTICE[3] - y), max(0, NOTICE[0] - x):max(0, NOTICE[2] - x)] = -1000.0
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(crop[..., c]), mode="F").resize(size, Image.BILINEAR))
                    for c in range(3)], -1)
    out[out < -1.0] = np.nan
    return out


def median_diff(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a.astype(np.float32) - b.astype(np.float32))
    return float(np.nanmedian(d))


def subject_mask(frame: np.ndarray) -> np.ndarray:
    """Pixels of a rendered frame that show the model: farther than 30 (summed over RGB)
    from the frame's background colour (the median of its border)."""
    f = frame.astype(np.float32)
    border = np.concatenate([f[0], f[-1], f[:, 0], f[:, -1]])
    bg = np.median(border, 0)
    return np.abs(f - bg).sum(-1) > 30


def subject_diff(view: np.ndarray, frame: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference over the masked pixels (NaNs of the screenshot's mask excluded)."""
    d = np.abs(view.astype(np.float32) - frame.astype(np.float32))[mask]
    return float(np.nanmean(d))


def wait_until(cond, timeout=90.0, period=0.5, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(period)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
