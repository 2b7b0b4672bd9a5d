"""Cameras: the batch every model renders for, and the camera generators (look-at,
orbit, spline path).

Conventions are gsplat's (and the rest of splat's): ``viewmats`` are world->camera
[C,4,4] in OpenCV axes (x right, y down, z forward), ``Ks`` are [C,3,3] pinhole
intrinsics in pixels with pixel centres at +0.5, and one batch shares one image
size. The camera model and its distortion coefficients use gsplat's names
(``camera_model``, ``radial_coeffs``, ``tangential_coeffs``, ``thin_prism_coeffs``);
a batch can also carry what dynamic and relightable models render with: the time
of each camera and a point light per camera.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["Cameras", "CAMERA_MODELS", "look_at", "camera_frame", "orbit_cameras", "path_cameras"]

CAMERA_MODELS = ("pinhole", "ortho", "fisheye")
# gsplat's RollingShutterType values, by name
ROLLING_SHUTTER = {"top_to_bottom": 0, "left_to_right": 1, "bottom_to_top": 2, "right_to_left": 3, "global": 4}
RADIAL_COUNT = {"pinhole": 6, "fisheye": 4}  # radial coefficients per camera model (gsplat's)


def rolling_shutter_name(value) -> str:
    """A rolling-shutter type given by name (any case) or by gsplat's enum / int value -> its name.
    Raises ``ValueError`` for anything else."""
    v = getattr(value, "value", value)
    if isinstance(v, str) and v.lower() in ROLLING_SHUTTER:
        return v.lower()
    if isinstance(v, int) and not isinstance(v, bool):
        for k, i in ROLLING_SHUTTER.items():
            if i == v:
                return k
    raise ValueError(f"rolling_shutter must be one of {', '.join(ROLLING_SHUTTER)} (or gsplat's RollingShutterType),"
                     f" got {value!r}")


def check_camera_args(C: int, camera_model: str, radial_coeffs, tangential_coeffs, thin_prism_coeffs,
                      rolling_shutter, viewmats_rs, like: Tensor, where: str = "splat.rasterize") -> str:
    """Check the camera-model arguments of C cameras (shapes, dtype and device of `like`,
    finiteness); returns the rolling-shutter name. Raises ``ValueError`` naming the argument."""
    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"{where}: camera_model must be one of {CAMERA_MODELS}, got {camera_model!r}")
    try:
        rs = rolling_shutter_name(rolling_shutter)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    shapes = {"radial_coeffs": (C, RADIAL_COUNT.get(camera_model, 0)), "tangential_coeffs": (C, 2),
              "thin_prism_coeffs": (C, 4), "viewmats_rs": (C, 4, 4)}
    for name, t in (("radial_coeffs", radial_coeffs), ("tangential_coeffs", tangential_coeffs),
                    ("thin_prism_coeffs", thin_prism_coeffs), ("viewmats_rs", viewmats_rs)):
        if t is None:
            continue
        if camera_model != "pinhole" and name in ("tangential_coeffs", "thin_prism_coeffs"):
            raise ValueError(f"{where}: {name} applies to pinhole cameras only (camera_model={camera_model!r})")
        if camera_model == "ortho" and name == "radial_coeffs":
            raise ValueError(f"{where}: an ortho camera takes no radial_coeffs")
        if not isinstance(t, Tensor) or tuple(t.shape) != shapes[name]:
            got = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{where}: {name} must be {list(shapes[name])} for {C} {camera_model} camera(s), "
                             f"got {got}")
        if t.dtype != like.dtype or t.device != like.device:
            raise ValueError(f"{where}: {name} is {t.dtype} on {t.device}, expected {like.dtype} on {like.device}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where}: {name} contains NaN or Inf values")
    if rs != "global" and viewmats_rs is None:
        raise ValueError(f"{where}: rolling_shutter={rs!r} needs viewmats_rs (the pose at the end of the read-out)")
    return rs


# per-camera tensors: name -> trailing shape (None: radial coefficients, counted per camera model)
_PER_CAMERA = {
    "radial_coeffs": None, "tangential_coeffs": (2,), "thin_prism_coeffs": (4,),
    "time": (), "light_position": (3,), "light_intensity": (3,), "viewmats_rs": (4, 4),
}
# radial coefficients per camera model (gsplat's convention): OpenCV k1..k6, Kannala-Brandt k1..k4
_RADIAL = RADIAL_COUNT


@dataclasses.dataclass(frozen=True)
class Cameras:
    """A batch of C cameras sharing one image size.

    Attributes:
        viewmats: [C,4,4] float world->camera matrices (OpenCV axes).
        Ks: [C,3,3] float intrinsics in pixels.
        width, height: image size in pixels (> 0).
        camera_model: ``"pinhole"``, ``"ortho"`` or ``"fisheye"`` (`splat.camera_models`).
        radial_coeffs: [C,6] (pinhole: OpenCV k1..k6) or [C,4] (fisheye: Kannala-Brandt k1..k4), or None.
        tangential_coeffs: [C,2] (p1, p2) or None.  thin_prism_coeffs: [C,4] (s1..s4) or None.
        rolling_shutter: ``"global"`` or the read-out direction (``"top_to_bottom"``,
            ``"left_to_right"``, ``"bottom_to_top"``, ``"right_to_left"``; gsplat's enum accepted).
        viewmats_rs: [C,4,4] world->camera at the end of the read-out (needed with a rolling shutter).
        time: [C] time of each camera (dynamic scenes: 0..1 over the sequence), or None.
        light_position: [C,3] world position of a point light per camera (relightable scenes), or None.
        light_intensity: [C,3] its linear RGB radiant intensity, or None.
        names: C names (image names from the dataset), or None.

    Every tensor has the dtype and device of ``viewmats``. A batch is immutable
    (frozen): make a new one to change it. Raises ``ValueError`` naming the field for
    a wrong shape, dtype or device, a non-finite value, an unknown camera model or a
    size that is not a positive integer. ``len(cams)`` is C; ``cams[i]`` (any integer),
    ``cams[a:b:s]``, ``cams[list]`` and ``cams[index or boolean tensor]`` select cameras;
    ``cams.to(device)`` moves every tensor.
    """

    viewmats: Tensor
    Ks: Tensor
    width: int
    height: int
    camera_model: str = "pinhole"
    radial_coeffs: Optional[Tensor] = None
    tangential_coeffs: Optional[Tensor] = None
    thin_prism_coeffs: Optional[Tensor] = None
    time: Optional[Tensor] = None
    light_position: Optional[Tensor] = None
    light_intensity: Optional[Tensor] = None
    names: Optional[Sequence[str]] = None
    rolling_shutter: str = "global"
    viewmats_rs: Optional[Tensor] = None

    def __post_init__(self):
        V, K = self.viewmats, self.Ks
        if not isinstance(V, Tensor) or V.dim() != 3 or tuple(V.shape[1:]) != (4, 4):
            raise ValueError(f"Cameras: viewmats must be a [C,4,4] tensor, got {_shape(V)}")
        C = V.shape[0]
        if not isinstance(K, Tensor) or tuple(K.shape) != (C, 3, 3):
            raise ValueError(f"Cameras: Ks must be a [{C},3,3] tensor, got {_shape(K)}")
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"Cameras: width and height must be positive integers, got "
                                 f"{self.width!r} x {self.height!r}")
            object.__setattr__(self, name, int(v))
        if self.camera_model not in CAMERA_MODELS:
            raise ValueError(f"Cameras: camera_model {self.camera_model!r}; expected one of {', '.join(CAMERA_MODELS)}")
        for name in ("viewmats", "Ks") + tuple(_PER_CAMERA):
            t = getattr(self, name)
            if t is None:
                continue
            if name in _PER_CAMERA:
                trail = _PER_CAMERA[name]
                if trail is None:
                    if self.camera_model not in _RADIAL:
                        raise ValueError(f"Cameras: camera_model {self.camera_model!r} takes no radial_coeffs")
                    trail = (_RADIAL[self.camera_model],)
                if not isinstance(t, Tensor) or tuple(t.shape) != (C,) + trail:
                    want = f"[{C}{''.join(f',{d}' for d in trail)}]"
                    raise ValueError(f"Cameras: {name} must be a {want} tensor"
                                     + (f" for a {self.camera_model} camera" if name == "radial_coeffs" else "")
                                     + f", got {_shape(t)}")
            if not t.is_floating_point():
                raise ValueError(f"Cameras: {name} must be floating point, got {t.dtype}")
            if t.dtype != V.dtype or t.device != V.device:
                raise ValueError(f"Cameras: {name} is {t.dtype} on {t.device}, viewmats {V.dtype} on {V.device}")
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"Cameras: {name} has non-finite values")
        # the camera-model rules `rasterize` applies (tangential terms on pinholes only, a rolling shutter
        # with its end pose), with the shutter named as gsplat's enum or a string
        object.__setattr__(self, "rolling_shutter", check_camera_args(
            C, self.camera_model, self.radial_coeffs, self.tangential_coeffs, self.thin_prism_coeffs,
            self.rolling_shutter, self.viewmats_rs, V, where="Cameras"))
        if self.names is not None:
            object.__setattr__(self, "names", list(self.names))
            if len(self.names) != C:
                raise ValueError(f"Cameras: {len(self.names)} names for {C} cameras")

    # ------------------------------------------------------------------ batch
    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    def __getitem__(self, index) -> "Cameras":
        """Cameras `index` (an integer, a slice, a list, or an index or boolean tensor or
        array) as a new batch. Raises ``IndexError`` for an index out of range."""
        C = len(self)
        if isinstance(index, slice):
            idx = torch.tensor(range(C)[index], dtype=torch.int64)
        else:
            arr = np.asarray(index.cpu() if isinstance(index, Tensor) else index)
            if arr.dtype == bool:
                if arr.shape != (C,):
                    raise IndexError(f"a boolean camera mask needs {C} entries, got shape {list(arr.shape)}")
                arr = np.nonzero(arr)[0]
            elif arr.size == 0:
                arr = arr.astype(np.int64)
            elif arr.dtype.kind not in "iu":
                raise IndexError(f"cameras are selected by integers, slices or masks, got {arr.dtype} {index!r}")
            arr = arr.reshape(-1)
            bad = arr[(arr < -C) | (arr >= C)]
            if bad.size:
                raise IndexError(f"camera {int(bad[0])} out of range for {C} cameras")
            idx = torch.from_numpy(arr % max(C, 1))
        names = None if self.names is None else [self.names[i] for i in idx.tolist()]
        idx = idx.to(self.device)
        return self._replace(lambda t: t[idx], names=names)

    def to(self, device) -> "Cameras":
        return self._replace(lambda t: t.to(device))

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    @property
    def camtoworlds(self) -> Tensor:
        """[C,4,4] camera->world matrices (inverse of ``viewmats``)."""
        return torch.linalg.inv(self.viewmats)

    @property
    def centers(self) -> Tensor:
        """[C,3] camera centres in world coordinates."""
        R, t = self.viewmats[:, :3, :3], self.viewmats[:, :3, 3]
        return -(R.transpose(1, 2) @ t[:, :, None])[:, :, 0]

    @staticmethod
    def cat(batches: Sequence["Cameras"]) -> "Cameras":
        """One batch from several with the same size and camera model (optional fields
        must be present in all or none)."""
        if not batches:
            raise ValueError("Cameras.cat: no batches")
        first = batches[0]
        for b in batches[1:]:
            if (b.width, b.height, b.camera_model, b.rolling_shutter) != (first.width, first.height,
                                                                          first.camera_model, first.rolling_shutter):
                def shutter(x):
                    return "" if x.rolling_shutter == "global" else f" ({x.rolling_shutter} shutter)"
                raise ValueError(f"Cameras.cat: cannot batch {b.width}x{b.height} {b.camera_model} cameras"
                                 f"{shutter(b)} with {first.width}x{first.height} {first.camera_model} ones"
                                 f"{shutter(first)}")
        kw = {}
        for name in ("viewmats", "Ks") + tuple(_PER_CAMERA):
            vals = [getattr(b, name) for b in batches]
            present = [v is not None for v in vals]
            if any(present) and not all(present):
                raise ValueError(f"Cameras.cat: {name} is set in some batches and not in others")
            kw[name] = torch.cat(vals) if all(present) else None
        names = None
        if all(b.names is not None for b in batches):
            names = [n for b in batches for n in b.names]
        return Cameras(width=first.width, height=first.height, camera_model=first.camera_model, names=names,
                       rolling_shutter=first.rolling_shutter, **kw)

    @staticmethod
    def from_numpy(viewmats: np.ndarray, Ks: np.ndarray, width: int, height: int, *, device="cpu",
                   dtype=torch.float32, **optional) -> "Cameras":
        """Cameras from numpy arrays ([C,4,4], [C,3,3]; optional fields as arrays or None)."""
        conv = {k: (None if v is None else torch.as_tensor(np.asarray(v), dtype=dtype, device=device))
                for k, v in optional.items() if k in _PER_CAMERA}
        rest = {k: v for k, v in optional.items() if k not in _PER_CAMERA}
        return Cameras(torch.as_tensor(np.asarray(viewmats), dtype=dtype, device=device),
                       torch.as_tensor(np.asarray(Ks), dtype=dtype, device=device), width, height, **conv, **rest)

    def _replace(self, fn, **changes) -> "Cameras":
        kw = {name: (None if getattr(self, name) is None else fn(getattr(self, name)))
              for name in ("viewmats", "Ks") + tuple(_PER_CAMERA)}
        kw.update(changes)
        kw.setdefault("names", self.names)
        kw.setdefault("rolling_shutter", self.rolling_shutter)
        return Cameras(width=self.width, height=self.height, camera_model=self.camera_model, **kw)


def _shape(x) -> str:
    return f"shape {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


# ----------------------------------------------------------------------------- generators


def look_at(eye, target, up) -> np.ndarray:
    """World->camera [4,4] (float64, OpenCV axes) of a camera at `eye` looking at `target`,
    with `up` (world) pointing up in the image. A view straight along `up` takes +x as its
    image right."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)  # OpenCV: y = -up (down), x = y x z = z x up (right)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, np.array([1.0, 0.0, 0.0]))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    V = np.eye(4)
    V[:3, :3] = np.stack([x, y, z])
    V[:3, 3] = -V[:3, :3] @ eye
    return V


def camera_frame(viewmats: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centres [C,3], mean up vector [3] (minus the mean camera y axis; +z where those cancel), the
    point the cameras look at [3]) of world->camera matrices [C,4,4]. The look-at point is the least-squares meeting point of the viewing
    axes; for nearly parallel axes (forward-facing captures) a point three median camera
    spreads ahead of the cameras."""
    R = viewmats[:, :3, :3]
    centres = -np.einsum("nji,nj->ni", R, viewmats[:, :3, 3])
    up = -R[:, 1, :].mean(0)
    n = np.linalg.norm(up)
    up = up / n if n > 1e-9 else np.array([0.0, 0.0, 1.0])  # cameras whose ups cancel: +z
    dirs = R[:, 2, :]
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, d in zip(centres, dirs):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ c
    if np.linalg.cond(A) > 1e4:
        spread = float(np.median(np.linalg.norm(centres - np.median(centres, 0), axis=1))) or 1.0
        target = np.median(centres, 0) + dirs.mean(0) / np.linalg.norm(dirs.mean(0)) * 3 * spread
    else:
        target = np.linalg.solve(A, b)
    return centres, up, target


def _horizon_axes(up: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    a = np.cross(up, [1.0, 0.0, 0.0])
    if np.linalg.norm(a) < 1e-6:
        a = np.cross(up, [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    return a, np.cross(up, a)


def points_scale(points: np.ndarray) -> float:
    """The size of a scene known only by its points ([P,3], e.g. a model file's means): 1.1x the
    90th-percentile distance from their median (3DGS's camera extent is 1.1x a radius too), or
    1.0 for no or coincident points. Sets the near plane where no training cameras are known."""
    m = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    m = m[np.isfinite(m).all(1)]
    if len(m) == 0:
        return 1.0
    r = float(np.percentile(np.linalg.norm(m - np.median(m, 0), axis=1), 90))
    return 1.1 * r if r > 0 else 1.0


def orbit_cameras(n: int, viewmats: Optional[np.ndarray] = None, points: Optional[np.ndarray] = None,
                  elevation_deg: float = 25.0) -> np.ndarray:
    """n world->camera matrices [n,4,4] on a circle around the scene, looking at its centre.

    With training cameras (`viewmats` [C,4,4]) the circle has their median height and
    distance around the point they look at, about their mean up. Without them it
    circles `points` ([P,3], e.g. the model's means; +z up) at 2.5x their 90th-percentile
    radius, `elevation_deg` above the horizon. Raises ``ValueError`` with neither."""
    if viewmats is not None and len(viewmats) > 0:
        centres, up, target = camera_frame(np.asarray(viewmats, dtype=np.float64))
        rel = centres - target
        h = rel @ up
        height = float(np.median(h))
        radius = float(np.median(np.linalg.norm(rel - np.outer(h, up), axis=1)))
    elif points is not None and len(points) > 0:
        m = np.asarray(points, dtype=np.float64)
        target = np.median(m, 0)
        spread = np.percentile(np.linalg.norm(m - target, axis=1), 90)
        up = np.array([0.0, 0.0, 1.0])
        dist = 2.5 * spread
        radius = dist * math.cos(math.radians(elevation_deg))
        height = dist * math.sin(math.radians(elevation_deg))
    else:
        raise ValueError("orbit_cameras: needs training cameras or points to circle")
    a, b = _horizon_axes(up)
    out = []
    for t in np.linspace(0, 2 * math.pi, n, endpoint=False):
        eye = target + height * up + radius * (math.cos(t) * a + math.sin(t) * b)
        out.append(look_at(eye, target, up))
    return np.stack(out)


def path_cameras(n: int, viewmats: np.ndarray) -> np.ndarray:
    """n world->camera matrices [n,4,4] on a smooth closed path through the training cameras
    (`viewmats` [C,4,4], ordered by angle around the scene; at most ~12 keyframes):
    positions by a Catmull-Rom spline, rotations by slerp. Raises ``ValueError`` for fewer
    than 2 cameras."""
    from scipy.spatial.transform import Rotation, Slerp

    viewmats = np.asarray(viewmats, dtype=np.float64)
    if len(viewmats) < 2:
        raise ValueError("a camera path needs at least 2 training cameras")
    centres, up, target = camera_frame(viewmats)
    a, b = _horizon_axes(up)
    rel = centres - target
    order = np.argsort(np.arctan2(rel @ b, rel @ a))
    keys = order[:: max(1, len(order) // 12)]
    K = len(keys)
    c2w_R = np.stack([viewmats[k, :3, :3].T for k in keys])
    P = centres[keys]
    rots = Rotation.from_matrix(np.concatenate([c2w_R, c2w_R[:1]]))
    slerp = Slerp(np.arange(K + 1), rots)
    out = []
    for t in np.linspace(0, K, n, endpoint=False):
        i = int(t)
        u = t - i
        p0, p1, p2, p3 = (P[(i + j) % K] for j in (-1, 0, 1, 2))
        pos = 0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u ** 2
                     + (-p0 + 3 * p1 - 3 * p2 + p3) * u ** 3)
        R = slerp([t]).as_matrix()[0].T
        V = np.eye(4)
        V[:3, :3] = R
        V[:3, 3] = -R @ pos
        out.append(V)
    return np.stack(out)
