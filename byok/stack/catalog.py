"""Keystone catalog entries for services byok runs beside the stack (Cinder's block storage).

Clients find a service through the catalog of their token (openstacksdk's ``block-storage``,
the ``openstack`` CLI's ``volumev3``). Idempotent: an entry that exists is updated in place
when its URL changed (another port), never duplicated.
"""

from __future__ import annotations

from collections.abc import Iterable

from byok.stack.config import ADMIN_PROJECT, ADMIN_USER, REGION


def register(stack, url: str, services: Iterable[tuple[str, str]]) -> None:
    """Make ``url`` the public/internal/admin endpoint of each ``(type, name)`` service."""
    from keystoneauth1 import session as ks_session
    from keystoneauth1.identity import v3
    from keystoneclient.v3 import client as ks_client

    passwords = stack.secrets.passwords()
    sess = ks_session.Session(auth=v3.Password(
        auth_url=stack.cfg.keystone_url, username=ADMIN_USER, password=passwords[ADMIN_USER],
        project_name=ADMIN_PROJECT, user_domain_id="default", project_domain_id="default"))
    ks = ks_client.Client(session=sess, interface="public")
    for stype, name in services:
        found = [s for s in ks.services.list() if s.type == stype]
        svc = found[0] if found else ks.services.create(name=name, type=stype)
        endpoints = {e.interface: e for e in ks.endpoints.list(service=svc)}
        for iface in ("public", "internal", "admin"):
            ep = endpoints.get(iface)
            if ep is None:
                ks.endpoints.create(service=svc, url=url, interface=iface, region=REGION)
            elif ep.url != url:
                ks.endpoints.update(ep, url=url)
