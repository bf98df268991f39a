"""Experiment declarations and discovery.

An experiment is a function decorated with :func:`experiment`; it receives a
:class:`~byok.harness.context.Context` and records measurements and checks on it. Its verdict
comes only from its own checks. Files are discovered by path (``experiments/e*.py``): the
harness never imports an experiment by name.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from byok.common import paths
from byok.common.errors import ExperimentError

NEEDS = ("stack", "stack-control", "dm-crypt", "qemu")


@dataclass
class Experiment:
    id: str
    title: str
    hurdle: str
    hypothesis: str
    needs: frozenset[str]
    params: dict
    func: Callable
    source: str = ""
    plots: tuple[str, ...] = field(default=())

    @property
    def number(self) -> int:
        return int(self.id[1:])


_REGISTRY: dict[str, Experiment] = {}


def experiment(
    id: str,
    *,
    title: str,
    hurdle: str,
    hypothesis: str,
    needs: set[str] | frozenset[str] = frozenset({"stack"}),
    params: dict | None = None,
) -> Callable[[Callable], Callable]:
    """Register an experiment. ``needs`` ⊆ {stack, stack-control, dm-crypt, qemu}."""
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ExperimentError(f"{id}: unknown needs {sorted(unknown)}; known: {NEEDS}")

    def register(func: Callable) -> Callable:
        if id in _REGISTRY and _REGISTRY[id].func is not func:
            raise ExperimentError(f"experiment id {id} is declared twice")
        _REGISTRY[id] = Experiment(
            id=id, title=title, hurdle=hurdle, hypothesis=hypothesis,
            needs=frozenset(needs), params=dict(params or {}), func=func,
            source=getattr(func, "__module__", ""),
        )
        return func

    return register


def experiments_dir() -> Path:
    root = paths.project_root()
    return (root / "experiments") if root else Path.cwd() / "experiments"


def discover(directory: Path | None = None) -> dict[str, Experiment]:
    """Import every ``e*.py`` in ``directory`` (by path) and return the registry, sorted."""
    directory = directory or experiments_dir()
    if not directory.is_dir():
        raise ExperimentError(f"no experiments directory at {directory}")
    for path in sorted(directory.glob("e[0-9]*.py")):
        name = f"byok_experiments.{path.stem}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ExperimentError(f"cannot load experiment file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise ExperimentError(f"experiment file {path.name} failed to import: {e}") from e
    return dict(sorted(_REGISTRY.items(), key=lambda kv: kv[1].number))


def select(registry: dict[str, Experiment], ids: list[str] | None) -> list[Experiment]:
    if not ids:
        return list(registry.values())
    wanted = [i.upper() for i in ids]
    missing = [i for i in wanted if i not in registry]
    if missing:
        raise ExperimentError(f"unknown experiment(s): {', '.join(missing)}",
                              hint="see: byok experiments list")
    return [registry[i] for i in wanted]
