"""What an experiment sees: its environment, the recorder for measurements and checks, and the
verbs its steps are written in (:mod:`byok.harness.verbs`). An experiment imports nothing
else of byok: every verb goes through the product's real code path."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byok.common.errors import ByokError, SkipExperiment
from byok.harness.registry import Experiment
from byok.harness.results import Check, ExperimentResult, Measurement
from byok.harness.verbs import GuestVerbs, KeyVerbs, LuksVerbs, ProcessVerbs, VolumeVerbs
from byok.keys.identity import Identity


@dataclass
class Environment:
    """Where experiments run: the embedded stack (``stack`` set) or a real cloud."""

    identity_factory: Callable[[str], Identity]
    barbican_url: str
    keystone_url: str
    stack: Any = None  # byok.stack.manager.Stack when embedded
    cloud: str | None = None
    _identities: dict = field(default_factory=dict)

    def identity(self, name: str) -> Identity:
        if name not in self._identities:
            self._identities[name] = self.identity_factory(name)
        return self._identities[name]

    @classmethod
    def embedded(cls, stack) -> Environment:
        return cls(stack.identity, stack.cfg.barbican_url, stack.cfg.keystone_url, stack=stack)

    @classmethod
    def from_cloud(cls, cloud: str) -> Environment:
        """Identities ``<cloud>-alice``, ``<cloud>-bob``... from the user's clouds.yaml."""

        def factory(name: str) -> Identity:
            return Identity.from_cloud(f"{cloud}-{name}")

        alice = factory("alice")
        return cls(factory, alice.endpoint("key-manager"), alice.auth_url, cloud=cloud)


class Context(KeyVerbs, VolumeVerbs, LuksVerbs, GuestVerbs, ProcessVerbs):
    """The recorder of one experiment run, and its toolbox: the verbs of
    :mod:`byok.harness.verbs` (keys, volumes, LUKS, guest, processes)."""

    def __init__(self, exp: Experiment, env: Environment, result: ExperimentResult,
                 run_dir: Path, *, progress: Callable[[str], None] | None = None,
                 params: dict | None = None) -> None:
        self.exp = exp
        self.env = env
        self.result = result
        self.run_dir = run_dir
        self.params = {**exp.params, **(params or {})}
        self.result.parameters = dict(self.params)
        self._progress = progress
        self._cleanups: list[Callable[[], None]] = []
        self.scratch = run_dir / "scratch" / f"{exp.id}-r{result.repeat}"
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.artifacts = run_dir / "artifacts" / exp.id
        self.last_error: BaseException | None = None
        self.last_duration: float = 0.0

    # -- recording -----------------------------------------------------------------------------
    def measure(self, name: str, value: Any, unit: str = "", samples: list | None = None,
                note: str = "") -> Any:
        self.result.measurements.append(
            Measurement(name, value, unit, [round(s, 6) if isinstance(s, float) else s
                                            for s in (samples or [])], note))
        return value

    def check(self, claim: str, passed: bool, detail: str = "") -> bool:
        self.result.checks.append(Check(claim, bool(passed), str(detail)[:500]))
        return bool(passed)

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def progress(self, message: str) -> None:
        if self._progress:
            self._progress(f"{self.exp.id}: {message}")

    def skip(self, reason: str) -> None:
        raise SkipExperiment(reason)

    def param(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    @contextlib.contextmanager
    def timed(self, name: str | None = None, unit: str = "s") -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.last_duration = time.perf_counter() - t0
            if name:
                self.measure(name, round(self.last_duration, 6), unit)

    @contextlib.contextmanager
    def expect_error(self, *types: type[BaseException], claim: str | None = None
                     ) -> Iterator[None]:
        """The block must raise one of ``types``; recorded as a check either way."""
        names = "/".join(t.__name__ for t in types)
        t0 = time.perf_counter()
        self.last_error = None
        try:
            yield
        except types as e:
            self.last_error = e
            self.last_duration = time.perf_counter() - t0
            self.check(claim or f"raises {names}", True, f"{type(e).__name__}: {e}")
            return
        except ByokError as e:
            self.last_error = e
            self.last_duration = time.perf_counter() - t0
            self.check(claim or f"raises {names}", False, f"raised {type(e).__name__}: {e}")
            return
        self.last_duration = time.perf_counter() - t0
        self.check(claim or f"raises {names}", False, "no error was raised")

    def cleanup(self, keep_scratch: bool = False) -> None:
        for fn in reversed(self._cleanups):
            _quiet(fn)
        self._cleanups.clear()
        if not keep_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _quiet(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        fn()
