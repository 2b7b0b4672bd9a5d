"""Relightable Gaussians (``--model relightable``): novel view and novel point light.

After Bi et al., "GS^3: Efficient Relighting with Triple Gaussian Splatting" (SIGGRAPH
Asia 2024): spatial Gaussians whose colour under a light comes from a reflectance
(Lambertian plus a mixture of angular Gaussians), a shadow value per Gaussian from
splatting all Gaussians toward the light, refined by a small network, and a second
network for what direct lighting misses (interreflection). Everything renders through
`splat.rasterize`, on every backend: the shadow pass is one more rasterize call, from
the light.

Shading (per Gaussian i, camera c with its point light at ``l`` of radiant intensity I,
linear RGB):

    wi = (l - x_i) / |l - x_i|,  wo = (o_c - x_i) / |o_c - x_i|,  h = (wi + wo) / |wi + wo|
    n  = the Gaussian's unit normal, flipped to face the camera (two-sided)
    f  = albedo / pi + sum_k rho_k exp(lambda_k (h . mu_k - 1))      (mu_k: unit lobe axes)
    L_i = f max(n . wi, 0) I / |l - x_i|^2 * S_i  +  R_i

with S_i the shadow (the light's transmittance at the Gaussian, refined) and R_i the
residual network's RGB (scaled by the irradiance at the scene centre). The radiance is
clamped to [0, 1] and encoded to sRGB per Gaussian (the images are 8-bit sRGB, and their
alpha edges were blended in sRGB), then composited by the rasterizer as any colour.

Shadow pass (`shadow_transmittance`): a camera at the light looks at the Gaussians'
bounding sphere (a cube map of six 90-degree faces when the light is inside it). The
rasterizer renders L "opacity layers" at depths d_0 < ... < d_{L-1} spanning the
Gaussians: channel k of Gaussian j is a ramp, 0 for layers at or in front of its depth
z_j and 1 for layers a layer spacing D or more behind it, so the rendered channel k is
the opacity accumulated up to depth d_k along each light ray (a deep opacity map; exact
for a hard step, since the rasterizer composites front to back). A Gaussian's
transmittance is 1 minus that opacity at its own projected centre, read at its depth
less a bias of one layer spacing plus ``shadow_bias`` standard deviations of the Gaussian
along the ray (so it never shadows itself), interpolated bilinearly in the image and
linearly between layers. Differentiable through the rasterizer and the ramps; the layer
placement (from the Gaussians' depth range) and the bias are not differentiated.

Parameters (per Gaussian): means [N,3], scales [N,3] (log), quats [N,4], opacities [N]
(logit), albedo [N,3] (logit), normals [N,3] (any norm), lobe_axes [N,K,3] (world
directions, any norm; GS^3 states them in a local frame, which is the same family of
lobes, but a frame built from the normal turns when the normal flips to face the
camera and a lobe stated in it would jump), lobe_sharpness [N,K] (log lambda, capped at
log 1000), lobe_rgb [N,K,3] (logit of rho / rho_max),
features [N,F] (the networks' per-Gaussian input). Shared: light_prior [8] (scene
centre, mean train light intensity, mean light distance and height above the centre:
defaults for rendering and export), shadow_w1..b2 (refinement: logit S = logit T +
MLP(T, n . wi, wi, features)) and residual_w1..b2 (R = rho_max sigmoid(MLP(features, wi,
wo)) I / |l - centre|^2).

Bounded reflectances: rho_max = 4 / E_ref, with E_ref the training lights' mean irradiance
at the scene centre (their mean intensity over their mean distance squared): a lobe or a
residual brighter than 4x what saturates the 8-bit images cannot be observed, and without
a bound Adam walks an amplitude whose lobe the training views never see (a tiny but
steady gradient, normalised to a full step) up by orders of magnitude, to flare at a new
light.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, Mapping, NamedTuple, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..backends.torch_ref import quat_to_rotmat, sh_basis
from ..cameras import Cameras, look_at
from ..render import Gaussians, RenderSettings, rasterize
from .base import Model, learning_rate_decay
from .nets import mlp_apply, mlp_names, mlp_params
from .static import init_splats

__all__ = ["RelightableConfig", "RelightableModel", "Shading", "shade", "shadow_transmittance", "light_views",
           "srgb_encode", "fit_sh",
           "check_light_options"]

PER_GAUSSIAN = ("means", "scales", "quats", "opacities", "albedo", "normals", "lobe_axes", "lobe_sharpness",
                "lobe_rgb", "features")


# ----------------------------------------------------------------------------- shading


def srgb_encode(x: Tensor) -> Tensor:
    """Linear RGB -> sRGB (IEC 61966-2-1), clamped to [0, 1]. The clamp is straight-through for
    gradients (an over-bright value still learns where the target is darker), evaluated at the
    clamped value."""
    xc = x.clamp(0.0, 1.0)
    xs = x + (xc - x).detach()  # forward: clamped; backward: identity
    hi = 1.055 * xs.clamp_min(0.0031308) ** (1.0 / 2.4) - 0.055
    return torch.where(xc <= 0.0031308, 12.92 * xs, hi)


class Shading(NamedTuple):
    """`shade`'s result: ``direct`` [C,N,3] linear radiance of the unshadowed point light; the unit
    directions ``wi`` (to the light) and ``wo`` (to the camera) [C,N,3]; ``cos_i`` [C,N] = n . wi
    with the normal facing the camera (negative: lit from behind)."""

    direct: Tensor
    wi: Tensor
    wo: Tensor
    cos_i: Tensor


def shade(means: Tensor, normals: Tensor, albedo: Tensor, lobe_axes: Tensor, lobe_sharpness: Tensor,
          lobe_rgb: Tensor, light_position: Tensor, light_intensity: Tensor, camera_position: Tensor) -> Shading:
    """GS^3's reflectance under a point light, per Gaussian and camera (module docstring).

    Args:
        means [N,3] (world), normals [N,3] unit, albedo [N,3] in [0,1] (diffuse reflectance),
        lobe_axes [N,K,3] unit (world directions, so a lobe never jumps as the camera or the
        normal moves), lobe_sharpness [N,K] > 0, lobe_rgb [N,K,3] >= 0 (lobe amplitudes, 1/sr),
        light_position [C,3] (world), light_intensity [C,3] (W/sr, linear RGB), camera_position [C,3].
    Returns:
        `Shading`: radiance f max(n . wi, 0) I / d^2 in the units of I / m^2, before shadows.
    """
    x = means[None]  # [1,N,3]
    to_l = light_position[:, None, :] - x  # [C,N,3]
    d2 = (to_l * to_l).sum(-1).clamp_min(1e-12)
    wi = to_l * torch.rsqrt(d2)[..., None]
    to_o = camera_position[:, None, :] - x
    wo = to_o / to_o.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    side = torch.where((normals[None] * wo).sum(-1) >= 0, 1.0, -1.0)  # [C,N]: face the camera
    n = normals[None] * side[..., None]
    cos_i = (n * wi).sum(-1)
    hv = wi + wo
    h = hv / hv.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    lobes = torch.exp(lobe_sharpness[None] * ((lobe_axes[None] * h[:, :, None]).sum(-1) - 1.0))  # [C,N,K]
    f = albedo[None] / math.pi + (lobes[..., None] * lobe_rgb[None]).sum(-2)  # [C,N,3]
    direct = f * cos_i.clamp_min(0.0)[..., None] * light_intensity[:, None, :] / d2[..., None]
    return Shading(direct, wi, wo, cos_i)


# ----------------------------------------------------------------------------- shadow pass

_CUBE_FORWARD = ((1.0, 0, 0), (-1.0, 0, 0), (0, 1.0, 0), (0, -1.0, 0), (0, 0, 1.0), (0, 0, -1.0))


def light_views(light_position: np.ndarray, center: np.ndarray, radius: float, resolution: int
                ) -> Tuple[np.ndarray, np.ndarray]:
    """The shadow cameras of a point light: viewmats [M,4,4] (OpenCV, world->camera) and Ks [M,3,3]
    of square `resolution` images. One camera looking at the sphere (`center`, `radius`) that
    bounds the Gaussians, its field of view just containing it, when the light is outside the
    sphere (M = 1); else the six 90-degree faces of a cube map (M = 6, ordered +x -x +y -y +z -z)."""
    l = np.asarray(light_position, dtype=np.float64)
    c = np.asarray(center, dtype=np.float64)
    dist = float(np.linalg.norm(c - l))
    if dist > 1.05 * radius:
        half = min(math.asin(min(radius / dist, 1.0)) * 1.05, math.radians(85.0))
        f = 0.5 * resolution / math.tan(half)
        K = np.array([[f, 0, 0.5 * resolution], [0, f, 0.5 * resolution], [0, 0, 1.0]])
        return look_at(l, c, (0.0, 0.0, 1.0))[None], K[None]
    Vs = [look_at(l, l + np.asarray(fw), (0.0, 0.0, 1.0) if abs(fw[2]) < 0.5 else (0.0, 1.0, 0.0))
          for fw in _CUBE_FORWARD]
    f = 0.5 * resolution
    K = np.array([[f, 0, 0.5 * resolution], [0, f, 0.5 * resolution], [0, 0, 1.0]])
    return np.stack(Vs), np.repeat(K[None], 6, 0)


def shadow_transmittance(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, light_position: Tensor,
                         settings: RenderSettings = RenderSettings(), *, resolution: int = 128, layers: int = 32,
                         bias: float = 1.0, center: Optional[Tensor] = None, radius: Optional[float] = None
                         ) -> Tensor:
    """Each Gaussian's transmittance toward each light, by splatting the Gaussians from the light
    with `rasterize` (deep opacity layers; module docstring).

    Args:
        means [N,3], quats [N,4], scales [N,3] (linear), opacities [N] in [0,1]: the Gaussians.
        light_position [C,3]: world positions of C point lights.
        settings: the backend and rasterize mode (as the camera render uses).
        resolution: the shadow image's width and height in pixels; layers: opacity layers L (>= 2).
        bias: the self-shadowing offset in standard deviations of each Gaussian along its light ray.
        center [3], radius: a sphere bounding the Gaussians (default: their opacity-weighted
        centre and the 99th percentile of distances from it, over Gaussians of opacity above
        0.01). The depth layers span the Gaussians inside it above that opacity (a faint
        floater far away does not coarsen the layers); every Gaussian reads them.
    Returns:
        [C,N] transmittance in [0,1] (1: fully lit; Gaussians outside the light's view are lit).
    Raises:
        ValueError for fewer than 2 layers, a resolution below 4 or a light_position not [C,3].
    """
    if layers < 2 or resolution < 4:
        raise ValueError(f"shadow_transmittance: need layers >= 2 and resolution >= 4, got {layers}, {resolution}")
    if light_position.dim() != 2 or light_position.shape[1] != 3:
        raise ValueError(f"shadow_transmittance: light_position must be [C,3], got {list(light_position.shape)}")
    N = means.shape[0]
    dev, dt = means.device, means.dtype
    with torch.no_grad():
        if center is None or radius is None:
            w = opacities.detach()
            center = (means.detach() * w[:, None]).sum(0) / w.sum().clamp_min(1e-12)
            d = (means.detach() - center).norm(dim=-1)
            d = d[w > 0.01] if bool((w > 0.01).any()) else d
            radius = float(d.kthvalue(max(1, math.ceil(0.99 * d.numel()))).values) if d.numel() else 1.0
        radius = max(float(radius), 1e-6)
        R = quat_to_rotmat(quats.detach())  # [N,3,3]
    out = []
    for c in range(light_position.shape[0]):
        lp = light_position[c].detach()
        V, K = light_views(lp.cpu().double().numpy(), center.cpu().double().numpy(), radius, resolution)
        V = torch.as_tensor(V, dtype=dt, device=dev)
        K = torch.as_tensor(K, dtype=dt, device=dev)
        M = V.shape[0]
        with torch.no_grad():  # which view sees each Gaussian; its std along the light ray
            ray = means.detach() - lp
            ray = ray / ray.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            face = torch.zeros(N, dtype=torch.long, device=dev)
            if M == 6:
                a = ray.abs().argmax(-1)
                face = 2 * a + (ray.gather(1, a[:, None])[:, 0] < 0).long()
            sig = ((scales.detach() ** 2) * torch.einsum("nij,ni->nj", R, ray) ** 2).sum(-1).sqrt()
        cam = torch.einsum("mij,nj->mni", V[:, :3, :3], means) + V[:, None, :3, 3]  # [M,N,3]
        z = cam[..., 2]
        with torch.no_grad():  # layer depths of each view: over the Gaussians it sees that can occlude
            z0 = torch.empty(M, dtype=dt, device=dev)
            dz = torch.empty(M, dtype=dt, device=dev)
            solid = (opacities.detach() > 0.01) & ((means.detach() - center).norm(dim=-1) <= 1.05 * radius)
            for m in range(M):
                keep = (face == m) & (z[m] > settings.near_plane) & solid
                zm, sm = z[m][keep], sig[keep]
                lo = float((zm - 3 * sm).min()) if zm.numel() else settings.near_plane
                hi = float((zm + 3 * sm).max()) if zm.numel() else settings.near_plane + 1.0
                lo = max(lo, settings.near_plane)
                z0[m], dz[m] = lo, max(hi - lo, 1e-6) / (layers - 1)
        depths = z0[:, None] + dz[:, None] * torch.arange(layers, dtype=dt, device=dev)  # [M,L]
        ramps = ((depths[:, None, :] - z[..., None]) / dz[:, None, None]).clamp(0.0, 1.0)  # [M,N,L]
        maps, _, _ = rasterize(means, quats, scales, opacities, ramps, V, K, resolution, resolution,
                               near_plane=settings.near_plane, far_plane=settings.far_plane,
                               backend=settings.backend, rasterize_mode=settings.rasterize_mode)
        maps = maps.permute(0, 3, 1, 2)  # [M,L,H,W]: accumulated opacity up to each layer
        T = torch.ones(N, dtype=dt, device=dev)
        for m in range(M):
            sel = torch.nonzero((face == m) & (z[m] > settings.near_plane))[:, 0]
            if sel.numel() == 0:
                continue
            zs = z[m, sel]
            u = K[m, 0, 0] * cam[m, sel, 0] / zs + K[m, 0, 2]
            v = K[m, 1, 1] * cam[m, sel, 1] / zs + K[m, 1, 2]
            grid = torch.stack([2 * u / resolution - 1, 2 * v / resolution - 1], -1)[None, None]  # [1,1,n,2]
            # one view: outside it is lit; cube faces: read the edge texels (no light leaks at the seams)
            o = F.grid_sample(maps[m:m + 1], grid, mode="bilinear", padding_mode="zeros" if M == 1 else "border",
                              align_corners=False)[0, :, 0, :]  # [L,n]
            q = ((zs - dz[m] - bias * sig[sel]) - z0[m]) / dz[m]
            q = q.clamp(0.0, layers - 1 - 1e-6)
            k0 = q.detach().floor().long()
            frac = q - k0
            ol = o.gather(0, k0[None])[0] * (1 - frac) + o.gather(0, (k0 + 1).clamp_max(layers - 1)[None])[0] * frac
            T = T.index_put((sel,), (1.0 - ol).clamp(0.0, 1.0))
        out.append(T)
    return torch.stack(out)


def check_light_options(light=None, light_intensity=None) -> None:
    """The command lines' ``--light X Y Z`` and ``--light-intensity R G B`` (either may be None):
    raise ``ValueError`` naming the option for a non-finite number, or an intensity below 0 or all
    zero (a light that lights nothing)."""
    for name, v in (("--light", light), ("--light-intensity", light_intensity)):
        if v is not None and not all(math.isfinite(x) for x in v):
            raise ValueError(f"{name} must be finite numbers, got {' '.join(map(str, v))}")
    if light_intensity is not None and (min(light_intensity) < 0 or max(light_intensity) <= 0):
        raise ValueError(f"--light-intensity must be >= 0 and not all zero, got {tuple(light_intensity)}")


# ----------------------------------------------------------------------------- export


def fit_sh(colors: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """Least-squares SH coefficients of colours seen along unit viewing directions: colors [S,N,3]
    (the rasterizer's colour, i.e. SH value + 0.5, for the S directions dirs [S,3] from the camera
    towards the Gaussian) -> coefficients [N,(degree+1)^2,3] (`splat.io`'s sh0 + shN layout)."""
    B = sh_basis(degree, dirs)  # [S,K]
    pinv = torch.linalg.pinv(B.double()).to(colors.dtype)  # [K,S]
    return torch.einsum("ks,snc->nkc", pinv, colors - 0.5)


def fibonacci_sphere(n: int, dtype=torch.float32) -> Tensor:
    """n unit vectors [n,3] spread evenly over the sphere (golden-angle spiral)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    r = (1 - z * z).clamp_min(0).sqrt()
    phi = math.pi * (3 - math.sqrt(5)) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1).to(dtype)


# ----------------------------------------------------------------------------- the model kind


@dataclasses.dataclass
class RelightableConfig:
    """Options of the relightable model (`--relightable.*`)."""

    num_lobes: int = 2
    """Angular Gaussians (specular lobes) per Gaussian."""
    feature_dim: int = 8
    """Per-Gaussian features read by the shadow-refinement and residual networks."""
    mlp_hidden: int = 32
    """Hidden width of both networks."""
    shadows: bool = True
    """Shadows by splatting toward the light (off: every Gaussian fully lit)."""
    shadow_mlp: bool = True
    """Refine each Gaussian's transmittance with a small network (GS^3)."""
    residual: bool = True
    """Add the residual network's RGB (interreflection and what else the reflectance misses)."""
    shadow_resolution: int = 128
    """Width and height of the shadow pass's image, in pixels."""
    shadow_layers: int = 32
    """Opacity layers of the shadow pass (depth resolution)."""
    shadow_bias: float = 1.0
    """Self-shadowing offset: standard deviations of a Gaussian along its light ray."""
    init_opacity: float = 0.1
    init_scale: float = 1.0
    init_albedo: float = 0.5
    """Initial diffuse albedo where the initial points have no colour (random initialisation)."""
    lr_means: float = 1.6e-4
    """Position learning rate, times the scene scale; decays exponentially to lr_means_final."""
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_albedo: float = 1e-2
    lr_normals: float = 1e-2
    lr_lobes: float = 1e-2
    """Learning rate of the lobe axes, sharpness and amplitudes."""
    lr_features: float = 1e-2
    lr_mlp: float = 1e-3

    def check(self) -> None:
        """Raise ``ValueError`` for options no model can be built with."""
        if not 0 <= self.num_lobes <= 8:
            raise ValueError(f"--relightable.num-lobes must be 0..8, got {self.num_lobes}")
        if self.feature_dim < 1 or self.mlp_hidden < 1:
            raise ValueError(f"--relightable.feature-dim and --relightable.mlp-hidden must be >= 1, got "
                             f"{self.feature_dim}, {self.mlp_hidden}")
        if self.shadow_resolution < 4 or self.shadow_layers < 2:
            raise ValueError(f"--relightable.shadow-resolution must be >= 4 and --relightable.shadow-layers >= 2, "
                             f"got {self.shadow_resolution}, {self.shadow_layers}")
        if not 0 < self.init_opacity < 1 or not 0 < self.init_albedo < 1:
            raise ValueError("--relightable.init-opacity and --relightable.init-albedo must be in (0, 1)")
        if not (math.isfinite(self.shadow_bias) and self.shadow_bias >= 0):
            raise ValueError(f"--relightable.shadow-bias must be >= 0, got {self.shadow_bias}")


class RelightableModel(Model):
    """GS^3 relightable Gaussians (module docstring). Needs a point light per camera."""

    shardable = False
    shardable_reason = ("its shadows splat every Gaussian toward the light, not only those that meet an image "
                        "strip")

    name = "relightable"
    Config = RelightableConfig
    requires = ("light_position", "light_intensity")
    default_scene = "relightable"

    def __init__(self, config: RelightableConfig, params: Mapping[str, Tensor], scene_scale: float = 1.0):
        self.per_gaussian = PER_GAUSSIAN
        for net, on in (("shadow", config.shadow_mlp), ("residual", config.residual)):
            if on and not all(k in params for k in mlp_names(net)):
                raise ValueError(f"relightable: the parameters have no {net} network, but --relightable.{net}"
                                 f"{'-mlp' if net == 'shadow' else ''} is on (the model was trained without it)")
        super().__init__(config, params, scene_scale)

    @classmethod
    def create(cls, config: RelightableConfig, dataset, *, seed: int = 0) -> "RelightableModel":
        """Gaussians at the dataset's initial points, albedo from their colours (``init_albedo`` for
        random points), normals pointing away from the points' centre, dim lobes about the normal,
        small random features, networks that start as identity (shadows) and near zero (residual).
        Raises ``ValueError`` when the training views have no lights."""
        tr = dataset.train
        if tr.light_positions is None or tr.light_intensities is None:
            raise ValueError(f"--model relightable needs a point light per training view "
                             f"('light_position' and 'light_intensity' in the frames); {dataset.root} has none")
        s = init_splats(dataset.points, dataset.points_rgb, 0, config.init_opacity, config.init_scale)
        N = s["means"].shape[0]
        g = torch.Generator().manual_seed(seed + 31)
        if getattr(dataset, "points_random", False):
            albedo = torch.full((N, 3), float(config.init_albedo))
        else:
            albedo = torch.from_numpy(np.asarray(dataset.points_rgb, dtype=np.float32) / 255.0)
        center = s["means"].mean(0)
        normals = s["means"] - center
        normals = torch.where(normals.norm(dim=-1, keepdim=True) > 1e-9, normals, torch.tensor([0.0, 0.0, 1.0]))
        normals = normals / normals.norm(dim=-1, keepdim=True)  # unit: a step turns them alike at any scene scale
        Kl = config.num_lobes
        axes = normals[:, None, :] + 0.05 * torch.randn(N, Kl, 3, generator=g)
        sharp = torch.log(torch.tensor([20.0 * 4.0 ** k for k in range(Kl)])).repeat(N, 1)
        lp = torch.from_numpy(np.asarray(tr.light_positions, dtype=np.float32))
        li = torch.from_numpy(np.asarray(tr.light_intensities, dtype=np.float32))
        rel = lp - center
        prior = torch.cat([center, li.mean(0), rel.norm(dim=-1).mean()[None], rel[:, 2].mean()[None]])
        rho_max = 4.0 * float(prior[6]) ** 2 / float(prior[3:6].mean())
        lobe0 = math.log(0.02 / (rho_max - 0.02)) if rho_max > 0.04 else -4.0  # amplitude 0.02
        params = {**{k: s[k] for k in ("means", "scales", "quats", "opacities")},
                  "albedo": torch.logit(albedo.clamp(0.02, 0.98)), "normals": normals, "lobe_axes": axes,
                  "lobe_sharpness": sharp, "lobe_rgb": torch.full((N, Kl, 3), lobe0),
                  "features": 0.1 * torch.randn(N, config.feature_dim, generator=g), "light_prior": prior}
        Fd = config.feature_dim
        if config.shadow_mlp:
            params.update(mlp_params("shadow", 1 + 1 + 3 + Fd, config.mlp_hidden, 1, g, out_scale=0.0))
        if config.residual:
            params.update(mlp_params("residual", Fd + 6, config.mlp_hidden, 3, g, out_scale=0.01, out_bias=-6.0))
        return cls(config, params, float(dataset.scene_scale))

    # ------------------------------------------------------------------ lights
    @property
    def center(self) -> Tensor:
        """[3] the scene centre the model was initialised around."""
        return self.params["light_prior"][:3].detach()

    @property
    def default_intensity(self) -> Tensor:
        """[3] the mean radiant intensity of the training lights (W/sr)."""
        return self.params["light_prior"][3:6].detach()

    @property
    def default_light(self) -> Tensor:
        """[3] where a light goes when none is given (export, videos, the viewer's start): in front of
        the scene (the -y side, azimuth -90 degrees) at the training lights' mean distance and height."""
        return self.orbit_light(0.75)

    def orbit_light(self, phase: float) -> Tensor:
        """[3] a light on the circle the training lights' mean distance and height describe around
        the scene centre, at azimuth 2 pi `phase` (for videos where the light moves)."""
        p = self.params["light_prior"].detach()
        r, hgt = float(p[6]), float(p[7])
        rho = math.sqrt(max(r * r - hgt * hgt, 1e-6 * r * r))
        a = 2 * math.pi * phase
        return p[:3] + torch.tensor([rho * math.cos(a), rho * math.sin(a), hgt], dtype=p.dtype, device=p.device)

    # ------------------------------------------------------------------ rendering
    def shading(self, cameras: Cameras, settings: RenderSettings = RenderSettings(),
                shadows: Optional[bool] = None) -> Dict[str, Tensor]:
        """The terms of every Gaussian's radiance for each camera and its light: ``direct``
        [C,N,3], ``transmittance`` and ``shadow`` [C,N] (raw and refined; ones without shadows),
        ``residual`` [C,N,3] (zeros without the network) and ``radiance`` [C,N,3], linear."""
        self.check_cameras(cameras, "the cameras")
        T = None
        if self.config.shadows if shadows is None else shadows:
            T = self.transmittance(cameras.light_position, settings)
        return self._terms(slice(None), cameras.centers, cameras.light_position, cameras.light_intensity, T)

    def transmittance(self, light_position: Tensor, settings: RenderSettings = RenderSettings()) -> Tensor:
        """`shadow_transmittance` [C,N] of the model's Gaussians toward lights [C,3], with the
        model's shadow-pass options."""
        p, c = self.params, self.config
        return shadow_transmittance(p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]),
                                    light_position, settings, resolution=c.shadow_resolution, layers=c.shadow_layers,
                                    bias=c.shadow_bias)

    def _terms(self, rows, camera_position: Tensor, light_position: Tensor, light_intensity: Tensor,
               T: Optional[Tensor]) -> Dict[str, Tensor]:
        """`shading`'s terms for the Gaussians `rows` seen from `camera_position` [C,3] under the
        lights [C,3] / [C,3], given their raw transmittance T [C or 1, n] (None: no shadows)."""
        p, c = self.params, self.config
        nrm, ax = p["normals"][rows], p["lobe_axes"][rows]
        sh = shade(p["means"][rows], nrm / nrm.norm(dim=-1, keepdim=True).clamp_min(1e-12),
                   torch.sigmoid(p["albedo"][rows]), ax / ax.norm(dim=-1, keepdim=True).clamp_min(1e-12),
                   torch.exp(p["lobe_sharpness"][rows].clamp(max=math.log(1000.0))),
                   self.rho_max * torch.sigmoid(p["lobe_rgb"][rows]),
                   light_position, light_intensity, camera_position)
        C, n = sh.direct.shape[:2]
        feats = p["features"][rows][None].expand(C, n, -1)
        if T is None:
            T = S = torch.ones(C, n, dtype=sh.direct.dtype, device=sh.direct.device)
        else:
            T = S = T.expand(C, n)
            if c.shadow_mlp:
                x = torch.cat([T[..., None], sh.cos_i[..., None], sh.wi, feats], -1)
                S = torch.sigmoid(torch.logit(T.clamp(1e-3, 1 - 1e-3)) + mlp_apply(p, "shadow", x)[..., 0])
        radiance = sh.direct * S[..., None]
        residual = torch.zeros_like(radiance)
        if c.residual:
            e = light_intensity / ((light_position - p["light_prior"][:3]) ** 2).sum(-1, keepdim=True).clamp_min(1e-12)
            residual = self.rho_max * torch.sigmoid(mlp_apply(p, "residual", torch.cat([feats, sh.wi, sh.wo], -1)))
            residual = residual * e[:, None, :]
            radiance = radiance + residual
        return {"direct": sh.direct, "transmittance": T, "shadow": S, "residual": residual, "radiance": radiance}

    @property
    def rho_max(self) -> float:
        """The largest lobe amplitude or residual reflectance (1/sr): 4 / the training lights'
        mean irradiance at the scene centre."""
        p = self.params["light_prior"].detach()
        return float(4.0 * p[6] ** 2 / p[3:6].mean().clamp_min(1e-12))

    def gaussians(self, cameras: Cameras, settings: RenderSettings = RenderSettings(),
                  step: Optional[int] = None) -> Gaussians:
        p = self.params
        colors = srgb_encode(self.shading(cameras, settings)["radiance"])  # [C,N,3]
        return Gaussians(p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), colors)

    def splats_under(self, light_position, light_intensity=None, sh_degree: int = 3, directions: int = 128,
                     settings: RenderSettings = RenderSettings(), chunk: int = 65536) -> Dict[str, Tensor]:
        """The model shaded under one point light as static 3DGS splats (`splat.io.save`'s layout) for
        other viewers: each Gaussian's sRGB colour seen from `directions` viewing directions
        (shadows included, they do not depend on the view) fitted by least squares with SH of degree
        `sh_degree`. `light_intensity` defaults to the training lights' mean. Raises ``ValueError``
        for a non-finite light or a bad degree."""
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be 0..3, got {sh_degree}")
        dev = self.params["means"].device
        lp = torch.as_tensor(np.asarray(light_position, dtype=np.float32), device=dev).reshape(3)
        li = self.default_intensity if light_intensity is None else \
            torch.as_tensor(np.asarray(light_intensity, dtype=np.float32), device=dev).reshape(3)
        if not (bool(torch.isfinite(lp).all()) and bool(torch.isfinite(li).all())):
            raise ValueError(f"light position {lp.tolist()} / intensity {li.tolist()} must be finite")
        dirs = fibonacci_sphere(max(directions, (sh_degree + 1) ** 2 * 2)).to(dev)  # camera -> Gaussian
        p = self.params
        with torch.no_grad():
            scale = float((p["means"] - self.center).norm(dim=-1).max()) + 1.0
            cams_pos = self.center[None] - dirs * (1e4 * scale)  # cameras far away along each direction
            S = len(dirs)
            T = None
            if self.config.shadows:
                T = self.transmittance(lp[None], settings)
            coeffs = []
            for a in range(0, self.num_gaussians, chunk):
                rows = slice(a, a + chunk)
                rad = self._terms(rows, cams_pos, lp[None].expand(S, 3), li[None].expand(S, 3),
                                  T[:, rows] if T is not None else None)["radiance"]
                coeffs.append(fit_sh(srgb_encode(rad), dirs, sh_degree))
            sh = torch.cat(coeffs, 0)
            return {"means": p["means"].detach().cpu(), "scales": p["scales"].detach().cpu(),
                    "quats": p["quats"].detach().cpu(), "opacities": p["opacities"].detach().cpu(),
                    "sh0": sh[:, :1].cpu(), "shN": sh[:, 1:].cpu()}

    def to_splats(self) -> Dict[str, Tensor]:
        """`splats_under` the `default_light`."""
        return self.splats_under(self.default_light.cpu().numpy())

    # ------------------------------------------------------------------ training
    def learning_rates(self, step: int, iterations: int) -> Dict[str, float]:
        c = self.config
        means = self.scene_scale * learning_rate_decay(c.lr_means, c.lr_means_final, step, iterations)
        lrs = {"means": means, "scales": c.lr_scales, "quats": c.lr_quats, "opacities": c.lr_opacities,
               "albedo": c.lr_albedo, "normals": c.lr_normals, "lobe_axes": c.lr_lobes,
               "lobe_sharpness": c.lr_lobes, "lobe_rgb": c.lr_lobes, "features": c.lr_features, "light_prior": 0.0}
        lrs.update({k: c.lr_mlp for k in self.params if k.startswith(("shadow_", "residual_"))})
        return lrs

    def summary(self) -> str:
        c = self.config
        parts = [f"{c.num_lobes} lobes", "shadows" + (" + MLP" if c.shadow_mlp else "") if c.shadows else "no shadows",
                 "residual net" if c.residual else "no residual"]
        return ", ".join(parts)
