"""PlayCanvas SOG (.sog v2): round trips, the layout read by an independent decoder written here from
the format's description (zipfile + json + Pillow), splat-transform's files, bad files."""
import io
import json
import math
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import splat.io as sio
from splat.io import FormatError
from splat.io.sog import encode_sog, image_shape, read_sog, sog_order, write_sog

DATA = Path(__file__).parent / "data" / "sog"
ST = Path(__file__).parents[1] / "tools" / "splat-transform" / "node_modules" / ".bin" / "splat-transform"


def make_splats(n=200, degree=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(means=torch.randn(n, 3, generator=g) * 3, scales=torch.randn(n, 3, generator=g) * 0.5 - 3,
                quats=torch.randn(n, 4, generator=g), opacities=torch.randn(n, generator=g) * 3,
                sh0=torch.randn(n, 1, 3, generator=g), shN=torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=g) * 0.3)


# ------------------------------------------------------------------ an independent decoder
def independent_decode(path):
    """The SOG v2 description applied by hand: meta.json, RGBA pixels in raster order, the log
    transform of positions, smallest-three quaternions, codebooks, the SH palette."""
    z = zipfile.ZipFile(path)
    meta = json.loads(z.read("meta.json"))
    assert meta["version"] == 2
    n = meta["count"]

    def px(name):
        im = Image.open(io.BytesIO(z.read(name)))
        assert im.format == "WEBP"
        return np.asarray(im.convert("RGBA")).reshape(-1, 4)[:n].astype(np.float64), im.size

    lo, size = px(meta["means"]["files"][0])
    hi, _ = px(meta["means"]["files"][1])
    v = np.array(meta["means"]["mins"]) + (np.array(meta["means"]["maxs"]) - meta["means"]["mins"]) * \
        (lo[:, :3] + 256 * hi[:, :3]) / 65535
    means = np.sign(v) * (np.exp(np.abs(v)) - 1)
    q, _ = px(meta["quats"]["files"][0])
    quats = np.zeros((n, 4))
    for i in range(n):
        largest = int(q[i, 3]) - 252
        others = [c for c in range(4) if c != largest]
        vals = (q[i, :3] / 255 * 2 - 1) / math.sqrt(2)
        quats[i, others] = vals
        quats[i, largest] = math.sqrt(max(0.0, 1 - (vals ** 2).sum()))
    s, _ = px(meta["scales"]["files"][0])
    scales = np.array(meta["scales"]["codebook"])[s[:, :3].astype(int)]
    c, _ = px(meta["sh0"]["files"][0])
    sh0 = np.array(meta["sh0"]["codebook"])[c[:, :3].astype(int)]
    alpha = c[:, 3] / 255
    shN = None
    if "shN" in meta:
        coeffs = {1: 3, 2: 8, 3: 15}[meta["shN"]["bands"]]
        cen = np.asarray(Image.open(io.BytesIO(z.read(meta["shN"]["files"][0]))).convert("RGBA")).astype(int)
        assert cen.shape[1] == 64 * coeffs
        lab, _ = px(meta["shN"]["files"][1])
        book = np.array(meta["shN"]["codebook"])
        shN = np.zeros((n, coeffs, 3))
        for i in range(n):
            label = int(lab[i, 0] + 256 * lab[i, 1])
            row, col = divmod(label, 64)
            for j in range(coeffs):
                shN[i, j] = book[cen[row, col * coeffs + j, :3]]
    return dict(means=means, quats=quats, scales=scales, sh0=sh0, alpha=alpha, shN=shN, size=size, meta=meta)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_our_sog_matches_the_independent_decoder_and_the_original(tmp_path, degree):
    s = make_splats(150, degree)
    p = write_sog(tmp_path / "m.sog", s, order="none")
    d = independent_decode(p)
    r = read_sog(p)
    # the reader and the hand-written decoder agree
    np.testing.assert_allclose(r["means"].numpy(), d["means"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["scales"].numpy(), d["scales"], rtol=1e-6)
    np.testing.assert_allclose(r["sh0"][:, 0].numpy(), d["sh0"], rtol=1e-6)
    np.testing.assert_allclose(torch.sigmoid(r["opacities"]).numpy(), np.clip(d["alpha"], 1e-6, 1 - 1e-6), atol=1e-6)
    np.testing.assert_allclose(r["quats"].numpy(), d["quats"], atol=1e-6)
    if degree:
        np.testing.assert_allclose(r["shN"].numpy(), d["shN"], rtol=1e-6)
    else:
        assert d["shN"] is None and r["shN"].shape == (150, 0, 3)
    # layout: PlayCanvas's image size, the meta fields readers need
    H, W = image_shape(150)
    assert d["size"] == (W, H) == (16, 12)
    assert set(d["meta"]) >= {"version", "count", "means", "scales", "quats", "sh0"}
    # against the original, within the format's quantisation
    o = {k: v.double().numpy() for k, v in s.items()}
    lv = np.sign(o["means"]) * np.log1p(np.abs(o["means"]))
    step = (lv.max(0) - lv.min(0)) / 65535
    back = np.sign(d["means"]) * np.log1p(np.abs(d["means"]))
    assert (np.abs(back - lv) <= 0.51 * step + 1e-9).all()
    qn = o["quats"] / np.linalg.norm(o["quats"], axis=1, keepdims=True)
    dots = np.abs((qn * d["quats"]).sum(1))
    assert dots.min() > 1 - 2e-5  # the same rotation up to sign
    assert np.abs(d["alpha"] - 1 / (1 + np.exp(-o["opacities"]))).max() <= 0.5 / 255 + 1e-9
    book = np.array(d["meta"]["scales"]["codebook"])
    gaps = np.diff(np.sort(book)).max()
    assert np.abs(d["scales"] - o["scales"]).max() <= gaps / 2 + 1e-6
    assert np.abs(d["scales"] - o["scales"]).mean() < 0.01
    assert np.abs(d["sh0"] - o["sh0"][:, 0]).mean() < 0.01
    if degree:  # 150 Gaussians, a default palette of 1024: every vector its own entry
        assert np.abs(d["shN"] - o["shN"]).max() <= np.diff(np.array(d["meta"]["shN"]["codebook"])).max() / 2 + 1e-6


def test_orders_lay_the_gaussians_out_as_asked(tmp_path):
    s = make_splats(300, 1)
    for order in ("morton", np.random.default_rng(0).permutation(300)):
        perm = sog_order(s["means"].numpy(), order)
        r = read_sog(write_sog(tmp_path / "m.sog", s, order=order))
        np.testing.assert_allclose(r["means"].numpy(), s["means"].numpy()[perm], rtol=2e-3, atol=2e-3)
    with pytest.raises(FormatError, match="permutation"):
        write_sog(tmp_path / "x.sog", s, order=np.zeros(300, int))
    with pytest.raises(FormatError, match="unknown SOG order"):
        write_sog(tmp_path / "x.sog", s, order="hilbert")
    assert not (tmp_path / "x.sog").exists()


def test_a_list_of_orders_writes_the_smallest():
    s = make_splats(400, 1)
    chosen = []
    rand = np.random.default_rng(1).permutation(400)
    best = encode_sog(s, order=[rand, "morton"], chosen=chosen)
    assert chosen == [1] and best == encode_sog(s, order="morton")  # a random layout compresses worse
    assert len(encode_sog(s, order=rand)) > len(best)


def test_palette_smaller_than_the_gaussians(tmp_path):
    s = make_splats(500, 2)
    g = torch.Generator().manual_seed(1)  # SH vectors around 16 centres: the palette finds them
    centres = torch.randn(16, 8, 3, generator=g) * 0.3
    s["shN"] = centres[torch.randint(0, 16, (500,), generator=g)] + 0.01 * torch.randn(500, 8, 3, generator=g)
    r = read_sog(write_sog(tmp_path / "m.sog", s, order="none", sh_palette=16))
    meta = json.loads(zipfile.ZipFile(tmp_path / "m.sog").read("meta.json"))
    assert meta["shN"]["count"] <= 16 and meta["shN"]["bands"] == 2
    assert len(np.unique(r["shN"].reshape(500, -1).numpy(), axis=0)) <= 16
    # each Gaussian gets its cluster's entry: the error is the noise (0.01 x sqrt(24)), not the spread
    err = (r["shN"] - s["shN"]).reshape(500, -1).norm(dim=1)
    assert err.max() < 0.15 and err.mean() < 0.08


def test_one_gaussian_and_transparent_colours(tmp_path):
    s = make_splats(1, 3)
    s["opacities"][:] = -30.0  # alpha byte 0: its colour must survive (lossless WebP 'exact')
    r = read_sog(write_sog(tmp_path / "one.sog", s))
    assert r["means"].shape == (1, 3)
    assert (r["sh0"] - s["sh0"]).abs().max() < 1e-6  # one value: its own codebook entry
    assert torch.sigmoid(r["opacities"]).item() < 1e-5


def test_io_load_and_save_by_name(tmp_path):
    s = make_splats(64, 1)
    p = sio.save(tmp_path / "m.sog", s)
    assert sio.detect_format(p) == "sog"
    r = sio.load(p)
    assert r["shN"].shape == (64, 3, 3)
    q = tmp_path / "noext"
    shutil.copy(p, q)
    assert sio.load(q)["means"].shape == (64, 3)  # sniffed: a zip


def test_unbundled_meta_json(tmp_path):
    s = make_splats(64, 1)
    p = write_sog(tmp_path / "m.sog", s, order="none")
    d = tmp_path / "unbundled"
    zipfile.ZipFile(p).extractall(d)
    a, b = read_sog(p), sio.load(d / "meta.json")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_reads_splat_transform_sog():
    """A file written by PlayCanvas splat-transform 3.7.0 (from the .ply beside it): read back within
    the format's quantisation of the source, matched by position (it writes Morton order)."""
    src = sio.load(DATA / "splat_transform_source.ply")
    r = read_sog(DATA / "splat_transform_3.7.0.sog")
    assert r["means"].shape == src["means"].shape and r["shN"].shape == src["shN"].shape
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(src["means"].numpy()).query(r["means"].numpy())
    assert len(np.unique(idx)) == len(idx) and dist.max() < 2e-3
    o = {k: v[idx] for k, v in src.items()}
    meta = json.loads(zipfile.ZipFile(DATA / "splat_transform_3.7.0.sog").read("meta.json"))
    # its WebP encoder drops the colour of fully transparent pixels: Gaussians whose opacity byte is 0
    seen = torch.floor(torch.sigmoid(o["opacities"]) * 255) > 0
    assert 0 < int((~seen).sum()) < 20
    for k in ("scales", "sh0"):  # each value is its nearest codebook entry
        half_gap = np.diff(np.sort(np.array(meta[k]["codebook"]))).max() / 2
        assert (r[k] - o[k])[seen].abs().max() <= half_gap + 1e-5, k
    assert (torch.sigmoid(r["opacities"]) - torch.sigmoid(o["opacities"])).abs().max() < 1.01 / 255
    qo = torch.nn.functional.normalize(o["quats"], dim=1)
    assert ((r["quats"] * qo).sum(1).abs() > 0.999).all()
    # its SH palette (k-means) merges some vectors: far below the SH's own size
    assert (r["shN"] - o["shN"]).abs().mean() < 0.25 * o["shN"].abs().mean()
    # and our reader decodes its file as the hand-written decoder does
    d = independent_decode(DATA / "splat_transform_3.7.0.sog")
    np.testing.assert_allclose(r["means"].numpy(), d["means"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r["shN"].numpy(), d["shN"], rtol=1e-6)
    np.testing.assert_allclose(r["quats"].numpy(), d["quats"], atol=1e-6)


@pytest.mark.skipif(not ST.exists() and not os.environ.get("SPLAT_REQUIRE_SPLAT_TRANSFORM"),
                    reason="splat-transform not installed (scripts/install_splat_transform.sh)")
def test_splat_transform_reads_our_sog(tmp_path):
    """PlayCanvas splat-transform (the reference implementation) converts our .sog to a .ply that
    holds what our reader reads."""
    s = make_splats(400, 3)
    p = write_sog(tmp_path / "ours.sog", s)
    subprocess.run([str(ST), "-w", str(p), str(tmp_path / "back.ply")], check=True, capture_output=True, timeout=120)
    theirs, ours = sio.load(tmp_path / "back.ply"), read_sog(p)
    for k in ("means", "scales", "sh0", "shN"):
        np.testing.assert_allclose(theirs[k].numpy(), ours[k].numpy(), rtol=1e-5, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(torch.sigmoid(theirs["opacities"]).numpy(), torch.sigmoid(ours["opacities"]).numpy(),
                               atol=1e-5)
    assert ((theirs["quats"] * ours["quats"]).sum(1).abs() > 1 - 1e-5).all()


# ------------------------------------------------------------------ bad files
def _zip(tmp_path, meta, files=None, name="bad.sog"):
    p = tmp_path / name
    with zipfile.ZipFile(p, "w") as z:
        if meta is not None:
            z.writestr("meta.json", meta if isinstance(meta, str) else json.dumps(meta))
        for k, v in (files or {}).items():
            z.writestr(k, v)
    return p


def _good(tmp_path):
    p = write_sog(tmp_path / "good.sog", make_splats(40, 1), order="none")
    z = zipfile.ZipFile(p)
    return json.loads(z.read("meta.json")), {n: z.read(n) for n in z.namelist() if n != "meta.json"}


@pytest.mark.parametrize("case, match", [
    ("not_zip", "not a readable zip"),
    ("no_meta", "no meta.json"),
    ("bad_json", "not valid JSON"),
    ("v1", "version 1"),
    ("v3", "unsupported SOG version 3"),
    ("count", "'count' must be a positive integer"),
    ("missing_image", "no quats.webp"),
    ("not_webp", "not a readable WebP"),
    ("small_image", "too small for"),
    ("sizes_differ", "must have one size"),
    ("codebook", "'scales.codebook' must be 256 finite"),
    ("quat_tag", "252..255"),
    ("label", "palette entry"),
    ("mins", "'means.mins'"),
])
def test_bad_files(tmp_path, case, match):
    meta, files = _good(tmp_path)
    if case == "not_zip":
        p = tmp_path / "bad.sog"
        p.write_bytes(b"PK\x03\x04 this is no zip")
    elif case == "no_meta":
        p = _zip(tmp_path, None, files)
    elif case == "bad_json":
        p = _zip(tmp_path, "{not json", files)
    else:
        if case == "v1":
            del meta["version"]
        elif case == "v3":
            meta["version"] = 3
        elif case == "count":
            meta["count"] = -4
        elif case == "missing_image":
            del files["quats.webp"]
        elif case == "not_webp":
            files["scales.webp"] = b"RIFF\x00\x00\x00\x00WEBPjunk"
        elif case == "small_image":
            meta["count"] = 10_000
        elif case == "sizes_differ":
            img = np.zeros((16, 8, 4), np.uint8)
            img[..., 3] = 252
            buf = io.BytesIO()
            Image.fromarray(img, "RGBA").save(buf, "WEBP", lossless=True, exact=True)
            files["quats.webp"] = buf.getvalue()
        elif case == "codebook":
            meta["scales"]["codebook"] = meta["scales"]["codebook"][:100]
        elif case == "quat_tag":
            img = np.asarray(Image.open(io.BytesIO(files["quats.webp"])).convert("RGBA")).copy()
            img[0, 0, 3] = 17
            buf = io.BytesIO()
            Image.fromarray(img, "RGBA").save(buf, "WEBP", lossless=True, exact=True)
            files["quats.webp"] = buf.getvalue()
        elif case == "label":
            meta["shN"]["count"] = 1
        elif case == "mins":
            meta["means"]["mins"] = [0, 0]
        p = _zip(tmp_path, meta, files)
    with pytest.raises(FormatError, match=match) as e:
        read_sog(p)
    assert str(p) in str(e.value)


def test_null_codebook_entries_read_as_far_below(tmp_path):
    """Older writers stored -Infinity (a flat Gaussian's log scale) as JSON null."""
    meta, files = _good(tmp_path)
    meta["scales"]["codebook"][0] = None
    r = read_sog(_zip(tmp_path, meta, files, "null.sog"))
    book = [v for v in meta["scales"]["codebook"] if v is not None]
    assert float(r["scales"].min()) >= min(book) - 20 - 1e-5
    meta["scales"]["codebook"] = [None] * 256
    with pytest.raises(FormatError, match="256 finite"):
        read_sog(_zip(tmp_path, meta, files, "allnull.sog"))


def test_failed_write_leaves_nothing(tmp_path):
    s = make_splats(10, 0)
    s["means"][3, 1] = float("nan")
    with pytest.raises(FormatError, match="non-finite"):
        write_sog(tmp_path / "x.sog", s)
    with pytest.raises(FormatError, match="palette size"):
        write_sog(tmp_path / "x.sog", make_splats(10, 1), sh_palette=0)
    assert list(tmp_path.iterdir()) == []


def test_encode_is_deterministic():
    s = make_splats(120, 2)
    data = encode_sog(s)
    assert data == encode_sog(s)
    # no clock in the file: the zip entries carry a fixed timestamp
    assert {i.date_time for i in zipfile.ZipFile(io.BytesIO(data)).infolist()} == {(1980, 1, 1, 0, 0, 0)}


# ------------------------------------------------------------------ review: odd containers and orders
def _flag_encrypted(data: bytes) -> bytes:
    """The zip with bit 0 (encrypted) set in every local and central header."""
    b = bytearray(data)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = b.find(sig)
        while i >= 0:
            b[i + off] |= 1
            i = b.find(sig, i + 4)
    return bytes(b)


def _corrupt_entry(data: bytes, name: bytes, skip: int = 0) -> bytes:
    """The zip with entry `name`'s (compressed) data scrambled from its byte `skip` on."""
    b = bytearray(data)
    i = b.find(b"PK\x03\x04")
    while b[i + 30:i + 30 + int.from_bytes(b[i + 26:i + 28], "little")] != name:
        i = b.find(b"PK\x03\x04", i + 4)
    start = i + 30 + int.from_bytes(b[i + 26:i + 28], "little") + int.from_bytes(b[i + 28:i + 30], "little")
    for k in range(start + skip, start + skip + 35):
        b[k] ^= 0x55
    return bytes(b)


@pytest.mark.parametrize("case", ["deflate", "lzma", "encrypted", "method", "version"])
def test_unreadable_zip_entries_are_format_errors(tmp_path, case):
    """Corrupt deflate/LZMA data, encryption, compression methods and zip versions zipfile lacks:
    FormatError naming the file (zipfile raises zlib.error, LZMAError, RuntimeError, NotImplementedError)."""
    meta, files = _good(tmp_path)
    comp = {"deflate": zipfile.ZIP_DEFLATED, "lzma": zipfile.ZIP_LZMA}.get(case, zipfile.ZIP_STORED)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=comp) as z:
        z.writestr("meta.json", json.dumps(meta))
        for k, v in files.items():
            z.writestr(k, v)
    data = buf.getvalue()
    if case in ("deflate", "lzma"):
        data = _corrupt_entry(data, b"means_l.webp", 0 if case == "deflate" else 5)  # zlib.error / LZMAError
    elif case == "encrypted":
        data = _flag_encrypted(data)
    elif case == "version":  # "version needed to extract" 20.2 in the first central directory entry
        b = bytearray(data)
        i = b.find(b"PK\x01\x02")
        b[i + 6] = 202
        data = bytes(b)
    else:  # compression method 99 (AES, not in zipfile) in the central directory entry of meta.json
        b = bytearray(data)
        i = b.find(b"PK\x01\x02")
        b[i + 10:i + 12] = (99).to_bytes(2, "little")
        data = bytes(b)
    p = tmp_path / f"{case}.sog"
    p.write_bytes(data)
    with pytest.raises(FormatError) as e:
        read_sog(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("case", ["deep", "big_codebook", "big_mins"])
def test_meta_json_beyond_python_limits(tmp_path, case):
    """JSON nested past the recursion limit and integers beyond float64: FormatError, not
    RecursionError / OverflowError."""
    meta, files = _good(tmp_path)
    if case == "deep":
        text = "[" * 100_000 + "]" * 100_000
    else:
        if case == "big_codebook":
            meta["scales"]["codebook"][5] = 10 ** 400
        else:
            meta["means"]["mins"][0] = 10 ** 400
        text = json.dumps(meta)
    p = _zip(tmp_path, text, files, f"{case}.sog")
    with pytest.raises(FormatError) as e:
        read_sog(p)
    assert str(p) in str(e.value)


def test_order_must_hold_integers_and_errors_name_the_file(tmp_path):
    s = make_splats(5, 0)
    for bad in (np.array([0.5, 1, 2, 3, 4]), np.array([0, 1, 2, 3, np.nan]), np.array(["a"] * 5), np.arange(4)):
        with pytest.raises(FormatError, match="permutation of the integers") as e:
            write_sog(tmp_path / "x.sog", s, order=bad)
        assert str(tmp_path / "x.sog") in str(e.value)
    with pytest.raises(FormatError, match="unknown SOG order") as e:
        write_sog(tmp_path / "x.sog", s, order="plas")
    assert str(tmp_path / "x.sog") in str(e.value)
    for effort in (-5, 200, 50.5):  # Pillow's bare "invalid configuration" before
        with pytest.raises(FormatError, match="webp_effort must be an integer 0..100") as e:
            write_sog(tmp_path / "x.sog", s, webp_effort=effort)
        assert str(tmp_path / "x.sog") in str(e.value)
    assert list(tmp_path.iterdir()) == []
    r = read_sog(write_sog(tmp_path / "f.sog", s, order=np.array([4.0, 3, 2, 1, 0])))  # floats holding integers
    assert r["means"].shape == (5, 3)
    # a plain list of integers is one permutation, not a list of candidate orders
    a = read_sog(write_sog(tmp_path / "l.sog", s, order=[4, 3, 2, 1, 0]))
    b = read_sog(write_sog(tmp_path / "a.sog", s, order=np.array([4, 3, 2, 1, 0])))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["means"], read_sog(write_sog(tmp_path / "n.sog", s, order="none"))["means"])


def test_directory_of_an_unbundled_sog_opens(tmp_path):
    """splat.io.load and load_model (splat-view, splat-export) take the directory holding meta.json."""
    from splat.train.run import load_model

    s = make_splats(30, 1)
    p = write_sog(tmp_path / "m.sog", s, order="none")
    d = tmp_path / "unbundled"
    zipfile.ZipFile(p).extractall(d)
    a = read_sog(p)
    for b in (sio.load(d), load_model(d)[0].to_splats()):
        for k in a:
            assert torch.equal(a[k], b[k].float()), k
