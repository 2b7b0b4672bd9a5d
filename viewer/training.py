"""The viewer as a training callback: ``splat-train --viewer``.

The training library never imports this package. pyproject.toml registers
`training_viewer` under the entry-point group ``splat.train_callbacks`` as
``viewer``, and the trainer loads it by that name when ``--viewer`` is given
(`splat.train.callbacks.load_callback`).

`LinkCallback` forwards a training to a `TrainingLink` (statistics, on-request
parameter copies, pause) and is all the training thread ever runs of the
viewer; `ViewerCallback` adds the viewer's lifetime: it checks the port when
made (before any data is loaded), serves the model once training starts, and on
close keeps showing the final model until Ctrl-C when asked to (``--viewer-wait``).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Tuple

from splat.train.callbacks import Callback

from .app import Viewer, check_port
from .live import TrainingLink
from .scene import ModelScene, SplatScene, cameras_of_split

__all__ = ["LinkCallback", "ViewerCallback", "training_viewer"]


class LinkCallback(Callback):
    """Connects a training to `link`: ``step_done`` after each step (inside the timed step:
    four numbers, and a parameter copy only when the viewer asked for one), the pause
    between steps, the final model at the end."""

    def __init__(self, link: Optional[TrainingLink] = None):
        self.link = link

    def on_step(self, trainer, step, stats) -> None:
        self.link.step_done(step, stats["loss"], stats["psnr"], trainer.num_gaussians, trainer.display_model.params)

    def on_pause_point(self, trainer, step, should_stop) -> None:
        if self.link.paused:
            self.link.wait_if_paused(trainer.display_model.params, should_stop=should_stop)

    def on_train_end(self, trainer, metrics) -> None:
        self.link.finish(trainer.display_model.params)


class ViewerCallback(LinkCallback):
    """Serve a live viewer of the training at http://host:port (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, wait: bool = True):
        super().__init__()
        check_port(host, port)  # a busy port fails now, not after loading the data
        self.host, self.port, self.wait = host, port, wait
        self.viewer: Optional[Viewer] = None

    @staticmethod
    def attached_to(trainer) -> "ViewerCallback":
        """The viewer callback that ``--viewer`` attached to `trainer` (to start it, or reach its
        viewer and link, before training). Raises ``ValueError`` when there is none."""
        found = [c for c in trainer.callbacks if isinstance(c, ViewerCallback)]
        if len(found) != 1:
            raise ValueError(f"{len(found)} viewer callbacks are attached to this trainer; expected one (--viewer)")
        return found[0]

    def start(self, trainer) -> Tuple[Viewer, TrainingLink]:
        """Start serving `trainer`'s model (once; training starts it if nobody did)."""
        if self.viewer is None:
            self.link = TrainingLink(trainer.iterations, trainer.start_step)
            from splat.models.dynamic import DynamicModel

            common = dict(cameras=cameras_of_split(trainer.data.train), background=tuple(trainer.cfg.background),
                          rasterize_mode=trainer.cfg.rasterize_mode, name=Path(trainer.out).resolve().name)
            model = trainer.display_model  # the whole model, also on rank 0 of a multi-process run
            if isinstance(model, DynamicModel) or model.requires:
                # rendered by a copy of the model at the slider's time / under the light control's light
                scene = ModelScene(model, **common)
                scene.update({k: v.clone() for k, v in model.state().items()})  # now it holds its own copy
            else:
                splats = model.to_splats()
                if splats is None:
                    raise ValueError(f"--viewer: the viewer cannot show a {model.name} model yet")
                scene = SplatScene({k: v.clone() for k, v in splats.items()}, scene_scale=model.scene_scale,
                                   **common)
            self.viewer = Viewer(scene, host=self.host, port=self.port, link=self.link,
                                 snapshot_dir=Path(trainer.out) / "snapshots", log=trainer.log)
            trainer.log(f"viewer: {self.viewer.url}")
        return self.viewer, self.link

    def on_train_start(self, trainer) -> None:
        self.start(trainer)

    def close(self, trainer, completed: bool) -> None:
        if self.viewer is None:
            return
        try:
            if completed and self.wait:
                trainer.log(f"the viewer stays open at {self.viewer.url} (Ctrl-C to close)")
                try:
                    while True:
                        time.sleep(0.5)
                except KeyboardInterrupt:
                    pass
        finally:
            self.viewer.stop()
            self.viewer = None


def training_viewer(cfg) -> ViewerCallback:
    """The ``viewer`` plugin's factory: a `ViewerCallback` from a `splat.train.TrainConfig`'s
    ``viewer_host``, ``viewer_port`` and ``viewer_wait``."""
    return ViewerCallback(cfg.viewer_host, cfg.viewer_port, cfg.viewer_wait)
