"""The pieces the trainer picks by name: model kinds, density strategies, optimizers.

    MODELS["static"].cls        -> StaticModel      (--model static, options --static.*)
    MODELS["4dgs"].cls          -> FourDGSModel     (--model 4dgs, options --4dgs.*, TrainConfig.fourdgs)
    MODELS["spacetime"].cls     -> SpacetimeModel   (--model spacetime, options --spacetime.*)
    MODELS["relightable"].cls   -> RelightableModel (--model relightable, options --relightable.*)
    STRATEGIES["adc"].cls       -> ADCStrategy      (--strategy adc, options --adc.*)
    STRATEGIES["mcmc"].cls      -> MCMCStrategy     (--strategy mcmc, options --mcmc.*)
    OPTIMIZERS["adam"].cls      -> AdamOptimizer    (--optimizer adam, options --adam.*)

A new capability is a module that implements the piece's interface
(`splat.models.base.Model`, `splat.strategies.base.Strategy`,
`splat.optim.base.Optimizer`), one ``register`` call here, and a field of
`TrainConfig` that holds its options dataclass (named by ``field``), so the
command line offers ``--<name> `` as a choice and ``--<name>.*`` for its
options; the loop is not touched. A piece registered at run time without a
field (a test's toy model, a third-party kind used from Python) trains with its
default options; the command line's choices are the names registered here.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

from ..models.fourdgs import FourDGSModel
from ..models.relightable import RelightableModel
from ..models.spacetime import SpacetimeModel
from ..models.static import StaticModel
from ..optim.adam import AdamOptimizer
from ..strategies.adc import ADCStrategy
from ..optim.lm import LMOptimizer
from ..strategies.mcmc import MCMCStrategy
from ..strategies.steepgs import SteepGSStrategy

__all__ = ["Registry", "Entry", "MODELS", "STRATEGIES", "OPTIMIZERS"]


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    cls: type
    """The model or optimizer class, or the strategy dataclass itself."""
    field: Optional[str] = None
    """The `TrainConfig` field that holds its options, if it has one."""

    @property
    def options_class(self) -> type:
        """The options dataclass: ``cls.Config`` for models and optimizers, the strategy class for strategies."""
        return getattr(self.cls, "Config", self.cls)


class Registry:
    """Named pieces of one kind (``"model"``, ``"strategy"``, ``"optimizer"``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Entry] = {}

    def register(self, name: str, cls: type, field: Optional[str] = None) -> Entry:
        """Add (or replace) the piece `name`; returns its entry."""
        entry = Entry(name, cls, field)
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> Entry:
        if not isinstance(name, str):
            raise ValueError(f"the {self.kind} is chosen by name ({', '.join(self._entries)}), got a "
                             f"{type(name).__name__}: pass its options in TrainConfig's field of that name, "
                             f"e.g. TrainConfig({self.kind}='{next(iter(self._entries))}', "
                             f"{self[next(iter(self._entries))].field}=...)")
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> Tuple[str, ...]:
        return tuple(self._entries)


MODELS = Registry("model")
MODELS.register("static", StaticModel, field="static")
MODELS.register("4dgs", FourDGSModel, field="fourdgs")
MODELS.register("spacetime", SpacetimeModel, field="spacetime")
MODELS.register("relightable", RelightableModel, field="relightable")

STRATEGIES = Registry("strategy")
STRATEGIES.register("adc", ADCStrategy, field="adc")
STRATEGIES.register("mcmc", MCMCStrategy, field="mcmc")
STRATEGIES.register("steepgs", SteepGSStrategy, field="steepgs")

OPTIMIZERS = Registry("optimizer")
OPTIMIZERS.register("adam", AdamOptimizer, field="adam")
OPTIMIZERS.register("lm", LMOptimizer, field="lm")
