"""The project's shape: no import cycles, the library never imports the viewer, and the
pieces the trainer picks by name are wired to its configuration.

The import graph counts every import statement of a module: at the top, inside
functions and under ``if TYPE_CHECKING``. ``from P import x`` is an import of P
(running P's ``__init__``) and, when ``P.x`` is a module, of ``P.x`` too; so a
submodule doing ``from . import name`` imports its package's ``__init__``.
Strongly connected components are found with networkx.
"""
import ast
import dataclasses
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("splat", "viewer", "scenes", "rasterizer_cuda")


def _modules():
    """{module name: path} of every .py file in the project's packages."""
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _resolve(module: str, is_package: bool, level: int, target: str) -> str:
    """The absolute name of a (possibly relative) import written in `module`."""
    if level == 0:
        return target
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _project_module(name: str, mods) -> str | None:
    """The longest prefix of `name` that is a project module (import a.b.c of a function c)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in mods:
            return cand
        parts.pop()
    return None


def import_graph() -> nx.DiGraph:
    mods = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module or "")
                targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
            for t in targets:
                dst = _project_module(t, mods)
                if dst is not None and dst != mod:
                    g.add_edge(mod, dst, line=node.lineno)
    return g


def test_graph_sees_every_kind_of_import():
    """The checker itself: function-level imports, relative imports of the package's
    __init__ and of sibling modules are all edges (a test that cannot fail is a defect)."""
    g = import_graph()
    assert g.has_edge("splat.io.ply", "splat.io.common")  # from .common import ...
    assert g.has_edge("splat.io", "splat.io.ply")  # from . import ply as _ply (in __init__)
    assert g.has_edge("splat.train.run", "scenes.default_scene")  # inside a function
    assert g.has_edge("viewer.training", "splat.train.callbacks")
    assert g.has_edge("splat.image2d.cli", "splat.image2d.files")  # from .files import ... inside a function
    # a made-up module with a cycle through a function-level import and a package __init__
    fake = nx.DiGraph([("p", "p.a"), ("p.a", "p")])
    assert any(len(c) > 1 for c in nx.strongly_connected_components(fake))


def test_no_import_cycles():
    g = import_graph()
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    detail = []
    for comp in cycles:
        cyc = nx.find_cycle(g.subgraph(comp))
        detail.append(" -> ".join(f"{a} (line {g.edges[a, b]['line']})" for a, b in cyc) + f" -> {cyc[0][0]}")
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def package_graph(g: nx.DiGraph) -> nx.DiGraph:
    """The import graph between splat's subpackages and the other top-level packages."""
    def group(m):
        p = m.split(".")
        return f"splat.{p[1]}" if p[0] == "splat" and len(p) > 1 else p[0]

    return nx.DiGraph((group(a), group(b)) for a, b in g.edges if group(a) != group(b))


def test_packages_form_layers():
    """Not only modules: the subpackages themselves import one another without a cycle
    (the layering the README's architecture section draws)."""
    p = package_graph(import_graph())
    assert nx.is_directed_acyclic_graph(p), nx.find_cycle(p)
    for low in ("splat.cameras", "splat.io", "splat.metrics", "splat.optim"):  # the bottom layer imports no sibling
        assert not [d for d in p.successors(low) if d.startswith("splat")], (low, list(p.successors(low)))
    assert not p.has_edge("splat.models", "splat.train") and not p.has_edge("splat.strategies", "splat.train")


def test_the_library_never_imports_the_viewer():
    g = import_graph()
    bad = [(a, b, g.edges[a, b]["line"]) for a, b in g.edges if a.split(".")[0] == "splat" and b.split(".")[0] == "viewer"]
    assert not bad, f"splat imports viewer: {bad}"


def test_registries_match_the_config():
    """Every piece with a TrainConfig field has its options class there, and every
    choice on the command line is a registered piece."""
    import typing

    from splat.train import config as config_mod
    from splat.train.config import TrainConfig
    from splat.train.registry import MODELS, OPTIMIZERS, STRATEGIES

    hints = typing.get_type_hints(TrainConfig)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for kind, reg in (("model", MODELS), ("strategy", STRATEGIES), ("optimizer", OPTIMIZERS)):
        assert set(typing.get_args(hints[kind])) == set(reg.names()), kind
        for name in reg.names():
            e = reg[name]
            assert e.field in fields, (kind, name)
            assert isinstance(getattr(TrainConfig(), e.field), e.options_class), (kind, name)
            assert TrainConfig(**{kind: name}).options(kind) == e.options_class()
    with pytest.raises(ValueError, match="unknown model 'nope'; choose one of static"):
        TrainConfig(model="nope").options("model")
    assert config_mod.DEFAULT_SCENE_ITERATIONS == TrainConfig().total_iterations()
