"""``byok cinder up|down|status``: the patched Cinder 29 as services, over RabbitMQ.

cinder-api under gunicorn (keystonemiddleware against the embedded Keystone; a ``block-storage``
/ ``volumev3`` catalog entry so clients find it), cinder-scheduler, cinder-volume (the
local-folder NfsDriver) and cinder-backup (posix driver), each its own process, talking over
this stack's RabbitMQ. Cinder is not installed in byok's venv: every service runs with
``.venv-openstack``'s Python from a patched tree of the cinder sdist
(``openstack/tier/run.py tree``), started from ``openstack/tier/cinder_service.py`` or, for the
API, ``cinder_wsgi.py``. Each process is recorded like the stack's servers (pid, start time, its
own working directory), so ``down`` stops exactly what ``up`` started. A failed ``up`` stops what
it started and raises one StackError naming the service and its log.

State: ``<stack>/cinder/`` (the broker, the patched tree) and ``<stack>/cinder/<instance>/``
(cinder.conf, sqlite, volumes, backups, logs, lock trace). ``instance`` lets a benchmark run a
second deployment with another castellan backend on the same broker (own control exchange).
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from byok.common import paths, proc
from byok.common.errors import ByokError, StackError, ToolMissing, UsageError
from byok.stack import cinder_conf
from byok.stack.daemon import Daemon, DaemonSpec
from byok.stack.rabbitmq import Broker, BrokerPorts
from byok.stack.server import Server, ServerSpec, http_status

DEFAULT_API_PORT = 18776
DEFAULT_RABBITMQ_PORT = 15682
SERVICES = ("scheduler", "volume", "backup")  # cinder-api is the gunicorn server
BINARIES = {s: f"cinder-{s}" for s in SERVICES}
START_TIMEOUT = 180.0

Progress = Callable[[str], None]


def openstack_venv() -> Path:
    root = paths.project_root()
    env = os.environ.get("BYOK_OPENSTACK_VENV")
    return Path(env) if env else (root or Path.cwd()) / ".venv-openstack"


def tier_dir() -> Path:
    root = paths.project_root()
    if root is None or not (root / "openstack" / "tier" / "cinder_service.py").exists():
        raise UsageError("byok cinder runs from a byok checkout (openstack/tier is missing)")
    return root / "openstack" / "tier"


@dataclass
class CinderSettings:
    """Settings of one deployment, kept in ``<stack>/cinder/<instance>.json``."""

    instance: str = "cinder"
    api_port: int = DEFAULT_API_PORT
    rabbitmq_port: int = DEFAULT_RABBITMQ_PORT
    backend: str = "byok"
    extra_conf: list[str] = field(default_factory=list)  # e.g. the devstack plugin's cinder.conf

    @classmethod
    def load(cls, state_dir: Path, instance: str = "cinder", **overrides) -> CinderSettings:
        s = cls(instance=instance)
        s.api_port = int(os.environ.get("BYOK_CINDER_PORT", s.api_port))
        s.rabbitmq_port = int(os.environ.get("BYOK_RABBITMQ_PORT", s.rabbitmq_port))
        f = state_dir / "cinder" / f"{instance}.json"
        if f.exists():
            data = json.loads(f.read_text())
            for k in ("api_port", "rabbitmq_port", "backend", "extra_conf"):
                if k in data:
                    setattr(s, k, data[k])
        for k, v in overrides.items():
            if v is not None:
                setattr(s, k, v)
        if s.backend not in ("byok", "barbican"):
            raise UsageError(f"castellan backend {s.backend!r}: byok or barbican")
        return s

    def save(self, state_dir: Path) -> None:
        paths.write_private(state_dir / "cinder" / f"{self.instance}.json",
                            json.dumps(asdict(self), indent=2) + "\n")


class CinderServices:
    """One Cinder deployment of one embedded stack."""

    def __init__(self, stack, settings: CinderSettings | None = None) -> None:
        self.stack = stack
        self.settings = settings or CinderSettings.load(stack.cfg.state_dir)
        self.root = stack.cfg.state_dir / "cinder"
        self.base = self.root / self.settings.instance
        self.run_dir = self.root / "run"
        self.tree = self.root / "tree"
        self.conf = self.base / "cinder.conf"
        self.lock_trace = self.base / "volume" / "locks.jsonl"
        self.broker = Broker(self.root / "rabbitmq", self.run_dir,
                             BrokerPorts.from_amqp(self.settings.rabbitmq_port))
        self.python = openstack_venv() / "bin" / "python"

    @property
    def api_url(self) -> str:
        return f"http://{self.stack.cfg.host}:{self.settings.api_port}"

    @property
    def host(self) -> str:
        return f"byok-{self.settings.instance}"

    @property
    def vhost(self) -> str:
        """The default deployment uses the broker's ``/``; another one (a benchmark's) a
        virtual host of its own (see :meth:`Broker.ensure_vhost`)."""
        return "/" if self.settings.instance == "cinder" else self.settings.instance

    def config_files(self) -> list[str]:
        return [str(self.conf), *self.settings.extra_conf]

    # -- processes ---------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        return {"PYTHONPATH": f"{self.tree}:{tier_dir()}",
                "VIRTUAL_ENV": str(self.python.parent.parent),
                "PATH": f"{self.python.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
                "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONWARNINGS": "ignore::DeprecationWarning",
                "BYOK_CINDER_CONFIG_FILES": ":".join(self.config_files())}

    def api(self) -> Server:
        spec = ServerSpec(
            name=f"{self.settings.instance}-api", app="cinder_wsgi:application",
            port=self.settings.api_port, host=self.stack.cfg.host, workdir=self.base / "api",
            # One request at a time: four processes share one sqlite file, and concurrent
            # quota reservations in one API process fail at once with "database is locked"
            # (a write upgrade sqlite refuses instead of waiting). A deployment uses MySQL.
            env=self._env(), health_path="/", threads=1, workers=1, python=str(self.python),
            port_hint="byok cinder up --api-port N (or BYOK_CINDER_PORT)")
        return Server(spec, self.run_dir)

    def daemon(self, service: str) -> Daemon:
        env = self._env()
        if service == "volume":
            env["BYOK_CINDER_LOCK_TRACE"] = str(self.lock_trace)
        argv = [str(self.python), str(tier_dir() / "cinder_service.py"), service]
        for f in self.config_files():
            argv += ["--config-file", f]
        return Daemon(DaemonSpec(f"{self.settings.instance}-{service}", argv,
                                 self.base / service, env), self.run_dir)

    def _check_installed(self) -> None:
        if not self.python.exists():
            raise ToolMissing(f"Cinder is not installed ({self.python} is missing)",
                              hint="run ./dev openstack (installs Cinder 29 into "
                              ".venv-openstack)")
        tier_dir()

    # -- up ----------------------------------------------------------------------------------
    def up(self, *, progress: Progress | None = None, broker: bool = True) -> dict:
        say = progress or (lambda _m: None)
        self._check_installed()
        if self.stack.stopped():
            raise StackError("the embedded Keystone + Barbican are not running",
                             hint="run: byok stack up")
        api, daemons = self.api(), {s: self.daemon(s) for s in SERVICES}
        started: list = []
        running_before = bool(api.running_pid() or any(d.running_pid() for d in
                                                       daemons.values()))
        if not api.running_pid():
            api.check_port()
        if broker:
            self.broker.check_ports()
        t_up = time.monotonic()
        try:
            if not running_before:
                say("patched Cinder tree (openstack/tier/run.py tree)")
                self._tree()
            self._write_files()
            if broker and not self.broker.daemon.running_pid():
                say(f"starting RabbitMQ on 127.0.0.1:{self.settings.rabbitmq_port}")
                self.broker.spawn()
                started.append(self.broker)
            say("cinder-manage db sync")
            self._manage("db", "sync")
            if self.broker in started:
                self.broker.wait_ready()
            self.broker.ensure_vhost(self.vhost)
            self._catalog()
            say(f"starting cinder-api on {self.api_url} and cinder-scheduler, -volume, -backup")
            if not api.running_pid():
                started.append(api)
                self._spawn_api(api)
            for d in daemons.values():
                if not d.running_pid():
                    d.spawn()
                    started.append(d)
            self._wait_api(api)
            admin = self._admin_api()
            for name, d in daemons.items():
                if d in started:
                    d.wait_ready(functools.partial(self._service_up, admin, name),
                                 timeout=START_TIMEOUT, what="up in Cinder's os-services")
            if any(d in started for d in daemons.values()):
                # "up" is a database heartbeat; a create needs the scheduler to have the
                # volume service's capabilities (a fanout over RabbitMQ), else "No valid host".
                daemons["volume"].wait_ready(lambda: self._pool_known(admin),
                                             timeout=START_TIMEOUT,
                                             what="a pool known to cinder-scheduler")
            admin.ensure_luks_type()
        except BaseException:
            for s in reversed(started):
                s.stop()
            raise
        status = self.status()
        status["up_seconds"] = round(time.monotonic() - t_up, 1)
        return status

    def _tree(self) -> None:
        r = proc.run([str(self.python), str(tier_dir() / "run.py"), "tree", "--dest",
                      str(self.tree)], timeout=300, check=False, what="patching the Cinder tree")
        if r.returncode != 0:
            raise StackError(f"the patch series does not give a Cinder tree:\n{r.tail(8)}",
                             hint="./dev openstack prepare shows the failing hunk")

    def _write_files(self) -> None:
        b = paths.private_dir(self.base)
        for d in ("state", "conversion", "backups", "locks", "coordination", "mnt", "api",
                  *SERVICES):
            paths.private_dir(b / d)
        (b / "nfs_shares").write_text(cinder_conf.SHARE + "\n")
        self.settings.save(self.stack.cfg.state_dir)
        passwords = self.stack.secrets.passwords()
        inputs = cinder_conf.ConfInputs(
            base=b, tree=self.tree, host=self.host,
            transport_url=self.broker.transport_url(self.vhost),
            control_exchange="cinder" if self.settings.instance == "cinder"
            else f"cinder-{self.settings.instance}",
            keystone_url=self.stack.cfg.keystone_url, barbican_url=self.stack.cfg.barbican_url,
            cinder_password=passwords["cinder"], backend=self.settings.backend)
        paths.write_private(self.conf, cinder_conf.render(inputs))
        for extra in self.settings.extra_conf:
            if not Path(extra).is_file():
                raise UsageError(f"--conf {extra}: no such file")

    def _manage(self, *args: str) -> None:
        argv = [str(self.python), str(tier_dir() / "cinder_service.py"), "manage"]
        for f in self.config_files():
            argv += ["--config-file", f]
        r = proc.run([*argv, *args], env=self._env(), cwd=self.base, timeout=300, check=False,
                     what="cinder-manage")
        if r.returncode != 0:
            raise StackError(f"cinder-manage {' '.join(args)} failed:\n{r.tail(8)}")

    def _spawn_api(self, api: Server) -> None:
        self._api_started_at = time.monotonic()
        # Server.start blocks until HTTP answers; run it beside the other spawns.
        self._api_future = ThreadPoolExecutor(1).submit(api.start, timeout=START_TIMEOUT)

    def _wait_api(self, api: Server) -> None:
        fut = getattr(self, "_api_future", None)
        if fut is not None:
            fut.result()

    def _catalog(self) -> None:
        """The catalog names the default deployment only (a benchmark's second one is reached
        by its URL)."""
        from byok.stack import catalog

        if self.settings.instance == "cinder":
            catalog.register(self.stack, f"{self.api_url}/v3/%(project_id)s",
                             (("block-storage", "cinderv3"), ("volumev3", "cinder")))

    def _admin_api(self):
        from byok.stack.cinder_api import CinderAPI

        return CinderAPI(self.stack.identity("admin"), self.api_url, timeout=120)

    def _service_up(self, admin, name: str) -> bool:
        try:
            services = admin.services()
        except ByokError:
            return False
        return any(s["binary"] == BINARIES[name] and s["state"] == "up"
                   and s["status"] == "enabled" for s in services)

    def _pool_known(self, admin) -> bool:
        try:
            pools = admin.request("GET", "/scheduler-stats/get_pools")["pools"]
        except ByokError:
            return False
        return any(p["name"].startswith(f"{self.host}@") for p in pools)

    # -- down, status ------------------------------------------------------------------------
    def down(self, *, broker: bool = True) -> dict[str, bool]:
        out = {}
        procs: list[Server | Daemon] = [self.api(), *(self.daemon(s) for s in
                                                       ("volume", "backup", "scheduler"))]
        for d in procs:
            out[d.spec.name] = d.stop()
        if broker:
            out["rabbitmq"] = self.broker.stop()
        return out

    def status(self) -> dict:
        api = self.api()
        api_status = api.status()
        services: dict[str, dict] = {
            "cinder-api": {**api_status, "healthy": api_status["healthy"]}}
        listed: list[dict] | None = None
        if api_status["healthy"]:
            try:
                listed = self._admin_api().services()
            except ByokError as e:
                services["cinder-api"]["error"] = e.message
        for name in SERVICES:
            d = self.daemon(name).status()
            rows = [s for s in (listed or []) if s["binary"] == BINARIES[name]]
            up = any(s["state"] == "up" and s["status"] == "enabled" for s in rows)
            services[BINARIES[name]] = {
                **d, "healthy": bool(d["running"] and up),
                "os_services": [{k: s.get(k) for k in ("host", "state", "status",
                                                       "updated_at")} for s in rows]}
        services["rabbitmq"] = self.broker.status()
        return {
            "instance": self.settings.instance, "healthy": all(s["healthy"] for s in
                                                               services.values()),
            "api_url": self.api_url, "backend": self.settings.backend,
            "config_files": self.config_files(), "state_dir": str(self.base),
            "startup_seconds": {k: v.get("startup_seconds") for k, v in services.items()},
            "services": services, "lock_trace": str(self.lock_trace),
            "cinder_tree": str(self.tree),
        }

    def running(self) -> bool:
        return bool(self.api().running_pid())

    def reachable(self) -> bool:
        return http_status(self.api_url + "/") is not None
