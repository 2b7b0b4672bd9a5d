"""Pure-torch reference of the whole rasterization pipeline.

This backend is the oracle every other backend is tested against. It is
written to be read, not to be fast: every stage is plain vectorised torch,
differentiable by autograd, in whatever dtype it is given (float64 for
gradchecks). It mirrors `rasterizer_cuda/include/splat_math.h` line by line.

Stages (each a function with the same signature in every backend):
  project            world -> camera, EWA projection, blur, conic, radii
  spherical_harmonics view-dependent colour from SH coefficients
  isect_tiles        tile binning: (camera | tile | depth) keys, sorted
  rasterize_to_pixels per tile, front-to-back alpha compositing
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..io.common import MIN_QUAT_NORM2

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.99
TRANSMITTANCE_EPS = 1e-4
MAX_EXTEND = 3.33
# |q|^2 below MIN_QUAT_NORM2 (1e-24: |q| < 1e-12, torch's normalize eps) is the identity rotation, the
# policy splat.io's readers and writers apply too (one constant; splat_math.h's kMinQuatNorm2 is its C twin)


# ------------------------------------------------------------------ projection
def quat_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] (w, x, y, z), not necessarily unit -> [..., 3, 3].

    A degenerate quaternion (``|q|^2 < MIN_QUAT_NORM2``, e.g. all zeros) is the identity
    rotation with zero gradient, as on the native backends (gsplat's ``F.normalize`` gives
    the same rotation)."""
    n2 = (quats * quats).sum(-1, keepdim=True)
    degenerate = n2 < MIN_QUAT_NORM2
    safe = torch.where(degenerate, torch.ones_like(n2), n2)
    identity = torch.zeros_like(quats)
    identity[..., 0] = 1.0
    q = torch.where(degenerate, identity, quats / torch.sqrt(safe))
    w, x, y, z = q.unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    )
    return R.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (w, x, y, z), w >= 0
    (Shepperd's method: the largest of the four diagonal combinations is the pivot)."""
    m = R
    tr = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cands = torch.stack([tr, m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]], -1)
    k = cands.argmax(-1)
    qs = []
    s = torch.sqrt(torch.clamp(1.0 + tr, min=1e-12)) * 2  # pivot w
    qs.append(torch.stack([0.25 * s, (m[..., 2, 1] - m[..., 1, 2]) / s, (m[..., 0, 2] - m[..., 2, 0]) / s,
                           (m[..., 1, 0] - m[..., 0, 1]) / s], -1))
    s = torch.sqrt(torch.clamp(1.0 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2], min=1e-12)) * 2  # pivot x
    qs.append(torch.stack([(m[..., 2, 1] - m[..., 1, 2]) / s, 0.25 * s, (m[..., 0, 1] + m[..., 1, 0]) / s,
                           (m[..., 0, 2] + m[..., 2, 0]) / s], -1))
    s = torch.sqrt(torch.clamp(1.0 + m[..., 1, 1] - m[..., 0, 0] - m[..., 2, 2], min=1e-12)) * 2  # pivot y
    qs.append(torch.stack([(m[..., 0, 2] - m[..., 2, 0]) / s, (m[..., 0, 1] + m[..., 1, 0]) / s, 0.25 * s,
                           (m[..., 1, 2] + m[..., 2, 1]) / s], -1))
    s = torch.sqrt(torch.clamp(1.0 + m[..., 2, 2] - m[..., 0, 0] - m[..., 1, 1], min=1e-12)) * 2  # pivot z
    qs.append(torch.stack([(m[..., 1, 0] - m[..., 0, 1]) / s, (m[..., 0, 2] + m[..., 2, 0]) / s,
                           (m[..., 1, 2] + m[..., 2, 1]) / s, 0.25 * s], -1))
    q = torch.gather(torch.stack(qs, -2), -2, k[..., None, None].expand(k.shape + (1, 4))).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quat_scale_to_factor(quats: Tensor, scales: Tensor) -> Tensor:
    """M = R S [N, 3, 3], the factor of the covariance M M^T (its columns: the scaled axes)."""
    return quat_to_rotmat(quats) * scales[..., None, :]


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """Sigma = (R S)(R S)^T, [N, 3, 3]."""
    M = quat_scale_to_factor(quats, scales)
    return M @ M.transpose(-1, -2)


def project(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Optional[Tensor],  # [N] or None: opacity-aware bounding boxes
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Project N Gaussians into C cameras.

    Returns radii [C, N, 2] int32 (0 = culled), means2d [C, N, 2], depths [C, N],
    conics [C, N, 3], compensations [C, N]. Culled entries hold zeros.
    """
    return project_covars(means, quat_scale_to_covar(quats, scales), opacities, viewmats, Ks, width, height,
                          eps2d, near_plane, far_plane, radius_clip, antialiased)


def project_covars(
    means: Tensor,  # [N, 3]
    cov: Tensor,  # [N, 3, 3] symmetric positive semi-definite world-space covariances
    opacities: Optional[Tensor],
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`project` for Gaussians given by their 3D covariances [N, 3, 3] instead of
    rotations and scales (gsplat's ``covars``; what a 4D Gaussian's time slice
    gives). Same outputs; differentiable in `cov` by autograd."""
    R = viewmats[:, :3, :3]  # [C, 3, 3]
    t = viewmats[:, :3, 3]  # [C, 3]
    # elementwise products summed over the last axis (not einsum/matmul, whose BLAS
    # reduction order depends on C and N): a camera's result is the same in any batch
    p = (R[:, None, :, :] * means[None, :, None, :]).sum(-1) + t[:, None, :]  # [C, N, 3]
    RC = (R[:, None, :, None, :] * cov[None, :, None, :, :].transpose(-1, -2)).sum(-1)  # R cov  [C, N, 3, 3]
    cov_c = (RC[:, :, :, None, :] * R[:, None, None, :, :]).sum(-1)  # R cov R^T  [C, N, 3, 3]

    x, y, z = p.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth, z, torch.ones_like(z))  # keep culled entries finite

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    # torch.clamp passes the whole gradient at the band's edge (as the native backward and gsplat do);
    # torch.minimum/maximum would split it between the tied inputs
    tx = z * torch.clamp(x / z, min=-lim_x_neg, max=lim_x_pos)
    ty = z * torch.clamp(y / z, min=-lim_y_neg, max=lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack(
        [fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], dim=-1
    ).reshape(z.shape + (2, 3))
    cov2d = J @ cov_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], dim=-1)
    return footprint_2d(means2d, cov2d, p[..., 2], in_depth, opacities, width, height, eps2d, radius_clip, antialiased)


def footprint_2d(means2d: Tensor, cov2d: Tensor, depths: Tensor, ok: Tensor, opacities: Optional[Tensor], width: int,
                 height: int, eps2d: float, radius_clip: float, antialiased: bool):
    """The 2D Gaussians' blur, conics, compensations and opacity-aware radii from their means [C, N, 2] and
    covariances [C, N, 2, 2] in pixels (EWA's or the unscented transform's): `project`'s outputs, culling
    where `ok` [C, N] is False, the blurred covariance is not positive definite, the radius is at most
    `radius_clip` or the footprint misses the image."""
    a, b, c = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    ok = ok & (det > 0)
    det = torch.where(ok, det, torch.ones_like(det))
    ratio = det_orig / det
    pos = ratio > 0  # a zero-area footprint (a flat Gaussian seen edge-on) compensates to 0, with zero gradient
    compensations = torch.where(pos, torch.sqrt(torch.where(pos, ratio, torch.ones_like(ratio))), 0.0)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)

    with torch.no_grad():
        extend = torch.full_like(depths, MAX_EXTEND)
        if opacities is not None:
            op = opacities[None, :].expand_as(depths)
            if antialiased:
                op = op * compensations
            ok = ok & (op >= ALPHA_THRESHOLD)
            ratio = torch.clamp(op / ALPHA_THRESHOLD, min=1.0)
            extend = torch.minimum(extend, torch.sqrt(2.0 * torch.log(ratio)))
        rx = torch.ceil(extend * torch.sqrt(torch.clamp(a, min=0)))
        ry = torch.ceil(extend * torch.sqrt(torch.clamp(c, min=0)))
        ok = ok & ~((rx <= radius_clip) & (ry <= radius_clip))
        mx, my = means2d[..., 0], means2d[..., 1]
        ok = ok & (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.stack([rx, ry], dim=-1) * ok[..., None]
        radii = radii.to(torch.int32)

    keep = ok[..., None]
    means2d = torch.where(keep, means2d, 0.0)
    conics = torch.where(keep, conics, 0.0)
    depths = torch.where(ok, depths, 0.0)
    compensations = torch.where(ok, compensations, 0.0)
    return radii, means2d, depths, conics, compensations


# ------------------------------------------------------------------ SH
SH_C0 = 0.2820947917738781
SH_C1 = 0.48860251190292


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH bases of unit directions [..., 3] -> [..., (degree+1)^2]."""
    x, y, z = dirs.unbind(-1)
    b = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        b += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        z2 = z * z
        fC1, fS1 = x * x - y * y, 2 * x * y
        b += [
            0.5462742152960395 * fS1,
            -1.092548430592079 * z * y,
            0.9461746957575601 * z2 - 0.3153915652525201,
            -1.092548430592079 * z * x,
            0.5462742152960395 * fC1,
        ]
    if degree >= 3:
        fC2, fS2 = x * fC1 - y * fS1, x * fS1 + y * fC1
        fTmpC = -2.285228997322329 * z2 + 0.4570457994644658
        b += [
            -0.5900435899266435 * fS2,
            1.445305721320277 * z * fS1,
            fTmpC * y,
            z * (1.865881662950577 * z2 - 1.119528997770346),
            fTmpC * x,
            1.445305721320277 * z * fC1,
            -0.5900435899266435 * fC2,
        ]
    if degree > 3:
        raise ValueError(f"sh_degree must be at most 3, got {degree}")
    return torch.stack(b, dim=-1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor, masks: Optional[Tensor] = None) -> Tensor:
    """Colour from SH: dirs [..., 3] (any length), coeffs [..., K, 3] -> [..., 3].

    Uses the first (degree + 1)^2 coefficients. Entries where `masks` is False are 0.
    """
    nb = (degree + 1) ** 2
    safe = dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(degree, dirs / safe)  # [..., nb]
    out = (basis[..., None] * coeffs[..., :nb, :]).sum(dim=-2)
    if masks is not None:
        out = torch.where(masks[..., None], out, 0.0)
    return out


# ------------------------------------------------------------------ tiles
def tile_bounds(means2d: Tensor, radii: Tensor, tile_size: int, tile_width: int, tile_height: int):
    """Tile rectangle [min, max) each Gaussian's bounding box covers; empty when culled."""
    tm = means2d.detach().float() / tile_size
    tr = radii.float() / tile_size
    tmin = torch.floor(tm - tr).int()
    tmax = torch.ceil(tm + tr).int()
    lim = torch.tensor([tile_width, tile_height], dtype=torch.int32, device=means2d.device)
    tmin = torch.minimum(torch.clamp(tmin, min=0), lim)
    tmax = torch.minimum(torch.clamp(tmax, min=0), lim)
    visible = (radii > 0).all(dim=-1)
    tmax = torch.where(visible[..., None], tmax, tmin)
    return tmin, tmax


@torch.no_grad()
def isect_tiles(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N, 2]
    depths: Tensor,  # [C, N]
    tile_size: int,
    tile_width: int,
    tile_height: int,
    tile_mask: Optional[Tensor] = None,  # [C * tile_height * tile_width] bool: tiles to bin into
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bin Gaussians into tiles and sort each tile's list by depth.

    Returns tiles_per_gauss [C, N] int32, isect_ids [M] int64 keys
    (camera << (tile_bits + 32) | tile << 32 | depth bits), flatten_ids [M]
    int32 (c * N + n), isect_offsets [C, tile_height, tile_width] int32 (start
    of each tile's run in the sorted list).
    """
    C, N = depths.shape
    device = means2d.device
    tmin, tmax = tile_bounds(means2d, radii, tile_size, tile_width, tile_height)
    span = tmax - tmin  # [C, N, 2]
    counts = (span[..., 0] * span[..., 1]).reshape(-1).long()  # [C*N]
    src = torch.repeat_interleave(torch.arange(C * N, device=device), counts)
    first = torch.cumsum(counts, 0) - counts
    j = torch.arange(src.numel(), device=device) - first[src]  # index within each rectangle
    w = span.reshape(-1, 2)[src, 0].long()
    tx = tmin.reshape(-1, 2)[src, 0].long() + j % w.clamp_min(1)
    ty = tmin.reshape(-1, 2)[src, 1].long() + j // w.clamp_min(1)
    cam = src // N
    tile = ty * tile_width + tx
    n_tiles = tile_width * tile_height
    if tile_mask is not None:
        sel = tile_mask[cam * n_tiles + tile]
        src, cam, tile = src[sel], cam[sel], tile[sel]
    tiles_per_gauss = torch.zeros(C * N, dtype=torch.int64, device=device)
    tiles_per_gauss.index_add_(0, src, torch.ones_like(src))
    tile_bits = max(n_tiles.bit_length(), 1)
    depth_bits = depths.float().reshape(-1).view(torch.int32).long()[src] & 0xFFFFFFFF
    keys = (cam << (tile_bits + 32)) | (tile << 32) | depth_bits
    keys, order = torch.sort(keys, stable=True)
    flatten_ids = src[order].int()
    # start of every (camera, tile) run
    run_keys = torch.arange(C * n_tiles, device=device)
    run_keys = ((run_keys // n_tiles) << (tile_bits + 32)) | ((run_keys % n_tiles) << 32)
    offsets = torch.searchsorted(keys, run_keys).int().reshape(C, tile_height, tile_width)
    return tiles_per_gauss.reshape(C, N).int(), keys, flatten_ids, offsets


# ------------------------------------------------------------------ compositing
def _pixel_centers(tile_size: int, x0: int, y0: int, dtype, device) -> Tensor:
    ys, xs = torch.meshgrid(
        torch.arange(tile_size, device=device, dtype=dtype),
        torch.arange(tile_size, device=device, dtype=dtype),
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1) + x0 + 0.5, ys.reshape(-1) + y0 + 0.5], dim=-1)  # [P, 2]


def composite_tile(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, pix: Tensor,
                   chunk: int = 128):
    """Front-to-back compositing of K depth-sorted Gaussians over P pixels.

    means2d [K, 2] (or [P, K, 2], a per-pixel copy), conics [K, 3], colors [K, D],
    opacities [K], pix [P, 2]. Returns (colour [P, D], final transmittance [P]).
    Gaussians are taken `chunk` at a time so that the loop can stop once every
    pixel is done, as the native backends do.
    """
    P, K = pix.shape[0], conics.shape[0]
    T = torch.ones(P, dtype=pix.dtype, device=pix.device)  # transmittance so far
    done = torch.zeros(P, dtype=torch.bool, device=pix.device)
    rgb = torch.zeros(P, colors.shape[-1], dtype=pix.dtype, device=pix.device)
    for s in range(0, K, chunk):
        sl = slice(s, s + chunk)
        d = means2d[..., sl, :] - pix[:, None, :]  # [P, k, 2]
        dx, dy = d[..., 0], d[..., 1]
        a, b, c = conics[sl, 0], conics[sl, 1], conics[sl, 2]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp(opacities[sl] * torch.exp(-sigma), max=MAX_ALPHA)
        alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, 0.0)
        one_minus = 1.0 - alpha
        prod = torch.cumprod(one_minus, dim=1)
        T_after = T[:, None] * prod  # transmittance after each Gaussian
        # A pixel stops at the first Gaussian that would take T to 1e-4 or below;
        # that Gaussian and all behind it are left out.
        keep = ((T_after > TRANSMITTANCE_EPS) & ~done[:, None]).detach()
        T_before = T[:, None] * torch.cat([torch.ones_like(prod[:, :1]), prod[:, :-1]], dim=1)
        rgb = rgb + (alpha * T_before * keep) @ colors[sl]
        T = T * torch.where(keep, one_minus, 1.0).prod(dim=1)
        done = done | ~keep.all(dim=1)
        if bool(done.all()):
            break
    return rgb, T


def _accumulate_abs(acc: Tensor, ids: Tensor, grad: Tensor) -> None:
    """Tensor hook: add each pixel's |d loss / d mean2d| ([P, K, 2]) into acc [C*N, 2]."""
    acc.index_add_(0, ids, grad.abs().sum(0))


def rasterize_to_pixels(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int,
    isect_offsets: Tensor,  # [C, th, tw]
    flatten_ids: Tensor,  # [M]
    backgrounds: Optional[Tensor] = None,  # [C, D]
    tile_mask: Optional[Tensor] = None,  # [C * th * tw] bool, tiles to render
    absgrad: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Render every (selected) tile; returns colours [C, H, W, D], alphas [C, H, W, 1].

    Pixels of tiles not in `tile_mask` are 0 in both outputs. With `absgrad`,
    backward leaves sum_pixels |d loss_pixel / d means2d| in `means2d.absgrad`.
    """
    C, N, D = colors.shape
    th, tw = isect_offsets.shape[1:]
    M = flatten_ids.numel()
    dtype, device = means2d.dtype, means2d.device
    P = tile_size * tile_size
    flat_offsets = torch.cat([isect_offsets.reshape(-1).long(), torch.tensor([M], device=device)]).tolist()
    m2 = means2d.reshape(C * N, 2)
    cn = conics.reshape(C * N, 3)
    cl = colors.reshape(C * N, D)
    op = opacities.reshape(C * N)
    abs_acc = torch.zeros_like(m2) if absgrad else None
    n_tiles = C * th * tw
    selected = list(range(n_tiles)) if tile_mask is None else tile_mask.nonzero().reshape(-1).tolist()
    tile_rgb, tile_T = [], []
    for t in selected:
        cam, rem = divmod(t, th * tw)
        ty, tx = divmod(rem, tw)
        start, end = flat_offsets[t], flat_offsets[t + 1]
        if end <= start:
            tile_rgb.append(torch.zeros(P, D, dtype=dtype, device=device))
            tile_T.append(torch.ones(P, dtype=dtype, device=device))
            continue
        ids = flatten_ids[start:end].long()
        pix = _pixel_centers(tile_size, tx * tile_size, ty * tile_size, dtype, device)
        mk = m2[ids]
        if absgrad:  # a per-pixel copy whose gradient is each pixel's own contribution
            mk = mk[None].repeat(P, 1, 1)
            mk.register_hook(lambda g, ids=ids: _accumulate_abs(abs_acc, ids, g))
        args = (mk, cn[ids], cl[ids], op[ids], pix)
        if torch.is_grad_enabled():
            # recompute the tile in backward rather than keep its [P, K] intermediates
            rgb, T = checkpoint(composite_tile, *args, use_reentrant=False)
        else:
            rgb, T = composite_tile(*args)
        tile_rgb.append(rgb)
        tile_T.append(T)
    if absgrad and means2d.requires_grad:
        means2d.register_hook(lambda g: setattr(means2d, "absgrad", abs_acc.reshape(C, N, 2)))

    # assemble the tiles into images: [C * th * tw, P, .] -> [C, H, W, .]
    sel = torch.tensor(selected, dtype=torch.long, device=device)
    img = torch.zeros(n_tiles, P, D, dtype=dtype, device=device)
    trans = torch.ones(n_tiles, P, dtype=dtype, device=device)
    rendered = torch.zeros(n_tiles, P, dtype=dtype, device=device)
    if selected:
        img = img.index_copy(0, sel, torch.stack(tile_rgb))
        trans = trans.index_copy(0, sel, torch.stack(tile_T))
        rendered[sel] = 1.0

    def to_image(x):
        x = x.reshape(C, th, tw, tile_size, tile_size, -1).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(C, th * tile_size, tw * tile_size, -1)[:, :height, :width]

    img, trans, rendered = to_image(img), to_image(trans), to_image(rendered)
    if torch.is_grad_enabled() and not img.requires_grad:
        # nothing was composited: stay in the autograd graph (zero gradients), as the native backends do
        img = img + 0.0 * (means2d.sum() + conics.sum() + colors.sum() + opacities.sum())
    alphas = (1.0 - trans) * rendered
    if backgrounds is not None:
        img = img + trans * backgrounds[:, None, None, :] * rendered
    return img, alphas


def rasterize_to_pixels_jvp(means2d, conics, colors, opacities, t_means2d, t_conics, t_colors, t_opacities,
                            width, height, tile_size, isect_offsets, flatten_ids, backgrounds=None, tile_mask=None):
    """Forward-mode derivative of `rasterize_to_pixels` (the reference for the native kernels):
    the tangents (t_colors [C,H,W,D], t_alphas [C,H,W,1]) of its outputs along the given
    tangents of its inputs, computed as d/du <J^T u, t> (reverse mode twice, float64-exact)."""
    with torch.enable_grad():
        xs = [x.detach().requires_grad_(True) for x in (means2d, conics, colors, opacities)]
        out_c, out_a = rasterize_to_pixels(*xs, width, height, tile_size, isect_offsets, flatten_ids, backgrounds,
                                           tile_mask)
        u_c = torch.zeros_like(out_c, requires_grad=True)
        u_a = torch.zeros_like(out_a, requires_grad=True)
        vjp = torch.autograd.grad((out_c, out_a), xs, (u_c, u_a), create_graph=True, allow_unused=True)
        dot = sum((g * t).sum() for g, t in zip(vjp, (t_means2d, t_conics, t_colors, t_opacities)) if g is not None)
        t_c, t_a = torch.autograd.grad(dot, (u_c, u_a), allow_unused=True)
    return (torch.zeros_like(out_c) if t_c is None else t_c.detach(),
            torch.zeros_like(out_a) if t_a is None else t_a.detach())

