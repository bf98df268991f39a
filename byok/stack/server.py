"""One WSGI server of the embedded stack (Keystone or Barbican) served by gunicorn.

A server is started detached and recorded in ``<state>/run/<name>.pid`` (JSON: pid, the kernel
start time of that pid, port, start-up seconds). Stopping signals only a process whose pid,
start time and working directory match the record (:mod:`byok.stack.pidrecord`), so a stale
pidfile can never kill a stranger.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from byok.common import paths, proc
from byok.common.errors import PortInUse, StackError
from byok.stack.pidrecord import RecordedProcess


@dataclass
class ServerSpec:
    """How to run one server: WSGI app, port, working dir, environment, health URL."""

    name: str
    app: str
    port: int
    host: str
    workdir: Path
    env: dict[str, str]
    health_path: str = "/"
    threads: int = 8
    workers: int = 1
    python: str | None = None  # another venv's interpreter (cinder-api runs in .venv-openstack)
    port_hint: str | None = None  # how to choose another port (default: byok stack up's flag)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _base_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV", "PYTHONPATH")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def port_owner(port: int) -> str:
    """Best-effort description of who listens on ``port`` (for error messages)."""
    try:
        import psutil

        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                p = psutil.Process(c.pid)
                return f"pid {c.pid} ({' '.join(p.cmdline()[:3])})"
    except Exception:  # noqa: S110 - only decoration of an error message
        pass
    return "another process"


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback URL
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


class Server(RecordedProcess):
    """Start, stop and inspect one gunicorn-served WSGI app."""

    def __init__(self, spec: ServerSpec, run_dir: Path) -> None:
        super().__init__(spec.name, run_dir, spec.workdir, spec.workdir / "gunicorn.log")
        self.spec = spec

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, *, timeout: float = 60.0) -> float:
        """Start the server unless ours already runs; return seconds until it answered HTTP."""
        if self.running_pid():
            return 0.0
        rec = self.record()
        if rec is not None:
            # Stale: the recorded process is gone, or the pid now belongs to someone else.
            self.pidfile.unlink(missing_ok=True)
        self.check_port()
        argv = [
            self.spec.python or sys.executable, "-m", "gunicorn",
            "--bind", f"{self.spec.host}:{self.spec.port}",
            "--workers", str(self.spec.workers), "--threads", str(self.spec.threads),
            "--timeout", "120", "--graceful-timeout", "5",
            "--chdir", str(self.spec.workdir),
            "--worker-tmp-dir", "/dev/shm",  # noqa: S108 - gunicorn heartbeat files, tmpfs
            self.spec.app,
        ]
        env = _base_env() | self.spec.env
        with contextlib.suppress(FileNotFoundError):
            self.log.rename(self.log.with_suffix(".log.1"))
        t0 = time.monotonic()
        p = proc.spawn(argv, log_path=self.log, env=env, cwd=self.spec.workdir)
        paths.private_dir(self.pidfile.parent)
        rec = {
            "pid": p.pid,
            "start_time": proc.pid_start_time(p.pid),
            "port": self.spec.port,
            "url": self.spec.url,
            "started_at": time.time(),
        }
        self._write_record(rec)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            if p.poll() is not None:
                self.pidfile.unlink(missing_ok=True)
                raise StackError(
                    f"{self.spec.name} exited during start-up (status {p.returncode}):\n"
                    f"{self.log_tail()}",
                    hint=f"full log: {self.log}",
                )
            if http_status(self.spec.url + self.spec.health_path, timeout=1.0) is not None:
                rec["startup_seconds"] = round(time.monotonic() - t0, 3)
                self._write_record(rec)
                return rec["startup_seconds"]
            time.sleep(0.1)
        # It never answered: do not leave a half-started server (gunicorn may respawn a
        # crashing worker forever while the master holds the port).
        proc.terminate(p.pid, grace=5)
        p.wait(timeout=10)
        self.pidfile.unlink(missing_ok=True)
        raise StackError(
            f"{self.spec.name} did not answer on {self.spec.url} within {timeout:g} s:\n"
            f"{self.log_tail()}",
            hint=f"full log: {self.log}",
        )

    def check_port(self) -> None:
        """PortInUse (naming the owner and the fix) unless our port is free or ours."""
        if self.running_pid() is None and not port_free(self.spec.host, self.spec.port):
            raise PortInUse(
                f"{self.spec.name} cannot listen on {self.spec.host}:{self.spec.port}: "
                f"the port is used by {port_owner(self.spec.port)}",
                hint=f"stop that process, or choose another port: "
                f"{self.spec.port_hint or f'byok stack up --{self.spec.name}-port N'}",
            )

    def stop(self) -> bool:
        """Stop our server if it runs; idempotent. True if something was stopped."""
        rec = self.record()
        stopped = False
        if self._is_ours(rec):
            assert rec is not None
            stopped = proc.terminate(int(rec["pid"]))
        self.pidfile.unlink(missing_ok=True)
        return stopped

    def status(self) -> dict:
        rec = self.record() or {}
        pid = self.running_pid()
        code = http_status(self.spec.url + self.spec.health_path) if pid else None
        return {
            "url": self.spec.url,
            "port": self.spec.port,
            "pid": pid,
            "running": pid is not None,
            "http_status": code,
            "healthy": code is not None and code < 500,
            "startup_seconds": rec.get("startup_seconds") if pid else None,
            "started_at": rec.get("started_at") if pid else None,
            "log": str(self.log),
        }
