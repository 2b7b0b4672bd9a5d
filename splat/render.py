"""The public functional API: `rasterize(...)`, a drop-in for `gsplat.rasterization`.

Every backend provides the same four stages (see `splat.backends.torch_ref`):
project, spherical_harmonics, isect_tiles and rasterize_to_pixels. This module
checks the inputs, picks a backend and glues the stages together, so that the
glue (render modes, backgrounds, antialiasing, the info dict) is written once.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Literal, Optional, Tuple

import torch
from torch import Tensor

from .backends import get as get_backend
from .camera_models import is_distorted
from .cameras import Cameras, check_camera_args

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
RasterizeMode = Literal["classic", "antialiased"]
Backend = Literal["auto", "torch", "cpu", "cuda", "raytrace"]
CameraModel = Literal["pinhole", "ortho", "fisheye"]

_RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
_RASTERIZE_MODES = ("classic", "antialiased")


def rasterize(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: Optional[int] = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: Optional[Tensor] = None,
    render_mode: RenderMode = "RGB",
    absgrad: bool = False,
    rasterize_mode: RasterizeMode = "classic",
    channel_chunk: int = 32,
    backend: Backend = "auto",
    tiles: Optional[Tensor] = None,
    covars: Optional[Tensor] = None,
    camera_model: CameraModel = "pinhole",
    radial_coeffs: Optional[Tensor] = None,
    tangential_coeffs: Optional[Tensor] = None,
    thin_prism_coeffs: Optional[Tensor] = None,
    rolling_shutter="global",
    viewmats_rs: Optional[Tensor] = None,
    with_ut: Optional[bool] = None,
    raytrace_options: Optional[Dict] = None,
) -> Tuple[Tensor, Tensor, Dict]:
    """Rasterize (or ray trace) N 3D Gaussians into C cameras.

    Arguments and results follow `gsplat.rasterization` (unpacked layout):

    Args:
        means: [N, 3] centres. quats: [N, 4] (w, x, y, z), any norm.
        scales: [N, 3] linear scales. opacities: [N] in [0, 1].
        colors: [N, D] or [C, N, D] features, or SH coefficients [N, K, 3] or
            [C, N, K, 3] when `sh_degree` is given ((sh_degree + 1)^2 <= K <= 16).
            SH colours are evaluated along camera->Gaussian and offset by 0.5,
            clamped at 0, as in 3DGS.
        viewmats: [C, 4, 4] world-to-camera (OpenCV). Ks: [C, 3, 3].
        width, height: image size in pixels.
        near_plane, far_plane: depth culling. radius_clip: cull Gaussians whose
            projected radius is at most this many pixels.
        eps2d: low-pass filter added to the 2D covariance.
        packed: only False (the [C, N, ...] layout) is supported.
        tile_size: tile edge in pixels (1..32).
        backgrounds: [C, D] colours behind the Gaussians.
        render_mode: "RGB", "D" (accumulated depth), "ED" (expected depth),
            "RGB+D", "RGB+ED": depth is appended as the last channel.
        absgrad: also accumulate |d loss / d means2d| per pixel into
            `info["means2d"].absgrad` on backward (AbsGS).
        rasterize_mode: "classic" or "antialiased" (Mip-Splatting's opacity
            compensation for the eps2d blur).
        channel_chunk: features are rendered this many channels at a time.
        backend: "auto" (cuda for CUDA tensors, else the native cpu backend,
            else torch), "torch" (reference), "cpu", "cuda", or "raytrace" (3DGRT:
            rays through a BVH of the Gaussians, `splat.backends.raytrace`; the
            per-Gaussian outputs in info come from the projection as for the others).
        tiles: optional LongTensor of flat tile indices in
            [0, C * tile_height * tile_width) to render; other pixels are 0
            (for pixel-partitioned multi-GPU training).
        covars: optional [N, 3, 3] world-space covariances (gsplat's ``covars``):
            when given, `quats` and `scales` are ignored and may be None. A 4D
            Gaussian's slice in time is such a covariance (`splat.models.fourdgs`).
            Projection then runs in torch (differentiable in `covars`) on every
            backend; tiling and compositing stay on the chosen backend.
        camera_model: "pinhole", "ortho" or "fisheye" (`splat.camera_models`), with
            gsplat's radial_coeffs [C,6] (pinhole: OpenCV k1..k6) or [C,4] (fisheye:
            Kannala-Brandt k1..k4), tangential_coeffs [C,2], thin_prism_coeffs [C,4].
        rolling_shutter: "global" (default), "top_to_bottom", "left_to_right",
            "bottom_to_top", "right_to_left" (or gsplat's RollingShutterType); the pose
            moves from `viewmats` to `viewmats_rs` [C,4,4] over the read-out.
        with_ut: project with the unscented transform (3DGUT, `splat.backends.ut`, in
            torch on every backend) instead of EWA. None (default): only where EWA
            cannot (any camera but an undistorted global-shutter pinhole); False there
            raises ValueError.
        raytrace_options: keyword options of `splat.backends.raytrace.render` for
            backend="raytrace": ``{"dilate": False}`` leaves out the 3D dilation that
            stands for eps2d, ``{"reference": True}`` traces with the dense torch reference.

    Returns:
        render_colors [C, H, W, D'], render_alphas [C, H, W, 1], info: a dict
        with radii [C, N, 2], means2d [C, N, 2] (retain_grad() it to read 2D
        gradients), depths, conics, opacities [C, N], tiles_per_gauss [C, N],
        isect_ids, flatten_ids, isect_offsets [C, th, tw], tile_width,
        tile_height, tile_size, width, height, n_cameras, backend, and
        visibility [C, N] bool.
    """
    if covars is not None:
        if not isinstance(covars, Tensor) or covars.dim() != 3 or covars.shape[1:] != (3, 3) \
                or not isinstance(means, Tensor) or covars.shape[0] != means.shape[0]:
            _fail(f"covars must be [N, 3, 3] with N = len(means), got {_shape_of(covars)} for means "
                  f"{_shape_of(means)}")
        # the rotation/scale inputs are not used; stand-ins of the right shape keep the checks in one place
        quats = covars.new_zeros(covars.shape[0], 4)
        scales = covars.new_zeros(covars.shape[0], 3)
    N = _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                      backgrounds, render_mode, rasterize_mode, tile_size, packed, tiles, near_plane, eps2d,
                      covars)
    if not isinstance(channel_chunk, int) or channel_chunk < 1:
        _fail(f"channel_chunk must be a positive int, got {channel_chunk!r}")
    C = viewmats.shape[0]
    rolling_shutter = check_camera_args(C, camera_model, radial_coeffs, tangential_coeffs, thin_prism_coeffs,
                                           rolling_shutter, viewmats_rs, viewmats)
    needs_ut = camera_model != "pinhole" or rolling_shutter != "global" or is_distorted(
        radial_coeffs, tangential_coeffs, thin_prism_coeffs)
    if with_ut is False and needs_ut:
        _fail(f"with_ut=False: EWA projects undistorted global-shutter pinhole cameras only; this is a "
              f"{camera_model} camera" + (" with distortion" if is_distorted(
                  radial_coeffs, tangential_coeffs, thin_prism_coeffs) else "")
              + (f" with a {rolling_shutter} rolling shutter" if rolling_shutter != "global" else ""))
    use_ut = needs_ut or bool(with_ut)
    if raytrace_options and backend != "raytrace":
        _fail("raytrace_options apply to backend='raytrace' only")
    if backend == "raytrace":
        bad = set(raytrace_options or {}) - {"dilate", "reference"}
        if bad:
            _fail(f"raytrace_options takes 'dilate' and 'reference', got {sorted(bad)}")
        if absgrad:
            _fail("absgrad=True (AbsGS) sums per-pixel 2D gradients, which the ray tracer does not form; "
                  "use absgrad=False with backend='raytrace'")
        if means.dtype not in (torch.float32, torch.float64):
            _fail(f"backend='raytrace' takes float32 or float64 tensors, got {means.dtype}")
        if viewmats.requires_grad:
            _fail("backend='raytrace' gives no gradient to viewmats (its rays are data); refine poses with a "
                  "rasterizer backend")
    impl = get_backend(backend, means.device, means.dtype)
    antialiased = rasterize_mode == "antialiased"

    if use_ut:
        from .backends import ut

        radii, means2d, depths, conics, compensations = ut.project_ut(
            means, None if covars is not None else quats, None if covars is not None else scales,
            opacities.detach(), viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip, antialiased,
            camera_model, radial_coeffs, tangential_coeffs, thin_prism_coeffs, rolling_shutter, viewmats_rs, covars)
    elif covars is None:
        radii, means2d, depths, conics, compensations = impl.project(
            means, quats, scales, opacities.detach(), viewmats, Ks, width, height,
            eps2d, near_plane, far_plane, radius_clip, antialiased,
        )
    else:
        from .backends import torch_ref

        radii, means2d, depths, conics, compensations = torch_ref.project_covars(
            means, covars, opacities.detach(), viewmats, Ks, width, height,
            eps2d, near_plane, far_plane, radius_clip, antialiased,
        )
    visible = (radii > 0).all(dim=-1)
    opac = opacities[None, :].expand(C, N)
    if antialiased:
        opac = opac * compensations

    if sh_degree is None:
        feats = colors if colors.dim() == 3 else colors[None].expand(C, N, colors.shape[-1])
    else:
        campos = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])  # -R^T t
        dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
        feats = sh_colors(sh_degree, dirs, colors, None if impl.NAME == "raytrace" else visible,
                          impl.spherical_harmonics)

    if render_mode in ("RGB+D", "RGB+ED"):
        feats = torch.cat([feats, depths[..., None]], dim=-1)
        if backgrounds is not None:
            backgrounds = torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], dim=-1)
    elif render_mode in ("D", "ED"):
        feats = depths[..., None]
        if backgrounds is not None:
            backgrounds = backgrounds.new_zeros(C, 1)

    tile_width = math.ceil(width / tile_size)
    tile_height = math.ceil(height / tile_size)
    tile_mask = None
    if tiles is not None:
        tile_mask = torch.zeros(C * tile_width * tile_height, dtype=torch.bool, device=means.device)
        tile_mask[tiles.to(means.device).long()] = True
    if impl.NAME == "raytrace":
        tiles_per_gauss = isect_ids = flatten_ids = isect_offsets = None
        if radius_clip > 0:  # what the rasterizer culls as too small, the tracer leaves out too
            opac = opac * (radii.amax(-1) > radius_clip)
        camera = dict(camera_model=camera_model, radial_coeffs=radial_coeffs, tangential_coeffs=tangential_coeffs,
                      thin_prism_coeffs=thin_prism_coeffs, rolling_shutter=rolling_shutter, viewmats_rs=viewmats_rs)
        render_colors, render_alphas, means2d = impl.render(
            means, quats, scales, covars, opac, feats, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
            means2d, backgrounds, camera, tile_size, tile_mask, **(raytrace_options or {}))
    else:
        tiles_per_gauss, isect_ids, flatten_ids, isect_offsets = impl.isect_tiles(
            means2d, radii, depths, tile_size, tile_width, tile_height, tile_mask
        )

        D = feats.shape[-1]
        chunk = min(channel_chunk, getattr(impl, "MAX_CHANNELS", channel_chunk))
        chunks = []
        for lo in range(0, D, chunk):
            bg = None if backgrounds is None else backgrounds[:, lo : lo + chunk]
            chunks.append(
                impl.rasterize_to_pixels(
                    means2d, conics, feats[..., lo : lo + chunk].contiguous(), opac, width, height,
                    tile_size, isect_offsets, flatten_ids, bg, tile_mask, absgrad,
                )
            )
        render_colors = torch.cat([c for c, _ in chunks], dim=-1) if len(chunks) > 1 else chunks[0][0]
        render_alphas = chunks[0][1]

    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat(
            [render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], dim=-1
        )

    info = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opac,
        "visibility": visible,
        "tile_width": tile_width,
        "tile_height": tile_height,
        "tiles_per_gauss": tiles_per_gauss,
        "isect_ids": isect_ids,
        "flatten_ids": flatten_ids,
        "isect_offsets": isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_cameras": C,
        "backend": impl.NAME,
        "viewmats": viewmats,
        "Ks": Ks,
        "near_plane": near_plane,
        "far_plane": far_plane,
        "eps2d": eps2d,
        "rasterize_mode": rasterize_mode,
        "camera_model": camera_model,
        "with_ut": use_ut,
    }
    return render_colors, render_alphas, info


def sh_colors(sh_degree: int, dirs: Tensor, coeffs: Tensor, masks: Optional[Tensor] = None,
              spherical_harmonics=None) -> Tensor:
    """3DGS's view-dependent colour: the SH coefficients [..., K, 3] evaluated along `dirs` [..., 3]
    (camera -> Gaussian), offset by 0.5 and clamped at 0 -> [..., 3]; 0.5 where `masks` is False.
    `spherical_harmonics`: a backend's stage of that name (default: the torch reference's)."""
    if spherical_harmonics is None:
        from .backends.torch_ref import spherical_harmonics
    return torch.clamp_min(spherical_harmonics(sh_degree, dirs, coeffs, masks) + 0.5, 0.0)


@dataclasses.dataclass
class Gaussians:
    """Renderable 3D Gaussians: what every model kind turns a camera batch into.

    means [N,3]; quats [N,4] (w,x,y,z, any norm); scales [N,3] linear; opacities [N]
    in [0,1]; colors [N,D] or [C,N,D] features, or SH coefficients [N,K,3] / [C,N,K,3]
    when ``sh_degree`` is set (the degree to evaluate, as `rasterize` takes it).
    ``covars`` [N,3,3], when set, replaces quats and scales (which may then be None):
    the time slice of a 4D Gaussian is a general covariance. ``ids`` [N] (int64), when
    set, are the rows of the model's per-Gaussian parameters these Gaussians come from
    (a model that renders a subset, such as the Gaussians alive at one time); `render`
    reports them as ``info["param_ids"]`` so density control updates the right rows.
    """

    means: Tensor
    quats: Optional[Tensor]
    scales: Optional[Tensor]
    opacities: Tensor
    colors: Tensor
    sh_degree: Optional[int] = None
    covars: Optional[Tensor] = None
    ids: Optional[Tensor] = None

    def __len__(self) -> int:
        return int(self.means.shape[0])


@dataclasses.dataclass(frozen=True)
class RenderSettings:
    """How to render, chosen once per run: the backend and the rasterize mode
    (`rasterize`'s arguments of the same names). Models pass them on to any extra
    render pass they make (a shadow pass from a light, for instance)."""

    backend: Backend = "auto"
    rasterize_mode: RasterizeMode = "classic"
    near_plane: float = 0.01
    """Depth below which Gaussians are culled (world units; `for_scene` scales it)."""
    far_plane: float = 1e10
    """Depth beyond which Gaussians are culled (world units)."""

    def for_scene(self, scene_scale: float) -> "RenderSettings":
        """These settings with the near and far planes of a scene of size `scene_scale`
        (``NEAR_PLANE * scene_scale``, ``FAR_PLANE * scene_scale``), so that a scene at 1e-3 or
        1e3 renders like the same scene at 1 (gsplat's fixed 0.01 culls a millimetre scene)."""
        if not (math.isfinite(scene_scale) and scene_scale > 0):
            raise ValueError(f"scene_scale must be a positive finite number, got {scene_scale}")
        return dataclasses.replace(self, near_plane=NEAR_PLANE * scene_scale, far_plane=FAR_PLANE * scene_scale)


NEAR_PLANE = 0.01  # in units of the scene scale (the training views' extent, 3DGS's cameras_extent)
FAR_PLANE = 1e10


def render_gaussians(gaussians: Gaussians, cameras: Cameras, settings: RenderSettings = RenderSettings(),
                     **kwargs) -> Tuple[Tensor, Tensor, Dict]:
    """`rasterize` for a `Gaussians` set and a `Cameras` batch.

    Other keyword arguments go to `rasterize` (backgrounds, render_mode, absgrad, tiles,
    ...). Returns `rasterize`'s (colors [C,H,W,D], alphas [C,H,W,1], info), info with
    ``param_ids`` (the Gaussians' ``ids``, None for all rows in order). The cameras' model,
    distortion and rolling shutter go to `rasterize` (projected by the unscented transform where
    they are not an undistorted global-shutter pinhole)."""
    g = gaussians
    kwargs.setdefault("near_plane", settings.near_plane)
    kwargs.setdefault("far_plane", settings.far_plane)
    colors, alphas, info = rasterize(g.means, g.quats, g.scales, g.opacities, g.colors, cameras.viewmats, cameras.Ks,
                                     cameras.width, cameras.height, sh_degree=g.sh_degree, backend=settings.backend,
                                     rasterize_mode=settings.rasterize_mode, covars=g.covars,
                                     **camera_arguments(cameras), **kwargs)
    info["param_ids"] = g.ids
    info["gaussians"] = g  # what was rendered (density control may render it again, e.g. `blend_weights`)
    return colors, alphas, info


def camera_arguments(cameras: Cameras) -> Dict:
    """`rasterize`'s camera-model keyword arguments for a `Cameras` batch."""
    return dict(camera_model=cameras.camera_model, radial_coeffs=cameras.radial_coeffs,
                tangential_coeffs=cameras.tangential_coeffs, thin_prism_coeffs=cameras.thin_prism_coeffs,
                rolling_shutter=cameras.rolling_shutter, viewmats_rs=cameras.viewmats_rs)


# per-camera, per-Gaussian entries of `rasterize`'s info ([C, N, ...]) that `merge_infos` scatters
_PER_GAUSSIAN_INFO = ("radii", "means2d", "depths", "conics", "opacities", "visibility")


def merge_infos(infos, num_gaussians: int) -> Dict:
    """One info for several renders of the same model (a training step's batch of views rendered
    one per call: different image sizes, or a model whose geometry depends on the camera).

    Each info's per-Gaussian entries ([C_k, M_k, ...], rows ``param_ids`` of the model's
    ``num_gaussians``, or all rows in order) are scattered into [sum C_k, num_gaussians, ...]
    (zeros for rows a render did not have) and concatenated over cameras, with their
    ``.grad`` (and ``absgrad``) where the backward has run, so a density strategy reads them
    as from one batched render. Gradients of ``means2d`` are rescaled to the first render's
    image size (strategies normalise by ``info["width"]``/``["height"]``, which are that
    size's). ``viewmats`` and ``Ks`` are concatenated; ``param_ids`` and ``gaussians`` are None;
    ``parts`` holds the infos merged (for what needs each render's own Gaussians).

    Raises ``ValueError`` for no infos."""
    if not infos:
        raise ValueError("merge_infos: no infos")
    W0, H0 = infos[0]["width"], infos[0]["height"]
    out = {"width": W0, "height": H0, "param_ids": None, "camera_ids": None, "gaussian_ids": None, "gaussians": None,
           "parts": list(infos),
           **{k: infos[0].get(k) for k in ("near_plane", "far_plane", "eps2d", "rasterize_mode")},
           "n_cameras": sum(i["n_cameras"] for i in infos), "backend": infos[0]["backend"],
           "viewmats": torch.cat([i["viewmats"] for i in infos]), "Ks": torch.cat([i["Ks"] for i in infos])}
    for key in _PER_GAUSSIAN_INFO:
        parts = {"value": [], "grad": [], "absgrad": []}
        for info in infos:
            t = info[key]
            ids = info.get("param_ids")
            scale = None
            if key == "means2d":
                scale = t.new_tensor([info["width"] / W0, info["height"] / H0])

            def full(x):
                x = x.detach()
                if ids is None:
                    return x
                buf = x.new_zeros((x.shape[0], num_gaussians) + tuple(x.shape[2:]))
                buf[:, ids] = x
                return buf

            parts["value"].append(full(t))
            for g in ("grad", "absgrad"):
                has = t.is_floating_point() and (g == "absgrad" or t.is_leaf or t.retains_grad)
                v = getattr(t, g, None) if has else None
                parts[g].append(None if v is None else full(v if scale is None else v * scale))
        merged = torch.cat(parts["value"])
        if merged.is_floating_point():
            merged.requires_grad_(False)
            if all(g is not None for g in parts["grad"]):
                merged.grad = torch.cat(parts["grad"])
            if all(g is not None for g in parts["absgrad"]):
                merged.absgrad = torch.cat(parts["absgrad"])
        out[key] = merged
    return out


def _fail(msg: str):
    raise ValueError(f"splat.rasterize: {msg}")


def _shape_of(t) -> str:
    return str(list(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree,
                  backgrounds, render_mode, rasterize_mode, tile_size, packed, tiles, near_plane, eps2d,
                  covars=None) -> int:
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
               "viewmats": viewmats, "Ks": Ks}
    if covars is not None:
        tensors["covars"] = covars
    if backgrounds is not None:
        tensors["backgrounds"] = backgrounds
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            _fail(f"{name} must be a floating-point tensor, got {t.dtype}")
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) > 1:
        _fail("all tensors must share one dtype, got " + ", ".join(f"{k}={v.dtype}" for k, v in tensors.items()))
    devices = {t.device for t in tensors.values()}
    if len(devices) > 1:
        _fail("all tensors must be on one device, got " + ", ".join(f"{k}={v.device}" for k, v in tensors.items()))
    if packed:
        _fail("packed=True is not supported; pass packed=False (info is returned in the [C, N, ...] layout)")
    if means.dim() != 2 or means.shape[-1] != 3:
        _fail(f"means must be [N, 3], got {list(means.shape)}")
    N = means.shape[0]
    if quats.shape != (N, 4):
        _fail(f"quats must be [N, 4] = [{N}, 4], got {list(quats.shape)}")
    if scales.shape != (N, 3):
        _fail(f"scales must be [N, 3] = [{N}, 3], got {list(scales.shape)}")
    if opacities.shape != (N,):
        _fail(f"opacities must be [N] = [{N}], got {list(opacities.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        _fail(f"viewmats must be [C, 4, 4], got {list(viewmats.shape)}")
    C = viewmats.shape[0]
    if C == 0:
        _fail("viewmats holds no cameras")
    if C * N >= 2 ** 31:
        _fail(f"{C} cameras x {N} Gaussians exceed the int32 index range of the tile lists; "
              "render fewer cameras per call")
    if Ks.shape != (C, 3, 3):
        _fail(f"Ks must be [C, 3, 3] = [{C}, 3, 3], got {list(Ks.shape)}")
    if sh_degree is None:
        if not ((colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N))):
            _fail(f"colors must be [N, D] or [C, N, D] (N={N}, C={C}) without sh_degree, got {list(colors.shape)}")
        D = colors.shape[-1]
    else:
        if not isinstance(sh_degree, int) or not 0 <= sh_degree <= 3:
            _fail(f"sh_degree must be an int in 0..3, got {sh_degree!r}")
        ok = (colors.dim() == 3 and colors.shape[0] == N) or (colors.dim() == 4 and colors.shape[:2] == (C, N))
        if not ok or colors.shape[-1] != 3:
            _fail(f"SH colors must be [N, K, 3] or [C, N, K, 3] (N={N}, C={C}), got {list(colors.shape)}")
        K = colors.shape[-2]
        if K < (sh_degree + 1) ** 2:
            _fail(f"sh_degree={sh_degree} needs at least {(sh_degree + 1) ** 2} SH coefficients, colors has {K}")
        D = 3
    if not (isinstance(width, int) and isinstance(height, int)) or width <= 0 or height <= 0:
        _fail(f"width and height must be positive ints, got {width!r} x {height!r}")
    if not isinstance(tile_size, int) or not 1 <= tile_size <= 32:
        _fail(f"tile_size must be an int in 1..32, got {tile_size!r}")
    if render_mode not in _RENDER_MODES:
        _fail(f"render_mode must be one of {_RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in _RASTERIZE_MODES:
        _fail(f"rasterize_mode must be one of {_RASTERIZE_MODES}, got {rasterize_mode!r}")
    if backgrounds is not None:
        if backgrounds.shape != (C, D):
            _fail(f"backgrounds must be [C, D] = [{C}, {D}], got {list(backgrounds.shape)}")
    if not near_plane > 0:
        _fail(f"near_plane must be > 0, got {near_plane}")
    if C and not bool(((Ks[:, 0, 0] > 0) & (Ks[:, 1, 1] > 0)).all()):
        _fail("Ks must have positive focal lengths (fx = Ks[:, 0, 0], fy = Ks[:, 1, 1])")
    if not eps2d >= 0:
        _fail(f"eps2d must be >= 0, got {eps2d}")
    if tiles is not None:
        n_tiles = C * math.ceil(width / tile_size) * math.ceil(height / tile_size)
        if not isinstance(tiles, Tensor) or tiles.dim() != 1 or tiles.is_floating_point():
            _fail("tiles must be a 1-D integer tensor of flat tile indices")
        if tiles.numel() and (int(tiles.min()) < 0 or int(tiles.max()) >= n_tiles):
            _fail(f"tiles must lie in [0, {n_tiles}) for {C} camera(s) of {math.ceil(width / tile_size)}x"
                  f"{math.ceil(height / tile_size)} tiles")
    # one pass per tensor (min and max; NaN propagates into both), one transfer for all of them
    names = [k for k, t in tensors.items() if t.numel()]
    if names:
        ranges = torch.stack([torch.stack(torch.aminmax(tensors[k].detach())) for k in names]).tolist()
        for name, (lo, hi) in zip(names, ranges):
            if not (math.isfinite(lo) and math.isfinite(hi)):
                _fail(f"{name} contains NaN or Inf values")
        if N:
            lo, hi = ranges[names.index("opacities")]
            if lo < 0 or hi > 1:
                _fail("opacities must lie in [0, 1] (apply a sigmoid to logits first)")
    return N
