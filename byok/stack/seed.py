"""Bootstrap Keystone and seed the identities experiments use.

Every step is idempotent (keystone-manage db_sync/bootstrap are; fernet/credential setup are
skipped when keys exist; projects/users/roles are get-or-create), so an interrupted bootstrap
is finished by simply running ``byok stack up`` again.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from byok.common import proc
from byok.stack import files
from byok.stack.config import ADMIN_PROJECT, ADMIN_USER, REGION, SEED_USERS, StackConfig

LOG = logging.getLogger(__name__)


def _keystone_manage() -> str:
    exe = Path(sys.executable).parent / "keystone-manage"
    if not exe.exists():
        from byok.common.errors import ToolMissing

        raise ToolMissing(
            "keystone-manage is not installed in this environment",
            hint="run ./dev setup (it installs keystone==30.0.0 into .venv)",
        )
    return str(exe)


def bootstrap_keystone(cfg: StackConfig, admin_password: str) -> None:
    """db_sync, fernet + credential keys, and the admin user/project/endpoints."""
    conf = files.keystone_conf_path(cfg)
    km = [_keystone_manage(), "--config-file", str(conf)]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    proc.run([*km, "db_sync"], env=env, timeout=180, what="keystone-manage db_sync")
    kdir = cfg.state_dir / "keystone"
    if not any((kdir / "fernet-keys").iterdir()):
        proc.run(
            [*km, "fernet_setup", "--keystone-user", str(os.getuid()),
             "--keystone-group", str(os.getgid())],
            env=env, timeout=120, what="keystone-manage fernet_setup",
        )
    if not any((kdir / "credential-keys").iterdir()):
        proc.run(
            [*km, "credential_setup", "--keystone-user", str(os.getuid()),
             "--keystone-group", str(os.getgid())],
            env=env, timeout=120, what="keystone-manage credential_setup",
        )
    # The admin password travels in the environment (keystone-manage reads
    # OS_BOOTSTRAP_PASSWORD), never in argv.
    proc.run(
        [*km, "bootstrap",
         "--bootstrap-username", ADMIN_USER,
         "--bootstrap-project-name", ADMIN_PROJECT,
         "--bootstrap-role-name", "admin",
         "--bootstrap-service-name", "keystone",
         "--bootstrap-region-id", REGION,
         "--bootstrap-admin-url", cfg.keystone_url,
         "--bootstrap-internal-url", cfg.keystone_url,
         "--bootstrap-public-url", cfg.keystone_url],
        env=env | {"OS_BOOTSTRAP_PASSWORD": admin_password},
        timeout=180, what="keystone-manage bootstrap",
    )


def seed_identities(cfg: StackConfig, passwords: dict[str, str]) -> dict[str, str]:
    """Create the catalog entry for Barbican, the projects, users and role grants.

    Returns ``{name: id}`` for the users and projects (useful for ACLs and checks).
    """
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3
    from keystoneclient.v3 import client as ks_client

    sess = ks_session.Session(
        auth=v3.Password(
            auth_url=cfg.keystone_url,
            username=ADMIN_USER,
            password=passwords[ADMIN_USER],
            project_name=ADMIN_PROJECT,
            user_domain_id="default",
            project_domain_id="default",
        )
    )
    ks = ks_client.Client(session=sess, interface="public")
    ids: dict[str, str] = {}

    roles = {r.name: r for r in ks.roles.list()}
    for name in ("member", "reader", "service", "admin"):
        if name not in roles:
            roles[name] = ks.roles.create(name=name)

    services = [s for s in ks.services.list() if s.type == "key-manager"]
    svc = services[0] if services else ks.services.create(name="barbican", type="key-manager")
    endpoints = {e.interface: e for e in ks.endpoints.list(service=svc)}
    for iface in ("public", "internal", "admin"):
        ep = endpoints.get(iface)
        if ep is None:
            ks.endpoints.create(service=svc, url=cfg.barbican_url, interface=iface, region=REGION)
        elif ep.url != cfg.barbican_url:  # the port changed since the last up
            ks.endpoints.update(ep, url=cfg.barbican_url)

    projects = {p.name: p for p in ks.projects.list(domain="default")}
    users = {u.name: u for u in ks.users.list(domain="default")}
    for su in SEED_USERS:
        project = projects.get(su.project)
        if project is None:
            project = projects[su.project] = ks.projects.create(name=su.project, domain="default")
        user = users.get(su.name)
        if user is None:
            user = users[su.name] = ks.users.create(
                name=su.name,
                domain="default",
                password=passwords[su.name],
                default_project=project,
            )
        for role in su.roles:
            ks.roles.grant(roles[role], user=user, project=project)
        ids[f"user:{su.name}"] = user.id
        ids[f"project:{su.project}"] = project.id
    return ids
