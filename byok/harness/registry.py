"""Experiment declarations and discovery.

An experiment is a function decorated with :func:`experiment`; it receives a
:class:`~byok.harness.context.Context` and records measurements and checks on it. Its verdict
comes only from its own checks. Files are discovered by path (``experiments/e*.py``): the
harness never imports an experiment by name.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from byok.common import paths
from byok.common.errors import ExperimentError

NEEDS = ("stack", "stack-control", "dm-crypt", "qemu", "cinder")
#: ``E03`` or a variant of it: ``E03-cinder`` runs E03's hypothesis through real Cinder.
ID = re.compile(r"^E(\d+)(?:-([a-z]+))?$")


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
        return sort_key(self.id)[0]

    @property
    def variant(self) -> str:
        """'' for the prototype experiment, 'cinder' for ``E03-cinder``."""
        return sort_key(self.id)[1]


def sort_key(exp_id: str) -> tuple[int, str]:
    """(number, variant) of an experiment id: a variant sorts right after its prototype."""
    m = ID.match(exp_id)
    if not m:
        raise ExperimentError(f"bad experiment id {exp_id!r} (E<number> or E<number>-<variant>)")
    return int(m.group(1)), m.group(2) or ""


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
    sort_key(id)
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


def _load(path: Path) -> None:
    name = f"byok_experiments.{path.stem}"
    if name in sys.modules:
        return
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


def discover(directory: Path | None = None) -> dict[str, Experiment]:
    """Import every ``e*.py`` in ``directory`` (by path) and return the registry, sorted."""
    directory = directory or experiments_dir()
    if not directory.is_dir():
        raise ExperimentError(f"no experiments directory at {directory}")
    for path in sorted(directory.glob("e[0-9]*.py")):
        _load(path)
    return dict(sorted(_REGISTRY.items(), key=lambda kv: sort_key(kv[0])))


def prototype(exp_id: str) -> Experiment:
    """The prototype experiment ``exp_id`` (loading its file if need be): a variant such as
    ``E03-cinder`` takes its hurdle and hypothesis from it, so the two cannot drift apart."""
    if exp_id not in _REGISTRY:
        for path in sorted(experiments_dir().glob(f"e{sort_key(exp_id)[0]:02d}_*.py")):
            _load(path)
    if exp_id not in _REGISTRY:
        raise ExperimentError(f"no prototype experiment {exp_id} for its variant")
    return _REGISTRY[exp_id]


def select(registry: dict[str, Experiment], ids: list[str] | None) -> list[Experiment]:
    if not ids:
        return list(registry.values())
    by_name = {k.lower(): v for k, v in registry.items()}
    missing = [i for i in ids if i.lower() not in by_name]
    if missing:
        raise ExperimentError(f"unknown experiment(s): {', '.join(missing)}",
                              hint="see: byok experiments list")
    return [by_name[i.lower()] for i in ids]
