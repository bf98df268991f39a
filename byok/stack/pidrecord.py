"""The record of a process byok started: ``<run_dir>/<name>.pid`` (JSON: pid, the kernel start
time of that pid, start-up seconds, ...) and the working directory it was given.

A process is "ours" only if its pid is alive, has the recorded start time and runs in the
recorded working directory (gunicorn rewrites its title, but its cwd stays pinned), so a stale
pidfile never leads to signalling a stranger. Shared by the stack's gunicorn servers and the
Cinder/RabbitMQ daemons.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from byok.common import proc


class RecordedProcess:
    """Reads and checks the pidfile of one process; subclasses start and stop it."""

    def __init__(self, name: str, run_dir: Path, workdir: Path, log: Path) -> None:
        self.pidfile = run_dir / f"{name}.pid"
        self._workdir = workdir
        self.log = log

    def record(self) -> dict[str, Any] | None:
        try:
            rec: dict[str, Any] = json.loads(self.pidfile.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return {"pid": None, "corrupt": True}
        return rec

    def _write_record(self, rec: dict[str, Any]) -> None:
        self.pidfile.write_text(json.dumps(rec))

    def _is_ours(self, rec: dict[str, Any] | None) -> bool:
        if not rec or not rec.get("pid"):
            return False
        pid = int(rec["pid"])
        if not proc.pid_alive(pid) or proc.pid_start_time(pid) != rec.get("start_time"):
            return False
        return proc.pid_cwd(pid) == self._workdir.resolve()

    def running_pid(self) -> int | None:
        rec = self.record()
        return int(rec["pid"]) if rec is not None and self._is_ours(rec) else None

    def log_tail(self, lines: int = 12) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "    (no log)"
        return "\n".join("    " + line for line in text[-lines:])
