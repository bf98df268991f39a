"""One long-running process byok starts and must be able to stop again, and only that one.

The same record as the stack's gunicorn servers (:mod:`byok.stack.pidrecord`): a pidfile with the
pid, the kernel start time of that pid and the working directory the process was given (each
daemon gets a directory of its own), so a stale pidfile never leads to signalling a stranger.
The process leads its own process group; stopping signals the group (Cinder's volume service
forks a child per backend, RabbitMQ's script runs Erlang's beam and its helpers).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from byok.common import paths, proc
from byok.common.errors import StackError
from byok.stack.pidrecord import RecordedProcess


@dataclass
class DaemonSpec:
    """How to run one daemon: argv, its own working directory, environment, log file."""

    name: str
    argv: list[str]
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    log_name: str = "service.log"

    @property
    def log(self) -> Path:
        return self.workdir / self.log_name


class Daemon(RecordedProcess):
    """Start, stop and inspect one daemon recorded in ``<run_dir>/<name>.pid``."""

    def __init__(self, spec: DaemonSpec, run_dir: Path) -> None:
        super().__init__(spec.name, run_dir, spec.workdir, spec.log)
        self.spec = spec

    def spawn(self) -> int:
        """Start the process (unless ours runs) and record it; returns its pid."""
        pid = self.running_pid()
        if pid:
            return pid
        self.pidfile.unlink(missing_ok=True)
        paths.private_dir(self.spec.workdir)
        with contextlib.suppress(FileNotFoundError):
            self.log.rename(self.log.with_suffix(".log.1"))
        p = proc.spawn(self.spec.argv, log_path=self.log, env=self.spec.env,
                       cwd=self.spec.workdir)
        self._popen = p
        paths.private_dir(self.pidfile.parent)
        rec = {"pid": p.pid, "start_time": proc.pid_start_time(p.pid),
               "workdir": str(self.spec.workdir), "started_at": time.time(),
               "t0": time.monotonic()}
        self._write_record(rec)
        return p.pid

    def exited(self) -> int | None:
        """The exit status if the process we spawned has ended (None while it runs)."""
        p = getattr(self, "_popen", None)
        if p is not None:
            return p.poll()
        return None if self.running_pid() else -1

    def wait_ready(self, ready: Callable[[], bool], *, timeout: float, what: str) -> float:
        """Poll ``ready()`` until it is true; returns the seconds since the spawn.

        :raises StackError: the process exited, or was not ready within ``timeout`` (it is
            stopped then, so nothing half-started stays behind).
        """
        rec = self.record() or {}
        t0 = float(rec.get("t0", time.monotonic()))
        deadline = time.monotonic() + timeout
        while True:
            code = self.exited()
            if code is not None:
                self.pidfile.unlink(missing_ok=True)
                raise StackError(f"{self.spec.name} exited during start-up (status {code}):\n"
                                 f"{self.log_tail()}", hint=f"full log: {self.log}")
            if ready():
                seconds = round(time.monotonic() - t0, 3)
                rec = self.record() or {}
                rec["startup_seconds"] = seconds
                self._write_record(rec)
                return seconds
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(f"{self.spec.name} was not {what} within {timeout:g} s:\n"
                                 f"{self.log_tail()}", hint=f"full log: {self.log}")
            time.sleep(0.25)

    def stop(self, *, grace: float = 15.0) -> bool:
        """Stop our process (its whole group) if it runs; idempotent."""
        rec = self.record()
        stopped = False
        if self._is_ours(rec):
            assert rec is not None
            stopped = proc.terminate(int(rec["pid"]), grace=grace)
        p = getattr(self, "_popen", None)
        if p is not None:
            with contextlib.suppress(Exception):
                p.wait(timeout=1)
        self.pidfile.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict:
        rec = self.record() or {}
        pid = self.running_pid()
        return {"pid": pid, "running": pid is not None,
                "startup_seconds": rec.get("startup_seconds") if pid else None,
                "started_at": rec.get("started_at") if pid else None,
                "log": str(self.log)}
