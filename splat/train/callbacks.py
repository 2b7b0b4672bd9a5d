"""Callbacks: how anything outside the training loop attaches to it.

The trainer calls, in this order::

    on_train_start(trainer)                  after the data and model are ready
    on_step(trainer, step, stats)            after every step, inside its timed region:
                                             keep it to microseconds (stats: loss, psnr, events)
    on_eval(trainer, step, metrics)          after a periodic evaluation
    on_checkpoint(trainer, step, path)       after a checkpoint is written
    on_pause_point(trainer, step, should_stop)  between steps, outside the timed region: the
                                             one place a callback may hold the training (a
                                             viewer's pause); return when should_stop() is true
    on_train_end(trainer, metrics)           after the final evaluation and export
    close(trainer, completed)                once, from Trainer.close(): completed is False
                                             when training failed or was interrupted

`trainer` is the `splat.train.Trainer`: its ``model`` (parameters in
``model.params``), ``data``, ``cfg``, ``iterations``, ``num_gaussians`` and ``out``
are there to read. A callback must not change training results.

Plugins: a package registers a callback factory under the entry-point group
``splat.train_callbacks`` (``factory(cfg: TrainConfig) -> Callback``); the viewer
package registers ``viewer``, which ``splat-train --viewer`` loads by name
(`load_callback`), so the library never imports the viewer.
"""
from __future__ import annotations

from typing import Callable, Dict, List

__all__ = ["Callback", "CallbackList", "ENTRY_POINT_GROUP", "load_callback"]

ENTRY_POINT_GROUP = "splat.train_callbacks"


class Callback:
    """Base class with every hook a no-op."""

    def on_train_start(self, trainer) -> None:
        pass

    def on_step(self, trainer, step: int, stats: Dict) -> None:
        pass

    def on_eval(self, trainer, step: int, metrics: Dict) -> None:
        pass

    def on_checkpoint(self, trainer, step: int, path) -> None:
        pass

    def on_pause_point(self, trainer, step: int, should_stop: Callable[[], bool]) -> None:
        pass

    def on_train_end(self, trainer, metrics: Dict) -> None:
        pass

    def close(self, trainer, completed: bool) -> None:
        pass


class CallbackList(Callback):
    """Several callbacks called in order, as one."""

    def __init__(self, callbacks=()):
        self.callbacks: List[Callback] = list(callbacks)

    def append(self, cb: Callback) -> None:
        self.callbacks.append(cb)

    def __iter__(self):
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def on_train_start(self, trainer) -> None:
        for cb in self.callbacks:
            cb.on_train_start(trainer)

    def on_step(self, trainer, step, stats) -> None:
        for cb in self.callbacks:
            cb.on_step(trainer, step, stats)

    def on_eval(self, trainer, step, metrics) -> None:
        for cb in self.callbacks:
            cb.on_eval(trainer, step, metrics)

    def on_checkpoint(self, trainer, step, path) -> None:
        for cb in self.callbacks:
            cb.on_checkpoint(trainer, step, path)

    def on_pause_point(self, trainer, step, should_stop) -> None:
        for cb in self.callbacks:
            cb.on_pause_point(trainer, step, should_stop)

    def on_train_end(self, trainer, metrics) -> None:
        for cb in self.callbacks:
            cb.on_train_end(trainer, metrics)

    def close(self, trainer, completed: bool) -> None:
        """Close every callback, even when one of them raises (the first error is re-raised)."""
        error = None
        for cb in self.callbacks:
            try:
                cb.close(trainer, completed)
            except BaseException as e:  # noqa: BLE001
                error = error or e
        if error is not None:
            raise error


def load_callback(name: str, cfg) -> Callback:
    """The callback that the plugin `name` (entry-point group ``splat.train_callbacks``) makes
    for `cfg`. Raises ``ValueError`` when no installed package provides it."""
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        have = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        raise ValueError(f"no '{name}' plugin is installed (entry-point group {ENTRY_POINT_GROUP}"
                         + (f" has {', '.join(have)}" if have else " is empty")
                         + "); install splat with its viewer: pip install -e .")
    return found[0].load()(cfg)
