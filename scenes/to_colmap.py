"""Write a NeRF-synthetic folder (such as the default scene) as a COLMAP text model.

    python -m scenes.to_colmap scenes/data/default /tmp/default_colmap

Images are composited on white and written as RGB PNGs to images/; cameras are
PINHOLE; poses are converted from OpenGL camera-to-world to COLMAP's
world-to-camera (OpenCV axes); points3d.ply becomes points3D.txt; the test
views are listed in sparse/0/test.txt (3DGS's split file). Training on the
result exercises the COLMAP path (pycolmap, normalisation) on the same views,
so its test PSNR should match training on the original folder.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation


def convert(src: Path, dst: Path) -> Path:
    from splat.data.common import read_ply_points

    src, dst = Path(src), Path(dst)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    model = dst / "sparse" / "0"
    model.mkdir(parents=True, exist_ok=True)
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    cams, imgs, test = [], [], []
    image_id = 0
    for split in ("train", "test"):
        meta = json.loads((src / f"transforms_{split}.json").read_text())
        for fr in meta["frames"]:
            image_id += 1
            fp = src / fr["file_path"]
            fp = fp if fp.suffix else fp.with_suffix(".png")
            im = Image.open(fp).convert("RGBA")
            W, H = im.size
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            name = f"{split}_{fp.stem}.png"
            Image.alpha_composite(bg, im).convert("RGB").save(dst / "images" / name)
            f = 0.5 * W / math.tan(0.5 * float(meta["camera_angle_x"]))
            cams.append(f"{image_id} PINHOLE {W} {H} {f:.17g} {f:.17g} {W / 2:.17g} {H / 2:.17g}")
            w2c = np.linalg.inv(np.asarray(fr["transform_matrix"], dtype=np.float64) @ flip)
            x, y, z, w = Rotation.from_matrix(w2c[:3, :3]).as_quat()
            t = w2c[:3, 3]
            imgs.append(f"{image_id} {w:.17g} {x:.17g} {y:.17g} {z:.17g} {t[0]:.17g} {t[1]:.17g} {t[2]:.17g} {image_id} {name}\n\n")
            if split == "test":
                test.append(name)
    (model / "cameras.txt").write_text("\n".join(cams) + "\n")
    (model / "images.txt").write_text("".join(imgs))
    pts, rgb = read_ply_points(src / "points3d.ply")
    rgb = np.full_like(pts, 128, dtype=np.uint8) if rgb is None else rgb
    (model / "points3D.txt").write_text("".join(
        f"{i + 1} {p[0]:.17g} {p[1]:.17g} {p[2]:.17g} {c[0]} {c[1]} {c[2]} 0.5\n"
        for i, (p, c) in enumerate(zip(pts.astype(np.float64), rgb))))
    (model / "test.txt").write_text("\n".join(test) + "\n")
    return dst


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m scenes.to_colmap SRC_BLENDER_DIR DST_DIR")
    print(convert(Path(sys.argv[1]), Path(sys.argv[2])))
