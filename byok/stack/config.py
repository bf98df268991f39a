"""The embedded stack's settings and secrets: ports, seeded identities, passwords, Barbican's KEK.

Settings live in ``<state>/stack.json``; passwords and the KEK in 0600 files next to it. They are
generated once and reused by every ``up``, so restarting never invalidates a stored secret.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet

from byok.common import paths
from byok.common.errors import StackError

DEFAULT_KEYSTONE_PORT = 15000
DEFAULT_BARBICAN_PORT = 19311
HOST = "127.0.0.1"
REGION = "RegionOne"


@dataclass(frozen=True)
class SeedUser:
    """A Keystone user the stack creates: name, project, roles in that project."""

    name: str
    project: str
    roles: tuple[str, ...]
    service: bool = False


#: Who exists in the embedded cloud (issue 3): two members of alice-project, one of bob-project,
#: and service users. ``barbican`` is the identity keystonemiddleware uses to validate tokens.
SEED_USERS: tuple[SeedUser, ...] = (
    SeedUser("alice", "alice-project", ("member",)),
    SeedUser("carol", "alice-project", ("member",)),
    SeedUser("bob", "bob-project", ("member",)),
    # A project of its own for castellan's functional suite, which lists "all secrets".
    SeedUser("peer", "peer-project", ("member",)),
    # Service users: 'service' for keystonemiddleware/ACL reads, 'member' so the deployment can
    # keep its own secrets (escrow keys) in the service project.
    SeedUser("cinder", "service", ("service", "member"), service=True),
    SeedUser("nova", "service", ("service", "member"), service=True),
    SeedUser("barbican", "service", ("service", "admin"), service=True),
)
ADMIN_USER = "admin"
ADMIN_PROJECT = "admin"


@dataclass
class StackConfig:
    """Persistent settings of one embedded stack (one state directory)."""

    state_dir: Path
    keystone_port: int = DEFAULT_KEYSTONE_PORT
    barbican_port: int = DEFAULT_BARBICAN_PORT
    host: str = HOST
    extra: dict = field(default_factory=dict)

    @property
    def keystone_url(self) -> str:
        return f"http://{self.host}:{self.keystone_port}/v3"

    @property
    def barbican_url(self) -> str:
        return f"http://{self.host}:{self.barbican_port}"

    @property
    def settings_file(self) -> Path:
        return self.state_dir / "stack.json"

    @property
    def clouds_yaml(self) -> Path:
        return self.state_dir / "clouds.yaml"

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "state_dir"}
        paths.private_dir(self.state_dir)
        paths.write_private(self.settings_file, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(
        cls,
        state_dir: Path | None = None,
        *,
        keystone_port: int | None = None,
        barbican_port: int | None = None,
    ) -> StackConfig:
        """Settings of the stack in ``state_dir``; ports given here override saved ones."""
        state_dir = (state_dir or paths.stack_dir()).resolve()
        cfg = cls(state_dir=state_dir)
        # Environment defaults (e.g. to run a second checkout's tests beside a running stack).
        cfg.keystone_port = int(os.environ.get("BYOK_KEYSTONE_PORT", cfg.keystone_port))
        cfg.barbican_port = int(os.environ.get("BYOK_BARBICAN_PORT", cfg.barbican_port))
        if cfg.settings_file.exists():
            try:
                data = json.loads(cfg.settings_file.read_text())
            except (OSError, ValueError) as e:
                raise StackError(
                    f"{cfg.settings_file} is unreadable: {e}",
                    hint="fix or delete it, or start over with: byok stack up --reset",
                ) from e
            cfg.keystone_port = int(data.get("keystone_port", cfg.keystone_port))
            cfg.barbican_port = int(data.get("barbican_port", cfg.barbican_port))
            cfg.extra = dict(data.get("extra", {}))
        if keystone_port:
            cfg.keystone_port = keystone_port
        if barbican_port:
            cfg.barbican_port = barbican_port
        return cfg


class StackSecrets:
    """Passwords of the seeded users and Barbican's KEK, generated once, kept 0600."""

    def __init__(self, state_dir: Path) -> None:
        self.passwords_file = state_dir / "passwords.json"
        self.kek_file = state_dir / "barbican" / "kek"

    def passwords(self) -> dict[str, str]:
        """Every seeded user's password (creating missing ones). Never printed by byok."""
        existing: dict[str, str] = {}
        if self.passwords_file.exists():
            existing = json.loads(self.passwords_file.read_text())
        wanted = [ADMIN_USER, *(u.name for u in SEED_USERS)]
        changed = False
        for name in wanted:
            if name not in existing:
                existing[name] = secrets.token_urlsafe(24)
                changed = True
        if changed:
            paths.write_private(self.passwords_file, json.dumps(existing, indent=2) + "\n")
        return existing

    def kek(self) -> str:
        """The simple_crypto KEK for this stack (a Fernet key), generated on first use."""
        if self.kek_file.exists():
            return self.kek_file.read_text().strip()
        key = Fernet.generate_key().decode()
        paths.private_dir(self.kek_file.parent)
        paths.write_private(self.kek_file, key + "\n")
        return key
