"""What the viewer shows: a model that renders itself, through the project's
renderer, from a viewer camera.

Two kinds exist today:

* `SplatScene`: static 3D Gaussians (a splats dict: a model file, a checkpoint
  or a live training's parameters). Modes rgb / depth / alpha, any backend,
  plus the Gaussians in the form viser's client-side splat renderer takes.
  `set_budget(F)` shows a fraction F of them (`splat.compress.budget`'s fast path:
  the most important, the others merged into them; importance measured once).
* `Image2DScene`: a 2D image model (`splat.models.image2d.Image2D`). The viewer
  camera pans and zooms over the image plane and every frame is rendered by
  the 2D renderer at exactly the zoom shown (arbitrary-scale rendering).

* `ModelScene`: a model that renders itself through ``Model.render`` with what its
  cameras need: a dynamic (4D) model (4dgs, spacetime) at the time slider's instant,
  a relightable model under the light control's point light.

A scene may declare `time_range` (4D models: the viewer adds a time slider and
passes `t=` to `render`) or `has_light` (relightable models: the viewer adds a
point-light position and intensity control, initialised from the scene's `light`
and `light_intensity`, calls `set_light(position, intensity)` when it moves, and
passes `current_light()`'s pair to `render` as `light=` and `light_intensity=`).

`load_scene(path)` opens any model file the toolkit writes, with a clear error
(`SceneError`) for a missing or unreadable one.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from splat.render import NEAR_PLANE

__all__ = ["SceneError", "ViewCamera", "TrainingCamera", "SplatScene", "ModelScene", "DynamicScene", "Image2DScene",
           "load_scene",
           "viewmat_from_pose", "pose_from_viewmat"]

IMAGE2D_BACKGROUND = (38, 38, 42)  # outside the image in 2D view: dark grey, not black (black is a colour)


class SceneError(ValueError):
    """A model cannot be opened or shown; the message names the file and the problem."""


@dataclass
class ViewCamera:
    """A pinhole camera to render: world->camera `viewmat` [4,4] (OpenCV), `K` [3,3], size."""
    viewmat: np.ndarray
    K: np.ndarray
    width: int
    height: int

    @staticmethod
    def from_pose(wxyz, position, fov_y: float, width: int, height: int) -> "ViewCamera":
        """From a viser camera: rotation `wxyz` and `position` of the camera in the world
        (OpenCV axes), vertical field of view in radians, image size."""
        f = 0.5 * height / math.tan(0.5 * fov_y)
        K = np.array([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]])
        return ViewCamera(viewmat_from_pose(wxyz, position), K, int(width), int(height))


@dataclass
class TrainingCamera:
    """A camera of the dataset, shown as a frustum; clicking it moves the view there."""
    name: str
    viewmat: np.ndarray  # [4,4] world->camera
    K: np.ndarray  # [3,3]
    width: int
    height: int
    thumbnail: Optional[np.ndarray] = None  # uint8 [h,w,3], shown inside the frustum
    distortion: Optional[object] = None  # the lens model (splat.data.distortion.Distortion) of a distorted camera

    @property
    def fov_y(self) -> float:
        """The true vertical field of view (radians): the angle between the rays through the top and
        bottom edge centres, through the lens model (a fisheye's can pass 180 degrees; the frustum shows at
        most 170)."""
        if self.distortion is None:
            return 2.0 * math.atan(0.5 * self.height / float(self.K[1, 1]))
        from splat import camera_models as cm

        model, radial, tang = self.distortion.camera_args()
        t = (lambda a: None if a is None else torch.as_tensor(a, dtype=torch.float64)[None])
        cx = float(self.K[0, 2])
        pix = torch.tensor([[[cx, 0.0], [cx, float(self.height)]]], dtype=torch.float64)
        _, d, _ = cm.pixel_rays(pix, torch.as_tensor(self.K, dtype=torch.float64)[None], model, t(radial), t(tang))
        ang = float(torch.acos(torch.clamp((d[0, 0] * d[0, 1]).sum(), -1.0, 1.0)))
        if model == "fisheye":  # past 180 degrees the two rays' angle folds back: use the angles off the axis
            ang = float(torch.acos(torch.clamp(d[0, 0, 2], -1, 1)) + torch.acos(torch.clamp(d[0, 1, 2], -1, 1)))
        return min(ang, math.radians(170.0))


def _quat_to_mat(q) -> np.ndarray:
    """(w, x, y, z), any norm -> rotation matrix [3,3] (float64)."""
    from splat.backends.torch_ref import quat_to_rotmat

    return quat_to_rotmat(torch.as_tensor(np.asarray(q, dtype=np.float64))).numpy()


def _mat_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrix -> unit quaternion (w, x, y, z), w >= 0 (Shepperd's method)."""
    t = np.trace(R)
    if t > 0:
        s = math.sqrt(t + 1.0) * 2
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif R[0, 0] > R[1, 1] and R[0, 0] > R[2, 2]:
        s = math.sqrt(1.0 + R[0, 0] - R[1, 1] - R[2, 2]) * 2
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif R[1, 1] > R[2, 2]:
        s = math.sqrt(1.0 + R[1, 1] - R[0, 0] - R[2, 2]) * 2
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = math.sqrt(1.0 + R[2, 2] - R[0, 0] - R[1, 1]) * 2
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def viewmat_from_pose(wxyz, position) -> np.ndarray:
    """Camera pose in the world (rotation wxyz, position) -> world->camera matrix."""
    R = _quat_to_mat(wxyz)
    V = np.eye(4)
    V[:3, :3] = R.T
    V[:3, 3] = -R.T @ np.asarray(position, dtype=np.float64)
    return V


def pose_from_viewmat(viewmat: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """World->camera matrix -> (wxyz, position) of the camera in the world."""
    V = np.asarray(viewmat, dtype=np.float64)
    R = V[:3, :3].T
    return _mat_to_quat(R), -R @ V[:3, 3]


# ----------------------------------------------------------------------------- 3D Gaussians


def client_splats_of(splats: Dict[str, torch.Tensor]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A splats dict as viser's client-side splats: (centers [N,3], covariances [N,3,3], rgbs
    [N,3] in [0,1], opacities [N,1]), colour from the SH degree-0 term."""
    from splat.backends.torch_ref import quat_scale_to_covar
    from splat.models.static import sh_to_rgb

    s = {k: v.detach().cpu() for k, v in splats.items()}
    cov = quat_scale_to_covar(s["quats"].double(), torch.exp(s["scales"].double()))
    rgb = sh_to_rgb(s["sh0"][:, 0, :]).clamp(0, 1)
    opa = torch.sigmoid(s["opacities"])[:, None]
    return (s["means"].numpy().astype(np.float32), cov.float().numpy(), rgb.numpy().astype(np.float32),
            opa.numpy().astype(np.float32))


class SplatScene:
    """Static 3D Gaussians in the toolkit's splats dict (log scales, logit opacities, SH).

    `update(splats)` swaps in new parameters (a live training does this from
    its own thread); a render always sees one whole model, never a mix.
    """

    kind = "3d"
    modes = ("rgb", "depth", "alpha")
    time_range: Optional[Tuple[float, float]] = None
    has_light = False
    supports_budget = True  # `set_budget`: the viewer's Budget slider

    def __init__(self, splats: Dict[str, torch.Tensor], *, cameras: Sequence[TrainingCamera] = (),
                 background=(1.0, 1.0, 1.0), rasterize_mode: str = "classic", name: str = "model",
                 up: Optional[np.ndarray] = None, scene_scale: Optional[float] = None):
        self._init_view(cameras, background, rasterize_mode, name, up, scene_scale)
        self._splats = self._check(splats, name)

    def _init_view(self, cameras, background, rasterize_mode, name, up, scene_scale) -> None:
        """What every 3D scene holds besides its model: lock, version, training cameras, background,
        rasterize mode, name, up direction, scene scale (None: from the means when first asked)."""
        self._lock = threading.Lock()
        self._scene_scale = scene_scale
        self.version = 0
        self.cameras = list(cameras)
        self.background = tuple(float(c) for c in background)
        self.rasterize_mode = rasterize_mode
        self.name = name
        self.up = up
        self.budget = 1.0  # the fraction of the Gaussians shown (`set_budget`)
        self._shown: Optional[Dict[str, torch.Tensor]] = None  # the budgeted model, None: the whole one
        self._importance: Optional[torch.Tensor] = None  # cached per model (`budget_importance`)

    @staticmethod
    def _check(splats, name):
        need = ("means", "scales", "quats", "opacities", "sh0", "shN")
        missing = [k for k in need if k not in splats]
        if missing:
            raise SceneError(f"{name}: not a Gaussian model (missing {', '.join(missing)})")
        return {k: splats[k].detach().float().contiguous() for k in need}

    def update(self, splats: Dict[str, torch.Tensor]) -> None:
        """Swap in a new model; it is shown whole (budget back to 1, importance measured anew when
        a budget is set again)."""
        s = self._check(splats, self.name)
        with self._lock:
            self._splats = s
            self._shown, self._importance, self.budget = None, None, 1.0
            self.version += 1

    @property
    def splats(self) -> Dict[str, torch.Tensor]:
        """The whole model (whatever the budget)."""
        with self._lock:
            return self._splats

    @property
    def shown_splats(self) -> Dict[str, torch.Tensor]:
        """What is rendered and sent: the model cut to the budget (`set_budget`), else the whole one."""
        with self._lock:
            return self._splats if self._shown is None else self._shown

    @property
    def num_gaussians(self) -> int:
        return int(self.splats["means"].shape[0])

    @property
    def num_shown(self) -> int:
        """How many Gaussians the budget shows."""
        return int(self.shown_splats["means"].shape[0])

    def importance_cameras(self):
        """The views importance is measured in: the training cameras (as `splat.cameras.Cameras`
        batches, one per image size, as pinhole cameras), or None for `splat.compress.budget`'s
        fallback (views on the upper hemisphere around the model)."""
        if not self.cameras:
            return None
        from splat.cameras import Cameras

        by_size: Dict[Tuple[int, int], list] = {}
        for c in self.cameras:
            by_size.setdefault((int(c.width), int(c.height)), []).append(c)
        return [Cameras(torch.as_tensor(np.stack([c.viewmat for c in cs]), dtype=torch.float32),
                        torch.as_tensor(np.stack([c.K for c in cs]), dtype=torch.float32), W, H)
                for (W, H), cs in by_size.items()]

    @property
    def importance_measured(self) -> bool:
        """Whether `budget_importance` is cached for the current model (else `set_budget` below 1
        measures it first)."""
        with self._lock:
            return self._importance is not None

    def budget_importance(self) -> torch.Tensor:
        """Each Gaussian's importance (`splat.compress.budget.gaussian_importance` from
        `importance_cameras`), measured on first use and cached until the model changes."""
        with self._lock:
            splats, imp = self._splats, self._importance
        if imp is None:
            from splat.compress.budget import gaussian_importance

            imp = gaussian_importance(splats, self.importance_cameras(), rasterize_mode=self.rasterize_mode,
                                      near_plane=NEAR_PLANE * self.scene_scale)
            with self._lock:
                if self._splats is splats:
                    self._importance = imp
        return imp

    def set_budget(self, fraction: float) -> None:
        """Show a fraction `fraction` in (0, 1] of the Gaussians: `splat.compress.budget.apply_budget`'s
        fast path (the most important ones, each dropped one merged into a near survivor; no
        distillation), importance from `budget_importance`. 1 shows the whole model. Slow the
        first time (the importance is measured); call it off the GUI thread. Raises ``ValueError``
        for a fraction outside (0, 1]."""
        from splat.compress.budget import apply_budget, kept_count

        with self._lock:
            splats = self._splats
        kept_count(1, fraction)  # checks the fraction
        F = float(fraction)
        shown = None if F >= 1.0 else apply_budget(splats, F, self.budget_importance(), distill_steps=0)
        with self._lock:
            if self._splats is not splats:  # the model changed meanwhile: it is shown whole
                return
            self._shown, self.budget = shown, F
            self.version += 1

    @property
    def scene_scale(self) -> float:
        """The scene's size for the near plane: the training cameras' extent when known, else the
        spread of the means at load time (`splat.cameras.points_scale`)."""
        if self._scene_scale is None:
            from splat.cameras import points_scale

            self._scene_scale = points_scale(self.splats["means"].numpy())
        return self._scene_scale

    def render(self, cam: ViewCamera, mode: str = "rgb", backend: str = "auto", **_) -> np.ndarray:
        """uint8 [H,W,3] from `cam`: colour, colour-mapped expected depth, or accumulated opacity."""
        from splat.io.images import colorize, depth_range_of
        from splat.models.static import render_splats, sh_degree_of

        if mode not in self.modes:
            raise ValueError(f"render mode {mode!r}: choose one of {', '.join(self.modes)}")
        s = self.shown_splats
        render_mode = "ED" if mode == "depth" else "RGB"
        bg = torch.tensor(self.background, dtype=torch.float32)[None] if mode == "rgb" else None
        with torch.no_grad():
            c, a, _ = render_splats(s, torch.as_tensor(cam.viewmat, dtype=torch.float32)[None],
                                    torch.as_tensor(cam.K, dtype=torch.float32)[None], cam.width, cam.height,
                                    sh_degree=sh_degree_of(s), backgrounds=bg, render_mode=render_mode,
                                    rasterize_mode=self.rasterize_mode, backend=backend,
                                    near_plane=NEAR_PLANE * self.scene_scale)
        c, a = c[0].cpu(), a[0].cpu()
        return colorize(c, a, mode, depth_range_of(c, a) if mode == "depth" else None)

    def client_splats(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(centers [N,3], covariances [N,3,3], rgbs [N,3] in [0,1], opacities [N,1]) for
        viser's client-side splatting (view-independent colour: the SH degree-0 term), within the budget."""
        return client_splats_of(self.shown_splats)

    def home_pose(self) -> Tuple[np.ndarray, np.ndarray, float]:
        """(wxyz, position, fov_y) of the first view: the first training camera, else
        a camera looking at the model from outside (the render CLI's orbit)."""
        if self.cameras:
            c = self.cameras[0]
            wxyz, pos = pose_from_viewmat(c.viewmat)
            return wxyz, pos, c.fov_y
        from splat.cameras import orbit_cameras

        V = orbit_cameras(1, None, self.splats["means"].numpy(), 25.0)[0]
        wxyz, pos = pose_from_viewmat(V)
        return wxyz, pos, math.radians(50.0)

    def up_direction(self) -> np.ndarray:
        """World up for the viewer's orbit controls: the cameras' mean up (-y), else +z."""
        if self.up is not None:
            return np.asarray(self.up, dtype=np.float64)
        if self.cameras:
            ups = np.stack([-np.asarray(c.viewmat)[1, :3] for c in self.cameras])
            u = ups.mean(0)
            if np.linalg.norm(u) > 1e-6:
                return u / np.linalg.norm(u)
        return np.array([0.0, 0.0, 1.0])


class ModelScene(SplatScene):
    """A model rendered through ``Model.render`` with what its cameras need: a dynamic (4D)
    model (`splat.models.dynamic.DynamicModel`: 4dgs, spacetime) at the time slider's instant,
    a relightable model (`splat.models.relightable`) under the light control's point light
    (initially in front of the scene at the training lights' mean distance and height, with
    their mean intensity). ``update(params)`` swaps in a live training's parameter snapshot
    (the model is rebuilt from it, so a render never sees a mix); client-side splats are the
    model's 3D Gaussians at the current time, or shaded under the current light."""

    modes = ("rgb", "depth", "alpha")
    supports_budget = False  # a model that renders itself has no splats dict to cut

    def __init__(self, model, *, cameras: Sequence[TrainingCamera] = (), background=(1.0, 1.0, 1.0),
                 rasterize_mode: str = "classic", name: str = "model", up: Optional[np.ndarray] = None):
        self._init_view(cameras, background, rasterize_mode, name, up, float(model.scene_scale))
        self._model = model
        dynamic = "time" in model.requires
        self.time_range = tuple(model.time_range) if dynamic else None
        self.t = float(self.time_range[0]) if dynamic else None
        self.has_light = "light_position" in model.requires
        self.light = self.light_intensity = None
        if self.has_light:
            self.light = model.default_light.cpu().numpy().astype(np.float64)
            self.light_intensity = model.default_intensity.cpu().numpy().astype(np.float64)

    def update(self, params: Dict[str, torch.Tensor]) -> None:
        m = self._model
        new = type(m).from_state(m.config, {k: v.detach().cpu() for k, v in params.items()}, m.scene_scale)
        with self._lock:
            self._model = new
            self.version += 1

    def set_time(self, t: float) -> None:
        """Move to time `t` (the slider); client-side splats follow on the next sync."""
        if float(t) != self.t:
            with self._lock:
                self.t = float(t)
                self.version += 1

    def set_light(self, position, intensity=None) -> None:
        """Move the point light to `position` [3] (world) and set its `intensity` [3] (W/sr; None:
        keep it); client-side splats follow on the next sync. Raises ``ValueError`` for a
        non-finite value or a model without lights."""
        if not self.has_light:
            raise ValueError(f"{self.name}: a {self._model.name} model has no light")
        pos = np.asarray(position, dtype=np.float64).reshape(3)
        inten = self.light_intensity if intensity is None else np.asarray(intensity, dtype=np.float64).reshape(3)
        if not (np.isfinite(pos).all() and np.isfinite(inten).all()):
            raise ValueError(f"light position {pos.tolist()} and intensity {inten.tolist()} must be finite")
        with self._lock:
            self.light, self.light_intensity = pos, np.maximum(inten, 0.0)
            self.version += 1

    def current_light(self):
        """(position [3], intensity [3]) of the light as `set_light` last accepted it (finite,
        intensity clamped to >= 0), read together."""
        with self._lock:
            return self.light, self.light_intensity

    @property
    def model(self):
        with self._lock:
            return self._model

    @property
    def splats(self) -> Dict[str, torch.Tensor]:
        return {"means": self.model.params["means"].detach().cpu()}

    @property
    def num_gaussians(self) -> int:
        return int(self.model.num_gaussians)

    def render(self, cam: ViewCamera, mode: str = "rgb", backend: str = "auto", t: Optional[float] = None,
               light=None, light_intensity=None, **_) -> np.ndarray:
        """uint8 [H,W,3] from `cam` at time `t` (dynamic models; default: the slider's) under a point
        light at `light` of `light_intensity` (relightable models; default: the scene's light)."""
        from splat.cameras import Cameras
        from splat.io.images import colorize, depth_range_of
        from splat.render import RenderSettings

        if mode not in self.modes:
            raise ValueError(f"render mode {mode!r}: choose one of {', '.join(self.modes)}")
        extra = {}
        if self.time_range is not None:  # this render's own time and light: threads do not share them
            extra["time"] = torch.tensor([self.t if t is None else float(t)], dtype=torch.float32)
        if self.has_light:
            with self._lock:
                lp = self.light if light is None else light
                li = self.light_intensity if light_intensity is None else light_intensity
            extra["light_position"] = torch.as_tensor(np.asarray(lp, dtype=np.float32).reshape(1, 3))
            extra["light_intensity"] = torch.as_tensor(np.asarray(li, dtype=np.float32).reshape(1, 3))
        model = self.model
        cams = Cameras(torch.as_tensor(cam.viewmat, dtype=torch.float32)[None],
                       torch.as_tensor(cam.K, dtype=torch.float32)[None], cam.width, cam.height, **extra)
        settings = RenderSettings(backend if backend != "cuda" else "auto", self.rasterize_mode).for_scene(
            self.scene_scale)
        bg = torch.tensor(self.background, dtype=torch.float32)[None] if mode == "rgb" else None
        with torch.no_grad():
            c, a, _, _ = model.render(cams, settings, backgrounds=bg, render_mode="ED" if mode == "depth" else "RGB")
        c, a = c[0].cpu(), a[0].cpu()
        return colorize(c, a, mode, depth_range_of(c, a) if mode == "depth" else None)

    def client_splats(self):
        """`SplatScene.client_splats` of the model's Gaussians at the current time, or shaded under the
        current light (SH degree 1 over 32 viewing directions: the client shows degree 0)."""
        if self.has_light:
            with self._lock:
                model, light, intensity = self._model, self.light, self.light_intensity
            return client_splats_of(model.splats_under(light, intensity, sh_degree=1, directions=32))
        return client_splats_of(self.model.splats_at(self.t))


DynamicScene = ModelScene  # the name before relightable models joined (4D models only)


# ----------------------------------------------------------------------------- 2D image models


class Image2DScene:
    """A 2D image model on the plane z = 0 (x right, y down), one image pixel =
    1 / max(width, height) world units, so the image spans about one unit. The
    view is fronto-parallel: the camera's position sets the pan (where its
    viewing axis meets the plane) and the zoom (its distance)."""

    kind = "image2d"
    modes = ("rgb",)
    time_range = None
    has_light = False

    def __init__(self, model, name: str = "image"):
        self.model = model
        self.name = name
        self.version = 0
        self.cameras: List[TrainingCamera] = []
        self.unit = 1.0 / max(model.width, model.height)  # world units per image pixel
        self.first_k: Optional[int] = None

    @property
    def num_gaussians(self) -> int:
        return int(self.model.num_gaussians)

    def view_window(self, cam: ViewCamera) -> Tuple[float, float, float]:
        """(centre x, centre y in image pixels, zoom = output pixels per image pixel)."""
        V = np.asarray(cam.viewmat, dtype=np.float64)
        R = V[:3, :3].T
        pos = -R @ V[:3, 3]
        d = R[:, 2]
        if abs(d[2]) > 1e-6 and -pos[2] / d[2] > 0:
            t = -pos[2] / d[2]
            hit = pos + t * d
            dist = abs(pos[2])
        else:  # looking away from (or along) the plane: centre under the camera
            hit, dist = pos, max(abs(pos[2]), 1e-3)
        dist = max(dist, 1e-4)
        zoom = float(cam.K[1, 1]) * self.unit / dist
        return hit[0] / self.unit, hit[1] / self.unit, zoom

    def render(self, cam: ViewCamera, mode: str = "rgb", backend: str = "auto", **_) -> np.ndarray:
        if mode not in self.modes:
            raise ValueError(f"render mode {mode!r}: a 2D image model renders {', '.join(self.modes)}")
        m = self.model
        cx, cy, zoom = self.view_window(cam)
        zoom = min(max(zoom, 1e-3), 256.0)
        W, H = cam.width, cam.height
        out = np.empty((H, W, 3), np.uint8)
        out[:] = IMAGE2D_BACKGROUND
        GW, GH = max(1, round(m.width * zoom)), max(1, round(m.height * zoom))
        x0, y0 = round(cx * zoom - 0.5 * W), round(cy * zoom - 0.5 * H)
        ax0, ay0 = max(0, x0), max(0, y0)
        ax1, ay1 = min(GW, x0 + W), min(GH, y0 + H)
        if ax1 <= ax0 or ay1 <= ay0:
            return out
        be = backend if backend not in ("cuda", "raytrace") else "auto"  # 2D Gaussians: no ray tracer
        with torch.no_grad():
            img = m.render(size=(GW, GH), crop=(ax0, ay0, ax1 - ax0, ay1 - ay0), first_k=self.first_k,
                           backend=be, clamp=True)
        img = img.cpu()
        if img.shape[-1] == 1:
            img = img.expand(-1, -1, 3)
        out[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0] = (img[..., :3].numpy() * 255 + 0.5).astype(np.uint8)
        return out

    def home_pose(self) -> Tuple[np.ndarray, np.ndarray, float]:
        fov = math.radians(50.0)
        w, h = self.model.width * self.unit, self.model.height * self.unit
        dist = 0.5 * h / math.tan(0.5 * fov) * 1.15
        return np.array([1.0, 0.0, 0.0, 0.0]), np.array([0.5 * w, 0.5 * h, -dist]), fov

    def up_direction(self) -> np.ndarray:
        return np.array([0.0, -1.0, 0.0])


# ----------------------------------------------------------------------------- opening files

MODEL_SUFFIXES = (".ply", ".splat", ".spz", ".sog", ".glb", ".gltf", ".pt", ".pth", ".ckpt", ".sgi")


def _training_cameras(run_cfg: Optional[dict], data: Optional[Path], background, log) -> List[TrainingCamera]:
    """The run's training cameras (with thumbnails), or [] when its dataset cannot be found."""
    from splat.train.run import run_data_path, run_dataset

    path = run_data_path(run_cfg, data)
    if path is None:
        return []
    try:
        ds = run_dataset(path, run_cfg, background)
    except (ValueError, OSError) as e:
        if data is not None:  # asked for explicitly: that is an error
            raise SceneError(f"--data {data}: {e}") from None
        log(f"viewer: no training cameras ({e})")
        return []
    return cameras_of_split(ds.train)


def cameras_of_split(split, thumb: int = 96) -> List[TrainingCamera]:
    from PIL import Image

    cams = []
    for i, name in enumerate(split.names):
        W, H = int(split.widths[i]), int(split.heights[i])
        im = split.images[i] if split.images is not None else None
        th = None
        if im is not None:
            s = thumb / max(W, H)
            th = np.asarray(Image.fromarray(np.asarray(im)).resize((max(1, round(W * s)), max(1, round(H * s))),
                                                                  Image.BILINEAR))
        dist = split.distortions[i] if getattr(split, "distortions", None) is not None else None
        cams.append(TrainingCamera(str(name), np.asarray(split.viewmats[i], dtype=np.float64),
                                   np.asarray(split.Ks[i], dtype=np.float64), W, H, th, dist))
    return cams


def _is_image2d_pt(path: Path) -> bool:
    """Whether a torch file holds a 2D image model, read from its pickle alone (a torch
    zip archive's data.pkl), so a large 3D checkpoint is not loaded twice."""
    import zipfile

    from splat.models.image2d import MODEL_FORMAT

    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            return pkl is not None and MODEL_FORMAT.encode() in z.read(pkl)
    except (zipfile.BadZipFile, OSError):
        return False


def load_scene(path, *, data: Optional[Path] = None, log=print):
    """Open a model for viewing: a run directory, a checkpoint, a .ply / .compressed.ply /
    .splat / .spz / .sog (or its meta.json) / .glb file, or a 2D image model (.pt from
    `splat-image fit`, .sgi).

    A model that comes from a run (its directory, or a file beside config.json)
    brings the run's training cameras; `data` names the dataset explicitly."""
    from splat import io as splat_io

    p = Path(path)
    if not p.exists():
        raise SceneError(f"{p}: no such model file or run directory")
    if p.is_file() and p.suffix.lower() not in MODEL_SUFFIXES and p.name.lower() != "meta.json":
        raise SceneError(f"{p}: not a model file this viewer reads (expected a run directory or one of "
                         f"{', '.join(MODEL_SUFFIXES)})")
    try:
        if p.is_file() and (p.suffix.lower() == ".sgi" or (p.suffix.lower() in (".pt", ".pth") and _is_image2d_pt(p))):
            from splat.image2d import load_image2d

            return Image2DScene(load_image2d(p), name=p.name)
        from splat.models.dynamic import DynamicModel
        from splat.train.run import load_model

        model, run_cfg = load_model(p)
        self_rendered = isinstance(model, DynamicModel) or "light_position" in model.requires
        splats = None if self_rendered else model.to_splats()
        if splats is None and not self_rendered:
            raise ValueError(f"a {model.name} model has no static splats form to view")
    except (splat_io.FormatError, ValueError, KeyError, OSError) as e:
        msg = str(e)
        if str(p) not in msg:
            msg = f"{p}: {msg}"
        raise SceneError(msg) from None
    bg = tuple(run_cfg["background"]) if run_cfg and run_cfg.get("background") else (1.0, 1.0, 1.0)
    rmode = run_cfg.get("rasterize_mode", "classic") if run_cfg else "classic"
    cams = _training_cameras(run_cfg, data, bg, log) if (run_cfg is not None or data is not None) else []
    name = p.name if p.is_file() else p.resolve().name
    if splats is None:
        return ModelScene(model, cameras=cams, background=bg, rasterize_mode=rmode, name=name)
    return SplatScene({k: v.float().contiguous() for k, v in splats.items()}, cameras=cams, background=bg,
                      rasterize_mode=rmode, name=name)

