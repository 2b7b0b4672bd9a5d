"""Property-based fuzzing of every reader (hypothesis): .ply (binary and ascii), compressed .ply,
.splat, .spz (v1-v4), splat.io checkpoints and training checkpoints, .sgi, COLMAP models (binary and
text), transforms.json (NeRF-synthetic and nerfstudio) and images. Every input is a mutation of a
valid file made here (truncation, bit flips, absurd counts and sizes, random bytes); the reader
may only return or raise its documented error naming the file (`fuzz_harness.run_reader`).

The default run tries a few dozen inputs per reader; `python scripts/fuzz.py` many more."""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import splat.io as sio
from fuzz_harness import FUZZ_SETTINGS, any_bytes, crc_fix, gzip_wrap, mutated, run_reader, run_reader_on_file
from splat.data import DatasetError, load_dataset
from splat.io import FormatError

pycolmap = pytest.importorskip("pycolmap")


def _splats(n=6, degree=1, seed=0):
    from test_io import make_splats

    return make_splats(n=n, degree=degree, seed=seed)


def _ascii_ply(s) -> bytes:
    from splat.io.ply import property_names

    a = sio.validate_splats(s)
    n, k = a["means"].shape[0], a["shN"].shape[1]
    names = property_names(k, normals=False)
    cols = np.concatenate([a["means"], a["sh0"].reshape(n, 3), a["shN"].transpose(0, 2, 1).reshape(n, -1),
                           a["opacities"][:, None], a["scales"], a["quats"]], 1)
    head = ["ply", "format ascii 1.0", f"element vertex {n}"] + [f"property float {p}" for p in names] + ["end_header"]
    return ("\n".join(head + [" ".join(f"{v:.6g}" for v in row) for row in cols]) + "\n").encode()


def _spz_v1(s) -> bytes:
    """Version 1: float16 positions, the rest as version 2 (Niantic's first release)."""
    raw = gzip.decompress(sio.spz.encode_spz(s, version=2))
    magic, version, n, deg, fb, flags, res = struct.unpack_from("<IIIBBBB", raw)
    pos = np.asarray(s["means"], np.float32) * np.array([1, -1, -1], np.float32)  # RDF -> RUB
    head = struct.pack("<IIIBBBB", magic, 1, n, deg, fb, flags, res)
    return gzip.compress(head + pos.astype("<f2").tobytes() + raw[16 + 9 * n:], mtime=0)


@pytest.fixture(scope="module")
def model_seeds(tmp_path_factory):
    """Valid files of every model format: name -> (bytes, suffix, mutation options)."""
    d = tmp_path_factory.mktemp("seeds")
    s = _splats()
    big = _splats(n=300, degree=0, seed=1)  # a compressed .ply needs chunks of 256
    out = {}
    for fmt, suffix, model in (("ply", ".ply", s), ("compressed_ply", ".compressed.ply", big), ("splat", ".splat", s)):
        p = sio.save(d / f"m{suffix}", model, format=fmt)
        out[fmt] = (p.read_bytes(), suffix, dict(text_header=fmt != "splat"))
    out["ply_ascii"] = (_ascii_ply(s), ".ply", dict(text_header=True))
    out["spz_v1"] = (_spz_v1(s), ".spz", {})
    for v in (2, 3, 4):
        out[f"spz_v{v}"] = (sio.spz.encode_spz(s, version=v), ".spz", {})
    out["sog"] = (sio.sog.encode_sog(s), ".sog", {})
    out["glb"] = (sio.glb.encode_glb(s), ".glb", {})
    buf = io.BytesIO()
    torch.save({"splats": s, "step": 7}, buf)
    out["checkpoint"] = (buf.getvalue(), ".pt", {})
    return out


def _inner(data: bytes):
    """For gzip-wrapped seeds: the inner bytes and the wrapper, so that mutations reach the parser."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data), gzip_wrap
    return data, None


MODEL_READERS = ["ply", "ply_ascii", "compressed_ply", "splat", "spz_v1", "spz_v2", "spz_v3", "spz_v4", "sog", "glb",
                 "checkpoint"]


@pytest.mark.parametrize("kind", MODEL_READERS)
def test_fuzz_model_readers(model_seeds, kind):
    seed, suffix, opts = model_seeds[kind]
    inner, wrap = _inner(seed)

    @FUZZ_SETTINGS
    @given(data=st.one_of(mutated(inner, wrap=wrap, **opts), st.binary(max_size=1024)))
    def check(data):
        raw = wrap(data) if wrap is not None and data[:2] != b"\x1f\x8b" and len(data) > 16 else data
        got = run_reader_on_file(f"splat.io.load {kind}", f"fuzz{suffix}", raw, sio.load, (FormatError,))
        if got is not None:  # whatever is accepted is a valid model
            sio.validate_splats(got)

    check()


class ExportRefused(Exception):
    pass


def test_fuzz_export_cli_leaves_no_output(model_seeds):
    from splat.export_cli import main as export_main

    seed, _, opts = model_seeds["ply"]

    @FUZZ_SETTINGS
    @given(data=mutated(seed, **opts), fmt=st.sampled_from([".splat", ".spz", ".compressed.ply", ".ply"]))
    def check(data, fmt):
        with tempfile.TemporaryDirectory() as t:
            src, dst = Path(t) / "in.ply", Path(t) / f"out{fmt}"
            src.write_bytes(data)

            def export():
                err = io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    rc = export_main([str(src), str(dst)])
                if rc == 1:  # a bad input, reported on stderr
                    raise ExportRefused(err.getvalue())
                assert rc == 0, rc
                return rc

            if run_reader("splat-export", export, (ExportRefused,), [f"error: {src}"]) is None:
                assert sorted(x.name for x in Path(t).iterdir()) == ["in.ply"]  # no output, no temporary file

    check()


def test_fuzz_training_checkpoints(tmp_path_factory):
    from splat.train.checkpoint import load_checkpoint

    buf = io.BytesIO()
    torch.save({"version": 2, "step": 3, "model": "static", "splats": _splats(), "scene_scale": 1.0,
                "optimizer": {}, "strategy_state": {}, "train_seconds": 1.0, "history": [], "config": {}}, buf)
    seed = buf.getvalue()

    @FUZZ_SETTINGS
    @given(data=any_bytes([seed]))
    def check(data):
        run_reader_on_file("training checkpoint", "ckpt.pt", data, load_checkpoint, (ValueError,))

    check()


def test_fuzz_sgi():
    from splat.image2d import codec
    from splat.image2d.files import load_image2d
    from splat.models.image2d import Image2D

    g = torch.Generator().manual_seed(0)
    m = Image2D(torch.rand(40, 2, generator=g) * 16, torch.rand(40, 3, generator=g) + 0.5, torch.rand(40, 3, generator=g),
                16, 12, "sum", 7)
    seed = codec.encode(m, None, codec.CodecConfig(qat_iterations=0))[0]

    @FUZZ_SETTINGS
    @given(data=st.one_of(mutated(seed, fix=crc_fix), st.binary(max_size=512)))
    def check(data):
        run_reader_on_file(".sgi", "m.sgi", data, load_image2d, (ValueError,))

    check()


# ------------------------------------------------------------------ datasets


def _png(arr) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, format="PNG")
    return b.getvalue()


@pytest.fixture(scope="module")
def colmap_seed(tmp_path_factory):
    from test_data import make_colmap

    root = tmp_path_factory.mktemp("colmap")
    make_colmap(root / "bin", n_images=3, cameras=(("OPENCV", 16, 12),), n_points=8)
    make_colmap(root / "txt", n_images=3, binary=False, n_points=8)
    return root


def _dataset_check(name, files: dict, base: Path):
    """Copy `base` to a fresh folder, write `files` over it, load it."""
    with tempfile.TemporaryDirectory() as t:
        scene = Path(t) / "scene"
        shutil.copytree(base, scene)
        for rel, data in files.items():
            (scene / rel).write_bytes(data)
        run_reader(name, lambda: load_dataset(scene, undistort=True), (DatasetError,), [str(scene)])


@pytest.mark.parametrize("layout", ["bin", "txt"])
@pytest.mark.parametrize("part", ["cameras", "images", "points3D"])
def test_fuzz_colmap_models(colmap_seed, layout, part):
    base = colmap_seed / layout
    rel = f"sparse/0/{part}.{layout}"
    seed = (base / rel).read_bytes()

    @FUZZ_SETTINGS
    @given(data=mutated(seed, text_header=layout == "txt"))
    def check(data):
        _dataset_check(f"COLMAP {part}.{layout}", {rel: data}, base)

    check()


@pytest.fixture(scope="module")
def json_seeds(tmp_path_factory):
    from synthetic_data import make_views, write_blender
    from test_data import make_nerfstudio

    root = tmp_path_factory.mktemp("json")
    write_blender(root / "blender", make_views(n_views=4, width=12, height=10, n_gauss=20), test_ids=(0,))
    make_nerfstudio(root / "ns", n=3, W=12, H=10)
    return root


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=5),
                           max_leaves=12)


@pytest.mark.parametrize("layout,rel", [("blender", "transforms_train.json"), ("ns", "transforms.json")])
def test_fuzz_transforms_json(json_seeds, layout, rel):
    base = json_seeds / layout
    seed = (base / rel).read_bytes()
    meta = json.loads(seed)

    def replace_somewhere(value, path):
        obj = json.loads(seed)
        node = obj
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return json.dumps(obj, allow_nan=True).encode()

    paths = [(k,) for k in meta] + [("frames", 0, k) for k in meta["frames"][0]]
    structured = st.builds(replace_somewhere, JSON_VALUES, st.sampled_from(paths))

    @FUZZ_SETTINGS
    @given(data=st.one_of(mutated(seed), structured))
    def check(data):
        _dataset_check(f"{rel} ({layout})", {rel: data}, base)

    check()


@pytest.fixture(scope="module")
def image_seeds():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    out = {}
    for fmt, mode_arr in (("PNG", rgb), ("JPEG", rgb), ("TIFF", rng.random((9, 11), dtype=np.float32)),
                          ("BMP", rgb), ("WEBP", rgb)):
        b = io.BytesIO()
        Image.fromarray(mode_arr).save(b, format=fmt)
        out[fmt] = b.getvalue()
    b = io.BytesIO()
    Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA").save(b, format="PNG")
    out["PNG-RGBA"] = b.getvalue()
    return out


@pytest.mark.parametrize("fmt", ["PNG", "PNG-RGBA", "JPEG", "TIFF", "BMP", "WEBP"])
def test_fuzz_images(image_seeds, fmt):
    from splat.io.images import read_image

    seed = image_seeds[fmt]

    @FUZZ_SETTINGS
    @given(data=mutated(seed), orientation=st.sampled_from(["stored", "exif"]))
    def check(data, orientation):
        img = run_reader_on_file(f"image {fmt}", f"img.{fmt.split('-')[0].lower()}", data,
                                 lambda p: read_image(p, orientation), (FormatError,))
        if img is not None:
            rgb = img.rgb_float()
            assert rgb.ndim == 3 and rgb.shape[2] == 3 and np.isfinite(rgb).all()
            assert rgb.min() >= 0 and rgb.max() <= 1

    check()


def test_fuzz_image_in_a_dataset(json_seeds):
    """A corrupt image inside a dataset is a DatasetError naming it."""
    base = json_seeds / "blender"
    seed = (base / "train" / "r_0.png").read_bytes()

    @FUZZ_SETTINGS
    @given(data=mutated(seed))
    def check(data):
        _dataset_check("dataset image", {"train/r_0.png": data}, base)

    check()


@pytest.mark.slow
def test_fuzz_long_run(tmp_path):
    """The same suite with 500 examples per reader (`scripts/fuzz.py`): no failure."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(root / "scripts" / "fuzz.py"), "--examples", "500",
                        "--json", str(tmp_path / "fuzz.json")], capture_output=True, text=True, timeout=3600)
    counts = json.loads((tmp_path / "fuzz.json").read_text())
    assert r.returncode == 0 and counts["total"]["failed"] == 0, r.stdout[-4000:]
    assert counts["total"]["tried"] > 10_000
