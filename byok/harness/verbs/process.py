"""Process-control verbs: the byok CLI run as a user would, killed with SIGKILL at a named
crash point or after a delay (a power cut for its process group), and the embedded stack's
servers paused, stopped, wiped or put behind a fault-injecting proxy — each restored after."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from byok.common import proc
from byok.common.errors import ExperimentError
from byok.harness.faults import FaultInjectingProxy
from byok.harness.verbs.base import VerbBase

CRASH_ENV = "BYOK_CRASH_AT"  # byok.lifecycle.rotation.crash_point kills itself there


@dataclass(frozen=True)
class Killed:
    """How a byok run that was to be killed ended."""

    returncode: int
    err: str

    @property
    def killed(self) -> bool:
        """Did SIGKILL end it (and not an exit of its own)?"""
        return self.returncode == -signal.SIGKILL


@dataclass(frozen=True)
class Wiped:
    """The deployment's Barbican while :meth:`ProcessVerbs.barbican_wiped` holds it away."""

    db: Path
    stack: Any  # byok.stack.manager.Stack (the harness sits above the stack layer)

    def gone(self) -> bool:
        """No Barbican server runs and its database is not where it was."""
        return self.stack.barbican().running_pid() is None and not self.db.exists()


class ProcessVerbs(VerbBase):
    # -- the byok CLI ---------------------------------------------------------------------------
    def _cli(self, args: list[str], user: str) -> list[str]:
        who = ["--cloud", f"{self.env.cloud}-{user}"] if self.env.cloud else ["--as", user]
        return [sys.executable, "-m", "byok.cli", *args, *who]

    def _cli_env(self, crash_at: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
        if crash_at:
            env[CRASH_ENV] = crash_at
        return env

    def byok_cli(self, args: list[str], *, user: str = "alice", timeout: float = 120,
                 ) -> proc.Result:
        """``byok ARGS`` as ``user`` in a child process (its exit status is the caller's
        to judge)."""
        return proc.run(self._cli(args, user), env=self._cli_env(None), check=False,
                        timeout=timeout, what=f"byok {' '.join(args[:3])}")

    def kill_during(self, args: list[str], *, at: str | None = None, after: float | None = None,
                    user: str = "alice", timeout: float = 120) -> Killed:
        """Run ``byok ARGS`` and SIGKILL it mid-way: ``at`` a named crash point (the product
        kills itself there, ``BYOK_CRASH_AT``), or ``after`` seconds (its whole process group,
        cryptsetup included: a power cut at a random moment)."""
        if (at is None) == (after is None):
            raise ExperimentError("kill_during: give exactly one of at= or after=")
        argv = self._cli(args, user)
        if at is not None:
            r = proc.run(argv, env=self._cli_env(at), check=False, timeout=timeout,
                         what=f"byok {' '.join(args[:3])} (crash at {at})")
            return Killed(r.returncode, r.err)
        p = proc.start(argv, env=self._cli_env(None))  # its own process group
        time.sleep(after or 0.0)
        proc.kill_group(p)
        _, err = p.communicate()
        return Killed(p.returncode, err.decode(errors="replace"))

    # -- the embedded stack's servers -----------------------------------------------------------
    def _stack(self):
        if self.env.stack is None:
            raise ExperimentError(f"{self.exp.id}: needs the embedded stack's servers "
                                  "(declare needs={'stack-control'})")
        return self.env.stack

    @contextlib.contextmanager
    def barbican_paused(self) -> Iterator[None]:
        """Barbican's processes stopped with SIGSTOP (connections accepted, never answered)."""
        pid = self._stack().barbican().running_pid()
        os.killpg(os.getpgid(pid), signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(os.getpgid(pid), signal.SIGCONT)

    @contextlib.contextmanager
    def keystone_down(self) -> Iterator[None]:
        """Keystone stopped; the stack is brought back up afterwards."""
        stack = self._stack()
        stack.keystone().stop()
        try:
            yield
        finally:
            stack.up()

    @contextlib.contextmanager
    def barbican_wiped(self) -> Iterator[Wiped]:
        """The deployment's Barbican gone: server stopped, database moved away; both put back
        (and the stack brought up) afterwards."""
        stack = self._stack()
        db = stack.cfg.state_dir / "barbican" / "barbican.sqlite"
        aside = db.with_name(f"barbican.sqlite.{self.exp.id.lower()}-wiped")
        stack.barbican().stop()
        db.rename(aside)
        try:
            yield Wiped(db, stack)
        finally:
            aside.rename(db)
            stack.up()

    def barbican_faults(self, mode: str, *, fail_first: int | None = None
                        ) -> FaultInjectingProxy:
        """A proxy in front of the real Barbican injecting ``mode`` (error500, truncate,
        garbage, hang), into the first ``fail_first`` requests only if given; use as a
        context manager, its ``url`` as the endpoint."""
        return FaultInjectingProxy(self.env.barbican_url, mode, fail_first=fail_first)
