"""The message bus of ``byok cinder``: Debian's RabbitMQ as a broker of this stack alone.

Everything the broker owns is under ``<state>/cinder/rabbitmq``: config, Mnesia database, logs,
the Erlang cookie (``HOME``), and its credentials (generated once per stack, 0600; the broker
creates that user on its first boot). It listens on 127.0.0.1 only — AMQP, Erlang distribution
and its own ``epmd`` (a per-stack port, so ``down`` can stop the epmd it started without
touching anyone else's). Debian's wrapper ``/usr/sbin/rabbitmq-server`` would switch to the
``rabbitmq`` user; byok runs the server script itself, as the user that runs byok, and keeps
the package's system configuration out (``RABBITMQ_CONF_ENV_FILE`` points at our own file).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from byok.common import paths, proc
from byok.common.errors import PortInUse, ToolMissing
from byok.stack.daemon import Daemon, DaemonSpec
from byok.stack.server import port_free, port_owner

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD_CANDIDATES = ("/usr/bin/epmd", "/usr/lib/erlang/bin/epmd")
START_TIMEOUT = 120.0


@dataclass(frozen=True)
class BrokerPorts:
    amqp: int
    dist: int
    epmd: int

    @classmethod
    def from_amqp(cls, port: int) -> BrokerPorts:
        """AMQP on ``port``, Erlang distribution on port+1, epmd on port+2."""
        return cls(port, port + 1, port + 2)


class Broker:
    """One RabbitMQ node of one stack."""

    def __init__(self, base: Path, run_dir: Path, ports: BrokerPorts, host: str = "127.0.0.1"):
        self.base = base
        self.ports = ports
        self.host = host
        tag = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:8]
        self.node = f"byok-{tag}@localhost"
        self.creds_file = base / "credentials.json"
        self.daemon = Daemon(DaemonSpec("rabbitmq", [str(SERVER)], base, self._env(),
                                        log_name="rabbitmq.log"), run_dir)
        self.epmd_record = run_dir / "rabbitmq-epmd.pid"

    # -- configuration -----------------------------------------------------------------------
    def credentials(self) -> dict[str, str]:
        """The broker's user and password (made once, kept 0600; never printed)."""
        if self.creds_file.exists():
            return json.loads(self.creds_file.read_text())
        creds = {"user": "byok-" + secrets.token_hex(4), "password": secrets.token_urlsafe(24)}
        paths.private_dir(self.base)
        paths.write_private(self.creds_file, json.dumps(creds) + "\n")
        return creds

    def transport_url(self) -> str:
        c = self.credentials()
        return f"rabbit://{c['user']}:{c['password']}@{self.host}:{self.ports.amqp}/"

    def _env(self) -> dict[str, str]:
        b = self.base
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
            "HOME": str(b / "home"),  # the Erlang cookie lives here
            "RABBITMQ_CONF_ENV_FILE": str(b / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(b / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(b / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(b / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(b / "mnesia"),
            "RABBITMQ_LOG_BASE": str(b / "log"),
            "RABBITMQ_LOGS": "-",  # into rabbitmq.log, where start-up errors are read
            "RABBITMQ_PID_FILE": str(b / "beam.pid"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(self.ports.dist),
            "ERL_EPMD_PORT": str(self.ports.epmd),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def write_config(self) -> None:
        b = paths.private_dir(self.base)
        for d in ("home", "mnesia", "log"):
            paths.private_dir(b / d)
        creds = self.credentials()
        paths.write_private(b / "rabbitmq.conf", (
            "# Written by byok cinder up; holds the broker's password: keep 0600.\n"
            f"listeners.tcp.default = {self.host}:{self.ports.amqp}\n"
            f"default_user = {creds['user']}\n"
            f"default_pass = {creds['password']}\n"
            "default_vhost = /\n"
            "log.console = true\n"
            "log.file = false\n"
            "log.console.level = warning\n"))
        paths.write_private(b / "advanced.config", "[].\n")
        paths.write_private(b / "enabled_plugins", "[].\n")
        paths.write_private(b / "rabbitmq-env.conf", "# byok: no system rabbitmq-env.conf\n")

    # -- lifecycle ---------------------------------------------------------------------------
    def check_ports(self) -> None:
        if self.daemon.running_pid():
            return
        for what, port in (("AMQP", self.ports.amqp), ("Erlang distribution", self.ports.dist),
                           ("epmd", self.ports.epmd)):
            if not port_free(self.host, port):
                raise PortInUse(
                    f"RabbitMQ cannot listen on {self.host}:{port} ({what}): the port is used "
                    f"by {port_owner(port)}",
                    hint="stop that process, or choose other ports: byok cinder up "
                    "--rabbitmq-port N (uses N, N+1, N+2)")

    def spawn(self) -> None:
        if self.daemon.running_pid():
            return
        if not SERVER.exists():
            raise ToolMissing("RabbitMQ is not installed (no rabbitmq-server)",
                              hint="run ./dev setup (installs the Debian package "
                              "rabbitmq-server) or: apt-get install -y rabbitmq-server")
        self.check_ports()
        self.write_config()
        self.daemon.spawn()

    def wait_ready(self) -> float:
        seconds = self.daemon.wait_ready(self.reachable, timeout=START_TIMEOUT,
                                         what="accepting AMQP logins")
        self._record_epmd()
        return seconds

    def reachable(self) -> bool:
        """An AMQP 0-9-1 login with this stack's credentials succeeds (the real protocol)."""
        import amqp

        c = self.credentials()
        conn = amqp.Connection(f"{self.host}:{self.ports.amqp}", userid=c["user"],
                               password=c["password"], virtual_host="/", connect_timeout=2)
        try:
            conn.connect()
        except Exception:
            with contextlib.suppress(Exception):
                conn.collect()
            return False
        with contextlib.suppress(Exception):
            conn.close()
        return True

    def _record_epmd(self) -> None:
        """Remember the epmd the node started on our port (it detaches from the node)."""
        import psutil

        for c in psutil.net_connections(kind="tcp"):
            if c.laddr and c.laddr.port == self.ports.epmd and c.status == psutil.CONN_LISTEN \
                    and c.pid:
                p = psutil.Process(c.pid)
                if p.name() == "epmd":
                    self.epmd_record.write_text(json.dumps(
                        {"pid": c.pid, "start_time": p.create_time()}))
                    return

    def stop(self) -> bool:
        stopped = self.daemon.stop(grace=20)
        self._stop_epmd()
        return stopped

    def _stop_epmd(self) -> None:
        try:
            rec = json.loads(self.epmd_record.read_text())
        except (FileNotFoundError, ValueError):
            return
        pid = int(rec["pid"])
        if proc.pid_alive(pid) and proc.pid_start_time(pid) == rec.get("start_time"):
            proc.terminate(pid, grace=5)
        self.epmd_record.unlink(missing_ok=True)

    def status(self) -> dict:
        s = self.daemon.status()
        t0 = time.perf_counter()
        ok = bool(s["running"]) and self.reachable()
        return {**s, "url": f"amqp://{self.host}:{self.ports.amqp}", "port": self.ports.amqp,
                "node": self.node, "healthy": ok,
                "amqp_login_seconds": round(time.perf_counter() - t0, 3) if ok else None}
