"""`TrainConfig`: the options of `splat-train`, and its JSON form in run directories
and checkpoints.

The model, density strategy and optimizer are plain choices by name (``--model
static --strategy adc --optimizer adam``, from `splat.train.registry`); each
piece's own options live under its name (``--static.lr-means``,
``--adc.grow-grad2d``, ``--adam.eps``). The names options had before the pieces
were named (``--lr-means``, ``--sh-degree``, ``--strategy.grow-grad2d``, ...)
still work as aliases, and configurations saved in that layout load (see
`config_from_json`).
"""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Annotated, Any, List, Literal, Optional, Tuple

from tyro.conf import arg

from ..distributed.world import DistConfig
from ..models.fourdgs import FourDGSConfig
from ..models.relightable import RelightableConfig
from ..models.spacetime import SpacetimeConfig
from ..models.static import StaticConfig
from ..optim.adam import AdamConfig
from ..optim.lm import LMConfig
from ..render import Backend, RasterizeMode
from ..strategies.adc import ADCStrategy
from ..strategies.mcmc import MCMCStrategy
from ..strategies.steepgs import SteepGSStrategy
from ..compress.grid_loss import GridConfig
from .registry import MODELS, OPTIMIZERS, STRATEGIES

__all__ = ["TrainConfig", "config_to_json", "config_from_json", "DEFAULT_ITERATIONS", "DEFAULT_SCENE_ITERATIONS"]

DEFAULT_ITERATIONS = 30_000
DEFAULT_SCENE_ITERATIONS = 3000

ModelName = Literal[MODELS.names()]  # type: ignore[valid-type]
StrategyName = Literal[STRATEGIES.names()]  # type: ignore[valid-type]
OptimizerName = Literal[OPTIMIZERS.names()]  # type: ignore[valid-type]
ExportFormat = Literal["ply", "splat", "spz", "compressed_ply", "sog", "glb"]


@dataclasses.dataclass
class TrainConfig:
    """Train Gaussians on a COLMAP, NeRF-synthetic or nerfstudio folder (or the embedded default scene)."""

    data: Optional[Path] = None
    """Dataset folder (format detected); omit to train the embedded default scene (the dynamic one for
    dynamic models)."""
    out: Path = Path("runs/default")
    """Run directory: config.json, metrics.json, ckpts/, renders/, model.ply."""
    iterations: Optional[int] = None
    """Optimizer steps (--batch-size views per step). Default: 30000, or 3000 for the embedded default scenes."""
    batch_size: int = 1
    """Training views per optimizer step; their gradients are averaged (losses are the views' mean). Views
    of one size render in one call (one per call for dynamic models); Adam's learning rates are scaled by
    sqrt(B) and its betas raised to the B-th power (Grendel's rule; --adam.batch-scaling none to keep them)."""
    blocks: int = 0
    """Train a large scene as K blocks (BlockGaussian / CityGaussian): a content-aware partition of the scene from
    the point density and camera visibility, each block trained with the cameras that see it, then merged into one
    model (OUT/model.ply) without seams or duplicates. 0: one model. Under torchrun the blocks are shared out over
    the processes."""
    block: Optional[int] = None
    """With --blocks K: train only block i (0..K-1) into OUT/blocks/<i> (to spread the blocks over machines by
    hand); a later `--blocks K` run without --block trains what is missing and merges."""
    blocks_margin: float = 0.3
    """With --blocks: each block trains the Gaussians of its core cell grown by this fraction of the cell's size on
    each bounded side."""
    blocks_coarse: float = 0.5
    """With --blocks: steps of the coarse global model (all views) that the blocks start from, as a fraction of
    --iterations (CityGaussian's prior)."""
    blocks_context: Literal["aux", "coarse", "none"] = "aux"
    """With --blocks: the coarse Gaussians around a block that its cameras see: aux (optimised, never densified,
    dropped at the merge; BlockGaussian's auxiliary points), coarse (frozen; CityGaussian) or none."""
    dist: DistConfig = dataclasses.field(default_factory=DistConfig)
    """Multi-process training (Grendel), used when launched with torchrun: --dist.*."""
    resume: bool = False
    """Continue from the last checkpoint in --out (its saved config is used)."""
    data_format: Literal["auto", "colmap", "blender", "nerfstudio", "n3v"] = "auto"
    """Dataset layout; auto detects it from the folder."""
    downscale: int = 1
    """Integer image downscale factor (uses images_N/ folders where they exist)."""
    undistort: bool = False
    """Undistort the images of distorted cameras (COLMAP OPENCV, SIMPLE_RADIAL, OPENCV_FISHEYE, ...) to pinhole
    ones before training. By default they train as they are, rendered through their lens model (the unscented
    projection of 3DGUT on the rasterizer, exact rays on the ray tracer)."""
    test_every: int = 8
    """Every N-th image (by name) is held out for testing where the data has no split; 0 = no test set."""
    frame_step: int = 1
    """Multi-view video (n3v): keep every n-th frame."""
    max_frames: Optional[int] = None
    """Multi-view video (n3v): keep at most this many frames per video (default: all)."""
    background: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Background colour: RGBA images are composited on it and renders use it."""
    normalize: bool = True
    """Recentre and rescale COLMAP/nerfstudio scenes (the transform is saved with the model)."""
    max_init_points: Optional[int] = None
    """Subsample the initial point cloud to at most this many points."""
    num_random_points: int = 100_000
    """Random initial points when the data has none (NeRF-synthetic without points3d.ply)."""
    model: ModelName = "static"
    """Model kind (its options: --<model>.*)."""
    strategy: StrategyName = "adc"
    """Density control (its options: --<strategy>.*; step counts are for 30000 iterations, see --scale-schedule)."""
    optimizer: OptimizerName = "adam"
    """Optimizer (its options: --<optimizer>.*)."""
    backend: Backend = "auto"
    """Renderer backend: auto (cuda for CUDA tensors, else the native cpu one), cpu, torch (reference), cuda, or
    raytrace (3DGRT ray tracing through a BVH; distorted and rolling-shutter cameras as they are)."""
    rasterize_mode: RasterizeMode = "classic"
    """classic, or antialiased (Mip-Splatting's opacity compensation)."""
    device: str = "cpu"
    """Torch device of the model and images (cpu, cuda)."""
    threads: int = 0
    """CPU threads (torch's and the native kernels'). 0: the cores this process may use, fewer while
    other processes keep some of them busy (checked every second; splat.train.threads: spinning
    OpenMP workers beside other work slow a run far below its fair share); N: exactly N."""
    ssim_lambda: float = 0.2
    """Loss = (1 - lambda) * L1 + lambda * (1 - SSIM)."""
    scale_schedule: bool = True
    """Multiply the density-control and SH step counts by iterations/30000 (gsplat's steps_scaler)."""
    eval_every: int = 0
    """Evaluate on the test views every N steps (0: only at the end)."""
    save_every: int = 1000
    """Write a checkpoint every N steps (and at the end, and on Ctrl-C)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    export: List[ExportFormat] = dataclasses.field(default_factory=lambda: ["ply"])
    """Formats to write the final model in (model.<ext>)."""
    save_renders: int = -1
    """How many test views to save as PNG (prediction beside ground truth); -1: all."""
    seed: int = 0
    """Seed of the random initial points, the view order and density control's random choices."""
    progress: bool = True
    """Show a progress bar."""
    viewer: bool = False
    """Serve a live web viewer of the training (viser): the current model from any camera, status, loss plot, pause."""
    viewer_port: int = 8080
    """Port of the live viewer (0: any free port)."""
    viewer_host: str = "127.0.0.1"
    """Address the live viewer listens on; 0.0.0.0 makes it reachable from other machines."""
    viewer_wait: bool = True
    """After training, keep the viewer open on the final model until Ctrl-C."""
    static: StaticConfig = dataclasses.field(default_factory=StaticConfig)
    """--model static: 3D Gaussian splatting with SH colours."""
    fourdgs: Annotated[FourDGSConfig, arg(name="4dgs")] = dataclasses.field(default_factory=FourDGSConfig)
    """--model 4dgs: XYZT Gaussians sliced in time (4D Gaussian splatting; dynamic data)."""
    spacetime: SpacetimeConfig = dataclasses.field(default_factory=SpacetimeConfig)
    """--model spacetime: Spacetime Gaussians (polynomial motion, temporal opacity; dynamic data)."""
    relightable: RelightableConfig = dataclasses.field(default_factory=RelightableConfig)
    """--model relightable: GS^3 relightable Gaussians (reflectance, shadows; point-lit data)."""
    adc: ADCStrategy = dataclasses.field(default_factory=ADCStrategy)
    """--strategy adc: adaptive density control (3DGS; gsplat's DefaultStrategy)."""
    mcmc: MCMCStrategy = dataclasses.field(default_factory=MCMCStrategy)
    """--strategy mcmc: 3DGS as Markov chain Monte Carlo (relocation, noise, regularisers; gsplat's MCMCStrategy)."""
    steepgs: SteepGSStrategy = dataclasses.field(default_factory=SteepGSStrategy)
    """--strategy steepgs: steepest-descent splitting (SteepGS: split where the splitting matrix has a negative
    eigenvalue, two offspring along its eigenvector)."""
    adam: AdamConfig = dataclasses.field(default_factory=AdamConfig)
    """--optimizer adam: Adam per parameter."""
    lm: LMConfig = dataclasses.field(default_factory=LMConfig)
    """--optimizer lm: Adam warm-up, then Levenberg-Marquardt steps (3DGS-LM; PCG on the normal equations)."""
    compress: Literal["none", "sog"] = "none"
    """sog: train for compression (Self-Organizing Gaussians): the Gaussians kept sorted into the .sog
    image grid (PLAS) with a smoothness loss on it, and model.sog written in the trained grid (or in
    Morton order where that is smaller)."""
    sog: GridConfig = dataclasses.field(default_factory=GridConfig)
    """--compress sog: the grid smoothness loss and sorting."""

    def options(self, kind: str):
        """The options of the chosen piece of `kind` ("model", "strategy", "optimizer"):
        its `TrainConfig` field, or its defaults when it has none. Raises ``ValueError``
        for a name that is not registered."""
        entry = _REGISTRIES[kind][getattr(self, kind)]
        return getattr(self, entry.field) if entry.field else entry.options_class()

    def total_iterations(self) -> int:
        """--iterations, or its default (30000; 3000 for the embedded default scene)."""
        if self.iterations is not None:
            return int(self.iterations)
        return DEFAULT_SCENE_ITERATIONS if self.data is None else DEFAULT_ITERATIONS


_REGISTRIES = {"model": MODELS, "strategy": STRATEGIES, "optimizer": OPTIMIZERS}


# ----------------------------------------------------------------------------- JSON


def config_to_json(cfg) -> dict:
    """A config dataclass (nested ones included) as JSON-ready plain values."""

    def conv(v):
        if isinstance(v, Path):
            return str(v)
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


# options that sat at the top level (and `strategy` held ADC's options) before the pieces were named
_LEGACY_STATIC = ("sh_degree", "sh_degree_interval", "init_opacity", "init_scale", "lr_means", "lr_means_final",
                  "lr_scales", "lr_quats", "lr_opacities", "lr_sh0", "lr_shN")


def _migrate(d: dict) -> dict:
    """The 0.1 layout (``strategy`` = ADC's options, model options at the top level) -> today's."""
    d = dict(d)
    if isinstance(d.get("strategy"), dict):
        d["adc"] = d.pop("strategy")
        d["strategy"] = "adc"
        d.setdefault("static", {}).update({k: d.pop(k) for k in _LEGACY_STATIC if k in d})
    return d


def _build(cls, d: dict, where: str):
    """Instantiate dataclass `cls` from `d`, nested dataclasses, paths and tuples included."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{where} has unknown fields {sorted(unknown)}")
    return cls(**{k: _coerce(hints[k], v, f"{where}.{k}") for k, v in d.items()})


def _coerce(hint, v: Any, where: str):
    if v is None:
        return None
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return _coerce(typing.get_args(hint)[0], v, where)
    if origin is typing.Union:  # Optional[X]
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(inner[0], v, where) if len(inner) == 1 else v
    if dataclasses.is_dataclass(hint):
        return _build(hint, v, where)
    if hint is Path:
        return Path(v)
    if origin is tuple:
        return tuple(v)
    return v


def config_from_json(d: dict, cls=TrainConfig) -> TrainConfig:
    """A `TrainConfig` from `config_to_json`'s output (also the 0.1 layout). Raises
    ``ValueError`` naming an unknown field."""
    return _build(cls, _migrate(d), "checkpoint config")
