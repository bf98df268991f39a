"""What every verb group stands on: the environment, the scratch directory, identities and
the cleanups that run after the experiment (the context provides the state)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from byok.harness.context import Environment
    from byok.harness.registry import Experiment
    from byok.keys.identity import Identity


class VerbBase:
    env: Environment
    exp: Experiment
    scratch: Path
    _cleanups: list[Callable[[], None]]

    def user(self, name: str = "alice") -> Identity:
        """The identity ``name`` (cached for the run: its token is reused)."""
        return self.env.identity(name)

    def on_cleanup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after the experiment (last registered, first run; errors ignored)."""
        self._cleanups.append(fn)
