"""The default scene written as a COLMAP model loads to the same cameras (up to the normalisation)."""
import numpy as np

from splat.data import load_dataset

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_default_scene_as_colmap_projects_like_the_original(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("to_colmap", ROOT / "scenes" / "to_colmap.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    src = ROOT / "scenes" / "data" / "default"
    mod.convert(src, tmp_path / "colmap")
    b = load_dataset(src)
    c = load_dataset(tmp_path / "colmap")
    assert c.format == "colmap" and len(c.train) == len(b.train) and len(c.test) == len(b.test)
    assert c.test.names[0].startswith("test_")  # the test.txt split was honoured
    T = np.asarray(c.transform, dtype=np.float64)
    X = np.asarray(b.points[:500], dtype=np.float64)
    Xn = X @ T[:3, :3].T + T[:3, 3]
    assert np.allclose(np.asarray(c.points[:500]), Xn, atol=1e-4)

    def project(V, K, P):
        cam = P @ V[:3, :3].T + V[:3, 3]
        uv = cam @ K.T
        return uv[:, :2] / uv[:, 2:]

    for split_b, split_c in ((b.train, c.train), (b.test, c.test)):
        for i in range(0, len(split_b), 7):
            j = split_c.names.index(split_b.names[i].replace("/", "_") + ".png")  # COLMAP sorts by name
            ub = project(split_b.viewmats[i].astype(np.float64), split_b.Ks[i].astype(np.float64), X)
            uc = project(split_c.viewmats[j].astype(np.float64), split_c.Ks[j].astype(np.float64), Xn)
            assert np.abs(ub - uc).max() < 1e-2
            # the images are the originals composited on white
            assert np.abs(split_b.images[i].astype(int) - split_c.images[j].astype(int)).max() <= 1
