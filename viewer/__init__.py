"""splat's web viewer (viser): any model the toolkit writes, and trainings as they run.

    splat-view MODEL            # serve a model file, checkpoint, run or 2D image model
    splat-train --viewer        # watch a training live

`Viewer` is the app, `load_scene` opens a model, `TrainingLink` connects a trainer.
"""
from .app import Viewer, ViewerError, check_port
from .live import TrainingLink
from .scene import Image2DScene, SceneError, SplatScene, ViewCamera, load_scene

__all__ = ["Viewer", "ViewerError", "check_port", "TrainingLink", "SplatScene", "Image2DScene", "SceneError",
           "ViewCamera", "load_scene"]
