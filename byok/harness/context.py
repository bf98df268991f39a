"""What an experiment sees: its environment (identities, keys, volumes, the hook) and the
recorder for measurements and checks. Everything goes through the product's real code path."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byok.common.errors import ByokError, SkipExperiment
from byok.common.sensitive import Sensitive
from byok.harness.registry import Experiment
from byok.harness.results import Check, ExperimentResult, Measurement
from byok.keys.identity import Identity
from byok.keys.ref import KeyRef


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


class Context:
    """The recorder and the toolbox of one experiment run."""

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
        except types as e:  # type: ignore[misc]
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

    # -- the toolbox -----------------------------------------------------------------------------
    def user(self, name: str = "alice") -> Identity:
        return self.env.identity(name)

    def on_cleanup(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def user_key(self, user: str = "alice", kind: str = "aes512", *, keep: bool = False,
                 **overrides: Any) -> tuple[KeyRef, bytes]:
        """A new secret stored in Barbican *as the user* (removed after the experiment)."""
        from byok.keys.barbican import BarbicanAPI

        api = BarbicanAPI(self.user(user), self.env.barbican_url)
        if kind == "passphrase":
            raw = overrides.pop("payload", os.urandom(16).hex().encode())
            ref = api.store(Sensitive(raw), secret_type="passphrase",
                            name=f"{self.exp.id}-passphrase", **overrides)
        else:
            bits = int(kind[3:])
            raw = overrides.pop("payload", os.urandom(bits // 8))
            args: dict[str, Any] = {"algorithm": "aes", "bit_length": bits, "mode": "xts",
                                    "secret_type": "symmetric"} | overrides
            ref = api.store(Sensitive(raw), name=f"{self.exp.id}-{kind}", **args)
        if not keep:
            self.on_cleanup(lambda: _quiet(lambda: api.delete(ref, force=True)))
        return ref, raw

    def volumes(self, user: str = "alice", *, with_service: bool = True, **kw: Any):
        from byok.lifecycle.volumes import Pool, VolumeService

        pool = Pool(self.scratch / "pool")
        svc = VolumeService(pool, self.user(user),
                            service=self.user("cinder") if with_service else None,
                            endpoint=self.env.barbican_url, **kw)

        def release_all() -> None:
            for rec in pool.list():
                _quiet(functools.partial(svc.delete, rec.id))

        self.on_cleanup(release_all)
        return svc

    def hook(self, user: str = "alice", **kw: Any):
        from byok.attach.hook import AttachHook

        return AttachHook(self.user(user), endpoint=self.env.barbican_url, **kw)

    def blank_file(self, name: str, size: int) -> Path:
        from byok.common import sparse

        p = self.scratch / name
        p.unlink(missing_ok=True)
        sparse.create(p, size)
        return p

    def cleanup(self, keep_scratch: bool = False) -> None:
        for fn in reversed(self._cleanups):
            _quiet(fn)
        self._cleanups.clear()
        if not keep_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _quiet(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        fn()
