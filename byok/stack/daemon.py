"""One long-running process byok starts and must be able to stop again, and only that one.

The same record as the stack's gunicorn servers (:mod:`byok.stack.server`): a pidfile with the
pid, the kernel start time of that pid and the working directory the process was given (each
daemon gets a directory of its own), so a stale pidfile never leads to signalling a stranger.
The process leads its own process group; stopping signals the group (Cinder's volume service
forks a child per backend, RabbitMQ's script runs Erlang's beam and its helpers).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from byok.common import paths, proc
from byok.common.errors import StackError


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


class Daemon:
    """Start, stop and inspect one daemon recorded in ``<run_dir>/<name>.pid``."""

    def __init__(self, spec: DaemonSpec, run_dir: Path) -> None:
        self.spec = spec
        self.pidfile = run_dir / f"{spec.name}.pid"

    def record(self) -> dict | None:
        try:
            return json.loads(self.pidfile.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"pid": None, "corrupt": True}

    def _is_ours(self, rec: dict | None) -> bool:
        if not rec or not rec.get("pid"):
            return False
        pid = int(rec["pid"])
        if not proc.pid_alive(pid) or proc.pid_start_time(pid) != rec.get("start_time"):
            return False
        return proc.pid_cwd(pid) == self.spec.workdir.resolve()

    def running_pid(self) -> int | None:
        rec = self.record()
        return int(rec["pid"]) if rec is not None and self._is_ours(rec) else None

    def spawn(self) -> int:
        """Start the process (unless ours runs) and record it; returns its pid."""
        pid = self.running_pid()
        if pid:
            return pid
        self.pidfile.unlink(missing_ok=True)
        paths.private_dir(self.spec.workdir)
        with contextlib.suppress(FileNotFoundError):
            self.spec.log.rename(self.spec.log.with_suffix(".log.1"))
        p = proc.spawn(self.spec.argv, log_path=self.spec.log, env=self.spec.env,
                       cwd=self.spec.workdir)
        self._popen = p
        paths.private_dir(self.pidfile.parent)
        rec = {"pid": p.pid, "start_time": proc.pid_start_time(p.pid),
               "workdir": str(self.spec.workdir), "started_at": time.time(),
               "t0": time.monotonic()}
        self.pidfile.write_text(json.dumps(rec))
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
                                 f"{self.log_tail()}", hint=f"full log: {self.spec.log}")
            if ready():
                seconds = round(time.monotonic() - t0, 3)
                rec = self.record() or {}
                rec["startup_seconds"] = seconds
                self.pidfile.write_text(json.dumps(rec))
                return seconds
            if time.monotonic() > deadline:
                self.stop()
                raise StackError(f"{self.spec.name} was not {what} within {timeout:g} s:\n"
                                 f"{self.log_tail()}", hint=f"full log: {self.spec.log}")
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
                "log": str(self.spec.log)}

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.spec.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "    (no log)"
        return "\n".join("    " + line for line in text[-lines:])
