"""The 2D image codec (.sgi) and the splat-image CLI: exact round trips, the file
layout read back independently, quantiser properties, corrupt/truncated files and
bad inputs with clear errors, and nothing half-written."""
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from splat.image2d import codec
from splat.image2d.cli import main as cli
from splat.image2d.fit import FitConfig, fit
from splat.metrics import psnr
from splat.image2d import load_image2d
from splat.models.image2d import Image2D


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # see tests/test_image2d.py: OpenMP threads spin-wait, and CI machines are shared
    from splat.backends import cpu

    lib, n = cpu.load(), torch.get_num_threads()
    torch.set_num_threads(1)
    lib.splat_set_num_threads(1)
    yield
    torch.set_num_threads(n)
    lib.splat_set_num_threads(n)


def _model(N=300, W=64, H=48, seed=0, mode="sum"):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(N, 2, generator=g) * torch.tensor([W, H], dtype=torch.float32)
    chol = torch.rand(N, 3, generator=g) * torch.tensor([3.0, 1.0, 3.0]) + torch.tensor([0.5, -0.5, 0.5])
    colors = torch.rand(N, 3, generator=g) * 0.6
    return Image2D(means, chol, colors, W, H, mode, 7)


def _target(W=64, H=48):
    y, x = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    img = torch.stack([x, y, 0.5 + 0.4 * torch.sin(6 * x + 4 * y)], -1)
    img[10:20, 30:45] = torch.tensor([0.9, 0.1, 0.2])
    return img


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("mode", ["sum", "topk"])
@pytest.mark.parametrize("cfg", [codec.CodecConfig(qat_iterations=0), codec.CodecConfig(chol_bits=9, rvq_stages=3,
                                                                                          codebook_bits=9)])
def test_round_trip_decodes_exactly_what_the_encoder_renders(mode, cfg):
    m = _model(mode=mode)
    data, encoder_model, _ = codec.encode(m, None, cfg)
    decoded = codec.decode_bytes(data)
    for k in ("means", "chol", "colors"):
        assert torch.equal(getattr(decoded, k), getattr(encoder_model, k)), k
    assert (decoded.width, decoded.height, decoded.mode) == (m.width, m.height, mode)
    if mode == "topk":
        assert decoded.topk == m.topk
    assert torch.equal(decoded.render(), encoder_model.render())
    # a second encode of the decoded symbols gives the same bytes
    assert codec.encode_bytes(codec.parse(data)) == data


def test_round_trip_after_fine_tuning_and_quality():
    target = _target()
    r = fit(target, FitConfig(num_gaussians=250, iterations=150), progress=False)
    plain, plain_model, _ = codec.encode(r.model, None, codec.CodecConfig(qat_iterations=0))
    data, enc_model, _ = codec.encode(r.model, target, codec.CodecConfig(qat_iterations=60))
    dec = codec.decode_bytes(data)
    assert torch.equal(dec.render(), enc_model.render())
    p_float = float(psnr(r.model.render(clamp=True), target))
    p_plain = float(psnr(plain_model.render(clamp=True), target))
    p_qat = float(psnr(dec.render(clamp=True), target))
    assert p_float > p_plain > 25.0         # quantisation costs something, not everything
    assert p_qat > p_plain - 0.05           # fine-tuning does not make it worse


def test_file_layout_read_independently():
    m = _model(N=200)
    cfg = codec.CodecConfig(qat_iterations=0, chol_bits=6, rvq_stages=2, codebook_bits=5)
    data, enc, _ = codec.encode(m, None, cfg)
    magic, version, mode, topk, D, W, H, N, cb, S, kb, _ = struct.unpack_from("<4sBBBBIIIBBBB", data, 0)
    assert (magic, version, mode, D, W, H, N, cb, S, kb) == (b"SGIC", 1, 0, 3, 64, 48, 200, 6, 2, 5)
    off = struct.calcsize("<4sBBBBIIIBBBB")
    step = np.frombuffer(data, "<f4", 3, off)
    zero = np.frombuffer(data, "<f4", 3, off + 12)
    books = np.frombuffer(data, "<f2", S * 2 ** kb * D, off + 24).reshape(S, 2 ** kb, D).astype(np.float32)
    off += 24 + books.size * 2
    (plen,) = struct.unpack_from("<I", data, off)
    assert len(data) == off + 4 + plen + 4
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[:-4])
    import zstandard

    payload = zstandard.ZstdDecompressor().decompress(data[off + 4:off + 4 + plen])
    assert len(payload) == N * (2 + 2 + 3 + S)
    planes = np.frombuffer(payload, np.uint8)
    dy = planes[:2 * N].reshape(2, N).T.copy().view("<u2")[:, 0].astype(np.int64)
    xk = planes[2 * N:4 * N].reshape(2, N).T.copy().view("<u2")[:, 0].astype(np.int64)
    chol_q = planes[4 * N:7 * N].reshape(3, N).T.astype(np.float32)
    idx = planes[7 * N:].reshape(S, N)

    def unkey(k):  # order-preserving uint16 key -> float16
        bits = np.where(k >= 0x8000, k & 0x7FFF, 0xFFFF - k).astype(np.uint16)
        return bits.view(np.float16).astype(np.float32)

    x, y = unkey(xk), unkey(np.cumsum(dy) & 0xFFFF)
    np.testing.assert_array_equal((x + 1) * (W / 2), enc.means[:, 0].numpy())
    np.testing.assert_array_equal((y + 1) * (H / 2), enc.means[:, 1].numpy())
    np.testing.assert_allclose(chol_q * step + zero, enc.chol.numpy(), rtol=0, atol=1e-6)
    colors = books[0][idx[0]] + books[1][idx[1]]
    np.testing.assert_allclose(colors, enc.colors.numpy(), rtol=0, atol=1e-7)
    assert np.all(np.diff(y) >= 0)  # stored by row


def test_quantiser_properties():
    m = _model(N=500)
    q = codec.quantize(m, codec.CodecConfig(chol_bits=5, codebook_bits=4))
    assert q.pos.dtype == torch.float16 and q.pos.abs().max() <= 1.0 + 1e-3
    assert int(q.chol_q.max()) < 2 ** 5 and int(q.chol_q.min()) >= 0
    assert q.codebooks.shape == (2, 16, 3) and int(q.indices.max()) < 16
    back = q.to_model()
    # positions within half a float16 step (2^-11 of [-1, 1] = W/2 * 2^-11 px) of the originals
    assert torch.allclose(torch.sort(back.means[:, 0]).values, torch.sort(m.means[:, 0]).values,
                          atol=32 * 2 ** -11 + 1e-6)
    # automatic codebook size follows N
    assert codec.CodecConfig().resolved_codebook_bits(500) == 4
    assert codec.CodecConfig().resolved_codebook_bits(10 ** 6) == 8


def test_ordered_keys_round_trip_all_half_floats():
    h = torch.arange(0, 65536, dtype=torch.int32).to(torch.int16).view(torch.float16)
    h = h[torch.isfinite(h)]
    keys = codec._ordered_key(h)
    back = codec._from_ordered_key(keys.numpy())
    np.testing.assert_array_equal(back.view(np.uint16), h.view(torch.int16).numpy().view(np.uint16))
    hf = h.float()
    order = torch.argsort(keys)
    assert bool((hf[order][1:] >= hf[order][:-1]).all())


def test_kmeans_finds_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    x = (centres[:, None] + 0.01 * torch.randn(4, 50, 3, generator=g)).reshape(-1, 3)
    c = codec.kmeans(x, 4, gen=g)
    d = torch.cdist(centres, c).min(1).values
    assert float(d.max()) < 0.01


def test_bits_per_pixel():
    assert codec.bits_per_pixel(1000, 100, 80) == pytest.approx(1.0)


# ---------------------------------------------------------------- bad files
@pytest.fixture(scope="module")
def sgi_bytes():
    return codec.encode(_model(N=150), None, codec.CodecConfig(qat_iterations=0))[0]


@pytest.mark.parametrize("cut", [0, 3, 10, 30, 60, -300, -5, -1])
def test_truncated_files_are_refused(sgi_bytes, cut):
    with pytest.raises(codec.CodecError, match="truncated|bad magic"):
        codec.decode_bytes(sgi_bytes[:cut], where="f.sgi")


def test_padded_file_is_refused(sgi_bytes):
    with pytest.raises(codec.CodecError, match="truncated or padded"):
        codec.decode_bytes(sgi_bytes + b"\0")


@pytest.mark.parametrize("pos", [40, 100, 400, -20])
def test_corrupt_byte_fails_the_checksum(sgi_bytes, pos):
    bad = bytearray(sgi_bytes)
    bad[pos] ^= 0x5A
    with pytest.raises(codec.CodecError, match="checksum mismatch|truncated"):
        codec.decode_bytes(bytes(bad), where="f.sgi")


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def test_corrupt_payload_with_valid_checksum(sgi_bytes):
    body = bytearray(sgi_bytes[:-4])
    body[-10] ^= 0xFF  # inside the zstd frame
    with pytest.raises(codec.CodecError, match="corrupt payload|payload holds|out of range"):
        codec.decode_bytes(_with_crc(bytes(body)))


def test_header_checks(sgi_bytes):
    body = bytearray(sgi_bytes[:-4])
    body[4] = 9  # version
    with pytest.raises(codec.CodecError, match="version 9 is not supported"):
        codec.decode_bytes(_with_crc(bytes(body)))
    body = bytearray(sgi_bytes[:-4])
    body[5] = 7  # mode
    with pytest.raises(codec.CodecError, match="invalid header"):
        codec.decode_bytes(_with_crc(bytes(body)))
    with pytest.raises(codec.CodecError, match="not a splat image codec file"):
        codec.decode_bytes(b"\x89PNG\r\n\x1a\n" + sgi_bytes[8:])


def test_bad_codec_configs():
    m = _model(N=20)
    for cfg, msg in ((codec.CodecConfig(chol_bits=0), "--chol-bits"), (codec.CodecConfig(rvq_stages=0), "--rvq-stages"),
                     (codec.CodecConfig(codebook_bits=13), "--codebook-bits"),
                     (codec.CodecConfig(qat_iterations=-1), "--qat-iterations")):
        with pytest.raises(ValueError, match=msg):
            codec.encode(m, None, cfg)
    with pytest.raises(ValueError, match="no Gaussians"):
        codec.quantize(m.subset(slice(0, 0)), codec.CodecConfig())


# ---------------------------------------------------------------- CLI
@pytest.fixture
def png(tmp_path):
    p = tmp_path / "img.png"
    Image.fromarray((_target().numpy() * 255).astype(np.uint8)).save(p)
    return p


def test_cli_fit_render_encode_decode(tmp_path, png, capsys):
    model = tmp_path / "m.pt"
    assert cli(["fit", str(png), "--num-gaussians", "120", "--iterations", "60", "--out", str(model),
                "--no-progress"]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    for k in ("psnr", "ms_ssim", "seconds", "num_gaussians"):
        assert k in report
    assert report["num_gaussians"] == 120 and report["psnr"] > 15 and report["ms_ssim"] is None  # < 161 px
    m = load_image2d(model)
    target = torch.from_numpy(np.asarray(Image.open(png)).astype(np.float32) / 255)
    assert float(psnr(m.render(clamp=True), target)) == pytest.approx(report["psnr"], abs=1e-4)
    assert (tmp_path / "m_render.png").is_file()

    assert cli(["render", str(model), "--scale", "2.5"]) == 0
    up = Image.open(tmp_path / "m_x2.5.png")
    assert up.size == (160, 120)
    assert cli(["render", str(model), "--crop", "3", "4", "20", "10", "--out", str(tmp_path / "c.png")]) == 0
    crop = np.asarray(Image.open(tmp_path / "c.png"))
    full = np.asarray(Image.open(tmp_path / "m_render.png"))
    np.testing.assert_array_equal(crop, full[4:14, 3:23])

    sgi = tmp_path / "m.sgi"
    assert cli(["encode", str(model), "--image", str(png), "--qat-iterations", "10", "--out", str(sgi)]) == 0
    assert "bpp" in capsys.readouterr().out
    assert cli(["decode", str(sgi), "--out", str(tmp_path / "d.png"), "--model-out", str(tmp_path / "d.pt")]) == 0
    dec = load_image2d(tmp_path / "d.pt")
    assert torch.equal(dec.render(), load_image2d(sgi).render())
    assert Image.open(tmp_path / "d.png").size == (64, 48)


def test_cli_bad_inputs(tmp_path, png, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert cli(["fit", str(text), "--iterations", "1", "--out", str(tmp_path / "x.pt"), "--no-progress"]) == 2
    assert "not an image" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()
    assert cli(["fit", str(tmp_path / "missing.png")]) == 2
    assert "no such image file" in capsys.readouterr().err
    assert cli(["fit", str(png), "--num-gaussians", "0", "--no-progress"]) == 2
    assert "--num-gaussians" in capsys.readouterr().err
    assert cli(["render", str(png)]) == 2
    assert "not a splat 2D image model" in capsys.readouterr().err
    bad = tmp_path / "bad.sgi"
    data = codec.encode(_model(N=50), None, codec.CodecConfig(qat_iterations=0))[0]
    bad.write_bytes(data[:-7])
    out = tmp_path / "never.png"
    assert cli(["decode", str(bad), "--out", str(out)]) == 2
    assert "truncated" in capsys.readouterr().err
    assert not out.exists()
    assert cli(["render", str(bad)]) == 2
    assert "truncated" in capsys.readouterr().err
    model = tmp_path / "m.pt"
    _model(N=30).save(model)
    assert cli(["render", str(model), "--scale", "0"]) == 2
    assert "scale must be a positive number" in capsys.readouterr().err
    other = tmp_path / "other.png"
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(other)
    assert cli(["encode", str(model), "--image", str(other)]) == 2
    assert "was fitted to 64x48" in capsys.readouterr().err
