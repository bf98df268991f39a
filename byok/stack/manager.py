"""``byok stack up|down|status|env``: the embedded Keystone + Barbican as one unit.

``up`` is idempotent: it (re)writes config files, bootstraps Keystone if that never finished,
starts whatever of our servers is not running, seeds identities and writes ``clouds.yaml``.
It never deletes data; ``reset=True`` (``--reset``) is the one explicit way to start over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from byok.common import paths
from byok.common.errors import StackError, UsageError
from byok.stack import files, seed
from byok.stack.config import REGION, SEED_USERS, StackConfig, StackSecrets
from byok.stack.server import Server, ServerSpec

LOG = logging.getLogger(__name__)
# Several worker processes, as a deployment runs Barbican: the key-path load test drives
# hundreds of concurrent requests, and a restart must be a real one (every worker goes).
BARBICAN_WORKERS = 2

Progress = Callable[[str], None]


class Stack:
    """The embedded cloud rooted at one state directory."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.secrets = StackSecrets(cfg.state_dir)
        self.run_dir = cfg.state_dir / "run"
        self.marker = cfg.state_dir / "bootstrapped.json"

    @classmethod
    def at(cls, state_dir: Path | None = None, **ports: int | None) -> Stack:
        return cls(StackConfig.load(state_dir, **ports))

    # -- servers -----------------------------------------------------------------------------
    def keystone(self) -> Server:
        kdir = self.cfg.state_dir / "keystone"
        spec = ServerSpec(
            name="keystone",
            app="byok.stack.wsgi_keystone:application",
            port=self.cfg.keystone_port,
            host=self.cfg.host,
            workdir=kdir,
            env={"OS_KEYSTONE_CONFIG_FILES": str(files.keystone_conf_path(self.cfg))},
            health_path="/v3",
        )
        return Server(spec, self.run_dir)

    def barbican(self) -> Server:
        spec = ServerSpec(
            name="barbican",
            app="byok.stack.wsgi_barbican:application",
            port=self.cfg.barbican_port,
            host=self.cfg.host,
            workdir=self.cfg.state_dir / "barbican",
            env={
                "HOME": str(files.barbican_home(self.cfg)),
                "BYOK_BARBICAN_PASTE": str(files.barbican_paste_path(self.cfg)),
            },
            health_path="/",
            workers=BARBICAN_WORKERS,
        )
        return Server(spec, self.run_dir)

    def servers(self) -> list[Server]:
        return [self.keystone(), self.barbican()]

    def stopped(self) -> list[Server]:
        """Our servers with no process of ours running (by pidfile, never by the health probe:
        a slow server still runs, and belongs to whoever started it)."""
        return [srv for srv in self.servers() if not srv.running_pid()]

    # -- commands ----------------------------------------------------------------------------
    def up(self, *, reset: bool = False, progress: Progress | None = None) -> dict:
        say = progress or (lambda msg: LOG.info("%s", msg))
        if reset:
            self.reset(progress=say)
        paths.private_dir(self.cfg.state_dir)
        self._check_ports()
        # A port change while our servers run would orphan them: refuse instead.
        for srv in self.servers():
            rec = srv.record()
            if srv.running_pid() and rec and rec.get("port") != srv.spec.port:
                raise StackError(
                    f"{srv.spec.name} is running on port {rec.get('port')}, not {srv.spec.port}",
                    hint="run 'byok stack down' first to change ports",
                )
        self.cfg.save()
        passwords = self.secrets.passwords()
        files.write_all(self.cfg, kek=self.secrets.kek(), service_password=passwords["barbican"])

        t_boot = None
        marker = self._marker()
        if not marker.get("keystone_bootstrapped"):
            say("bootstrapping Keystone (db_sync, fernet keys, admin) - once per state dir")
            t0 = time.monotonic()
            seed.bootstrap_keystone(self.cfg, passwords["admin"])
            t_boot = time.monotonic() - t0
            marker["keystone_bootstrapped"] = True
            marker["keystone_bootstrap_seconds"] = round(t_boot, 3)
            self._save_marker(marker)

        ks, bb = self.keystone(), self.barbican()
        # Only what this call starts is stopped on failure: a stack someone else brought up
        # (a reused test fixture, another shell) keeps running.
        started = self.stopped()
        try:
            if not ks.running_pid():
                say(f"starting Keystone on {ks.spec.url}")
            ks.start()
            say("seeding projects and users (idempotent)")
            t0 = time.monotonic()
            ids = seed.seed_identities(self.cfg, passwords)
            marker["seed_seconds"] = round(time.monotonic() - t0, 3)
            marker["ids"] = ids
            marker["seeded"] = True
            self._save_marker(marker)
            self.write_clouds_yaml(passwords)
            if not bb.running_pid():
                say(f"starting Barbican on {bb.spec.url}")
            bb.start()
        except BaseException:
            # Leave no half-started stack behind: stop what this call started.
            for srv in reversed(started):
                srv.stop()
            raise
        return self.status()

    def _check_ports(self) -> None:
        """Fail before any slow bootstrap work if a port we need is taken by someone else."""
        for srv in self.servers():
            srv.check_port()

    @contextlib.contextmanager
    def running(self, *, progress: Progress | None = None) -> Iterator[Stack]:
        """The stack up for the enclosed block; afterwards only the servers this call started
        are stopped (:meth:`stopped`: judging by the health probe once stopped a whole test
        session's slow stack)."""
        mine = self.stopped()
        if mine or not self.status()["healthy"]:
            self.up(progress=progress)
        try:
            yield self
        finally:
            for srv in reversed(mine):
                srv.stop()

    def identity(self, user: str):
        """A seeded user's Identity (from this stack's clouds.yaml)."""
        from byok.keys.identity import Identity

        if not self.cfg.clouds_yaml.exists():
            raise UsageError("the embedded stack has no clouds.yaml yet", hint="run: byok stack up")
        return Identity.from_cloud(self.cloud_name(user), clouds_yaml=self.cfg.clouds_yaml)

    def user_id(self, name: str) -> str:
        """The Keystone id of a seeded user, or ``name`` itself if it already is an id."""
        if re.fullmatch(r"[0-9a-f]{32}", name):
            return name
        ids = self.ids()
        if f"user:{name}" not in ids:
            raise UsageError(f"unknown user {name!r}", hint="give the Keystone user id instead")
        return ids[f"user:{name}"]

    def down(self) -> dict[str, bool]:
        """Stop our servers (pidfile-verified). Idempotent; returns which were stopped."""
        return {srv.spec.name: srv.stop() for srv in reversed(self.servers())}

    def reset(self, *, progress: Progress | None = None) -> None:
        """Stop the servers and delete this stack's state (secrets included)."""
        say = progress or (lambda msg: LOG.info("%s", msg))
        state = self.cfg.state_dir
        if state.exists():
            if not (state / "stack.json").exists() and any(state.iterdir()):
                raise StackError(
                    f"refusing to reset {state}: it does not look like a byok stack directory",
                    hint="point --state-dir at a byok stack (it holds stack.json)",
                )
            self.down()
            say(f"deleting {state}")
            shutil.rmtree(state)

    def status(self) -> dict:
        marker = self._marker()
        services = {srv.spec.name: srv.status() for srv in self.servers()}
        return {
            "state_dir": str(self.cfg.state_dir),
            "healthy": all(s["healthy"] for s in services.values()),
            "bootstrapped": bool(marker.get("keystone_bootstrapped") and marker.get("seeded")),
            "keystone_bootstrap_seconds": marker.get("keystone_bootstrap_seconds"),
            "seed_seconds": marker.get("seed_seconds"),
            "startup_seconds": {k: v["startup_seconds"] for k, v in services.items()},
            "services": services,
            "keystone_url": self.cfg.keystone_url,
            "barbican_url": self.cfg.barbican_url,
            "clouds_yaml": str(self.cfg.clouds_yaml) if self.cfg.clouds_yaml.exists() else None,
            "clouds": [f"byok-{u}" for u in self.user_names()],
        }

    # -- identities --------------------------------------------------------------------------
    @staticmethod
    def user_names() -> list[str]:
        return ["admin", *(u.name for u in SEED_USERS if u.name != "barbican")]

    def cloud_name(self, user: str) -> str:
        return f"byok-{user}"

    def ids(self) -> dict[str, str]:
        """Keystone ids of seeded users and projects (``user:alice``, ``project:service``...)."""
        return dict(self._marker().get("ids", {}))

    def write_clouds_yaml(self, passwords: dict[str, str] | None = None) -> Path:
        """clouds.yaml with one cloud per seeded identity (``byok-alice`` ...), mode 0600."""
        passwords = passwords or self.secrets.passwords()
        clouds = {}
        projects = {u.name: u.project for u in SEED_USERS} | {"admin": "admin"}
        for user in self.user_names():
            clouds[self.cloud_name(user)] = {
                "auth": {
                    "auth_url": self.cfg.keystone_url,
                    "username": user,
                    "password": passwords[user],
                    "project_name": projects[user],
                    "user_domain_name": "Default",
                    "project_domain_name": "Default",
                },
                "region_name": REGION,
                "interface": "public",
                "identity_api_version": 3,
            }
        text = "# Written by 'byok stack up' for the embedded stack. Holds passwords: keep 0600.\n"
        text += yaml.safe_dump({"clouds": clouds}, sort_keys=True)
        paths.write_private(self.cfg.clouds_yaml, text)
        return self.cfg.clouds_yaml

    # -- marker ------------------------------------------------------------------------------
    def _marker(self) -> dict:
        try:
            return json.loads(self.marker.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save_marker(self, data: dict) -> None:
        paths.write_private(self.marker, json.dumps(data, indent=2) + "\n")
