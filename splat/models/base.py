"""The model interface: what every Gaussian model kind provides to the one training
loop (`splat.train`), the render CLI and the viewer.

A model

* owns its parameters in one `GaussianParams` (a ``torch.nn.ParameterDict`` that
  also records which entries are per-Gaussian, so that density control can clone,
  split and prune any model kind, and leaves the others, such as a decoder
  network's weights, alone);
* turns a camera batch into renderable Gaussians, ``gaussians(cameras, settings,
  step)`` -> `splat.render.Gaussians` (means, quats, scales, opacities, colours or
  SH and the SH degree), which may depend on each camera's time or light. A model
  that needs extra render passes (shadows from a light, say) makes them there,
  through ``splat.render.render_gaussians`` with the same ``settings``;
* may render feature channels instead of colours (``feature_channels > 0``) and
  decode them into RGB after rasterization (``decode``: the post-render step of
  Spacetime Gaussians' feature splatting); the background is composited after
  decoding;
* names its learning rates (``learning_rates(step, iterations)``, one per parameter,
  any schedule) and its regularisation losses (``losses``, already weighted);
* saves and loads through ``state()`` / ``from_state`` (plain tensors, so checkpoints
  stay ``torch.load(weights_only=True)``-readable), and exports a static 3DGS splats
  dict (``to_splats``) where that makes sense.

``Model.render`` glues these together; the trainer, `splat-render` and the viewer
call only it. The static 3DGS model (`splat.models.static.StaticModel`) is the first
implementation.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Dict, Iterable, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from ..cameras import Cameras
from ..render import Gaussians, RenderSettings, render_gaussians

__all__ = ["GaussianParams", "Model", "RenderOutput", "per_gaussian_names", "learning_rate_decay"]


class GaussianParams(torch.nn.ParameterDict):
    """A model's parameters: one ``ParameterDict`` whose ``per_gaussian`` entries share
    their first dimension N (one row per Gaussian); other entries are shared.

    Raises ``ValueError`` when no entry is per-Gaussian, a per-Gaussian name is missing
    or their first dimensions disagree."""

    def __init__(self, tensors: Mapping[str, Tensor], per_gaussian: Iterable[str]):
        super().__init__({k: v if isinstance(v, torch.nn.Parameter) else torch.nn.Parameter(v)
                          for k, v in tensors.items()})
        self.per_gaussian = tuple(per_gaussian)
        if not self.per_gaussian:
            raise ValueError("GaussianParams: name the per-Gaussian parameters (a Model sets `per_gaussian`)")
        missing = [k for k in self.per_gaussian if k not in self]
        if missing:
            raise ValueError(f"GaussianParams: per-Gaussian parameters {missing} are missing")
        sizes = {k: int(self[k].shape[0]) for k in self.per_gaussian}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"GaussianParams: per-Gaussian parameters disagree on N: {sizes}")

    @property
    def num_gaussians(self) -> int:
        return int(self[self.per_gaussian[0]].shape[0])


def per_gaussian_names(params) -> Tuple[str, ...]:
    """The per-Gaussian entries of `params`: ``params.per_gaussian`` for a `GaussianParams`,
    every key for a plain dict or ``ParameterDict`` (gsplat's layout, all per-Gaussian)."""
    return params.per_gaussian if isinstance(params, GaussianParams) else tuple(params.keys())


def learning_rate_decay(lr0: float, lr1: float, step: int, iterations: int) -> float:
    """Exponential decay from `lr0` at step 0 to `lr1` at the last step (the 3DGS means schedule;
    linear where either is 0)."""
    t = min(max(step / max(iterations, 1), 0.0), 1.0)
    if lr0 <= 0 or lr1 <= 0:
        return lr0 * (1 - t) + lr1 * t
    return math.exp((1 - t) * math.log(lr0) + t * math.log(lr1))


class RenderOutput(NamedTuple):
    """What ``Model.render`` returns: `rasterize`'s colours [C,H,W,D], alphas [C,H,W,1] and
    info dict, and the Gaussians that were rendered (for regularisers)."""

    colors: Tensor
    alphas: Tensor
    info: Dict[str, Any]
    gaussians: Gaussians


class Model(torch.nn.Module):
    """Base class of the model kinds (see the module docstring for the contract).

    Subclasses set ``name`` (the ``--model`` choice), ``Config`` (their options
    dataclass, ``--<name>.*`` on the command line) and ``per_gaussian`` (the names of
    their per-Gaussian parameters, which include ``means`` [N,3], ``scales`` (log),
    ``quats`` and ``opacities`` (logits), what density control and the camera
    generators read), and implement ``create``, ``gaussians`` and
    ``learning_rates``. ``requires`` lists the camera fields the model needs from the
    data (``"time"``, ``"light_position"``); the trainer and `splat-render` refuse
    cameras without them.

    ``Config`` may define ``check()`` (raise ``ValueError`` for unusable options; the
    trainer calls it before loading data) and ``scaled(factor)`` (the options for a
    run `factor` times as long as 30k steps, with ``--scale-schedule``).

    Contracts the loop relies on: ``gaussians`` for a batch whose cameras differ in
    what the model depends on (times, lights) may return per-camera colours
    [C,N,D] but one geometry, so a model whose geometry depends on the camera renders
    such cameras one per call (the trainer renders one view per step); random
    choices come from generators seeded by the seed and the step (as
    `splat.train.data.step_generator`), never the global RNG, so a resumed run is exact.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    per_gaussian: ClassVar[Tuple[str, ...]] = ()
    requires: ClassVar[Tuple[str, ...]] = ()
    feature_channels: ClassVar[int] = 0
    default_scene: ClassVar[str] = "static"
    """The embedded scene `splat-train --model NAME` trains without --data ("static", "dynamic" or "relightable")."""
    batch_views: ClassVar[bool] = True
    """Whether cameras that differ in what the model depends on can share one render call
    (one geometry, per-camera colours). False for a model whose geometry depends on the
    camera (the time of a dynamic model): the trainer then renders a batch of views one
    per call (`--batch-size`)."""

    def __init__(self, config, params: Mapping[str, Tensor], scene_scale: float = 1.0):
        super().__init__()
        self.config = config
        self.params = params if isinstance(params, GaussianParams) else GaussianParams(params, self.per_gaussian)
        self.scene_scale = float(scene_scale)

    # ------------------------------------------------------------------ construction and storage
    @classmethod
    def create(cls, config, dataset, *, seed: int = 0) -> "Model":
        """A new model initialised from a loaded `splat.data.Dataset` (its points, cameras, scene scale)."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, config, state: Mapping[str, Tensor], scene_scale: float = 1.0) -> "Model":
        """The model from ``state()``'s tensors (a checkpoint's ``"splats"`` entry)."""
        return cls(config, {k: v.contiguous() for k, v in state.items()}, scene_scale)

    def state(self) -> Dict[str, Tensor]:
        """Every parameter as a detached CPU tensor (what checkpoints store)."""
        return {k: v.detach().cpu() for k, v in self.params.items()}

    def to_splats(self) -> Optional[Dict[str, Tensor]]:
        """The model as a static 3DGS splats dict (`splat.io.save`'s layout) for other
        viewers, or None where a static snapshot makes no sense."""
        return None

    @property
    def num_gaussians(self) -> int:
        return self.params.num_gaussians

    def summary(self) -> str:
        """A few words on the model for logs (the Gaussian count is printed beside it)."""
        return f"{self.name} model"

    # ------------------------------------------------------------------ rendering
    def gaussians(self, cameras: Cameras, settings: RenderSettings = RenderSettings(),
                  step: Optional[int] = None) -> Gaussians:
        """The 3D Gaussians to render for `cameras` at training step `step` (None: the
        finished model, as evaluation and export see it)."""
        raise NotImplementedError

    def decode(self, features: Tensor, alphas: Tensor, cameras: Cameras, step: Optional[int] = None) -> Tensor:
        """Post-render step of feature models: rendered features [C,H,W,F] (alpha-weighted sums,
        as rasterize composites them) and alphas [C,H,W,1] -> RGB [C,H,W,3] premultiplied by
        alpha (the background is then added as ``rgb + (1 - alpha) * background``); a decoder
        of unweighted features divides by alpha first and multiplies its output back."""
        raise NotImplementedError(f"{type(self).__name__} renders colours; it has no decoder")

    def render(self, cameras: Cameras, settings: RenderSettings = RenderSettings(), *, step: Optional[int] = None,
               backgrounds: Optional[Tensor] = None, render_mode: str = "RGB", **kwargs) -> RenderOutput:
        """Render `cameras`: ``gaussians`` -> `rasterize` -> ``decode`` (feature models) ->
        background. `backgrounds` [C,3]; other keyword arguments go to `rasterize`
        (absgrad, tiles, ...)."""
        g = self.gaussians(cameras, settings, step)
        F = self.feature_channels
        if F == 0:
            colors, alphas, info = render_gaussians(g, cameras, settings, backgrounds=backgrounds,
                                                    render_mode=render_mode, **kwargs)
            return RenderOutput(colors, alphas, info, g)
        colors, alphas, info = render_gaussians(g, cameras, settings, render_mode=render_mode, **kwargs)
        if render_mode in ("D", "ED"):
            return RenderOutput(colors, alphas, info, g)
        rgb = self.decode(colors[..., :F], alphas, cameras, step)
        if backgrounds is not None:
            rgb = rgb + (1.0 - alphas) * backgrounds[:, None, None, :]
        return RenderOutput(torch.cat([rgb, colors[..., F:]], -1), alphas, info, g)

    shardable: ClassVar[bool] = True
    """Whether a multi-process run (`splat.train.sharded`) can train the model: its render of an image
    strip needs only the Gaussians whose footprints meet the strip, and its ``losses`` add up over views."""
    shardable_reason: ClassVar[str] = ""
    """Why not, when ``shardable`` is False (for the error message)."""

    has_jacobian: ClassVar[bool] = False
    """Whether ``jacobian`` gives Jacobian-vector products of the render (second-order optimisers)."""

    def jacobian(self, cameras: Cameras, settings: RenderSettings = RenderSettings(), *, step: Optional[int] = None,
                 backgrounds: Optional[Tensor] = None):
        """The Jacobian of ``render(cameras, ...).colors`` with respect to ``params`` at their current
        values, as an object whose ``jvp(tangents)`` gives J v ([C,H,W,3]) for a direction given by
        parameter name (`splat.models.jacobian.RenderJacobian`); J^T w is the render's backward.
        Raises ``NotImplementedError`` for a kind without it (``has_jacobian`` False)."""
        raise NotImplementedError(f"--model {self.name} provides no Jacobian products")

    # ------------------------------------------------------------------ training
    def learning_rates(self, step: int, iterations: int) -> Dict[str, float]:
        """The learning rate of every parameter at `step` of a run of `iterations` steps."""
        raise NotImplementedError

    def update(self, step: int) -> Dict[str, int]:
        """The model's own bookkeeping after step `step`'s optimizer and density control (a
        temporal hierarchy re-assigning its nodes, say); returns event counts for the log.
        It must not change the number of Gaussians (that is density control's)."""
        return {}

    def losses(self, step: int, out: RenderOutput, cameras: Cameras, images: Tensor) -> Dict[str, Tensor]:
        """The model's own loss terms for this step, weighted, added by the trainer to the image
        loss: regularisers, or terms that need the step's `cameras` and ground-truth `images`
        [C,H,W,3] in [0,1] (losses on other render channels, say)."""
        return {}

    @classmethod
    def check_cameras(cls, cameras: Cameras, where: str = "the data") -> None:
        """Raise ``ValueError`` when `cameras` lack a field this model needs (``requires``)."""
        missing = [f for f in cls.requires if getattr(cameras, f) is None]
        if missing:
            raise ValueError(f"--model {cls.name} needs per-camera {', '.join(missing)}; {where} has none")
