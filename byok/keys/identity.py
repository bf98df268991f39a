"""Who asks: a user (password or token) or a service user, as keystoneauth sessions.

Identities come from clouds.yaml through openstacksdk's config loader, whether the cloud is the
embedded stack (``byok stack up`` writes ``byok-alice``, ``byok-cinder``...) or a real deployment
(``--cloud mycloud``). One :class:`Identity` owns one keystoneauth Session: the token is fetched
once and re-fetched by keystoneauth shortly before it expires, which is what makes byok's
resolver ~10x faster than castellan (which authenticates from scratch on every call).
Key material never passes through this module.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from byok.common.errors import IdentityError, KeyServiceUnavailable

# Every Keystone request (token issue, discovery, catalog) made through an identity's session is
# bounded: keystoneauth's default is to wait forever, so a paused Keystone would hang a resolve
# past any deadline (the Barbican calls pass their own, shorter, per-attempt timeout).
KEYSTONE_TIMEOUT = 3.0
SERVICE_ROLE = "service"


@dataclass
class Identity:
    """An authenticated principal with a reusable session."""

    name: str
    auth_url: str
    auth: Any  # a keystoneauth1 auth plugin
    session: Any  # keystoneauth1.session.Session
    auth_args: dict[str, Any] = field(default_factory=dict, repr=False)
    region_name: str | None = None
    interface: str = "public"
    kind: str = "password"  # "password" or "token"
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _is_service: bool | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if getattr(self.session, "timeout", None) is None:
            self.session.timeout = KEYSTONE_TIMEOUT

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_cloud(cls, cloud: str, *, clouds_yaml: Path | None = None) -> Identity:
        """An identity from a clouds.yaml entry (``clouds_yaml`` first, then the usual places)."""
        from openstack import config as os_config
        from openstack import exceptions as os_exc

        # The usual places, and $OS_CLIENT_CONFIG_FILE first (as the openstack CLI does); other
        # OS_* variables are ignored on purpose, so the environment cannot change an identity.
        override = os.environ.get("OS_CLIENT_CONFIG_FILE")
        files = [str(clouds_yaml)] if clouds_yaml else ([override] if override else [])
        try:
            loader = os_config.OpenStackConfig(config_files=files or None, load_envvars=False)
            region = loader.get_one(cloud=cloud)
        except os_exc.ConfigException as e:
            where = f" in {clouds_yaml}" if clouds_yaml else ""
            raise IdentityError(
                f"no usable cloud '{cloud}'{where}: {e}",
                hint="list clouds with 'byok stack status' (embedded stack) or check clouds.yaml",
            ) from e
        auth_args = dict(region.config.get("auth", {}))
        if not auth_args.get("auth_url"):
            raise IdentityError(f"cloud '{cloud}' has no auth_url")
        return cls(
            name=cloud,
            auth_url=auth_args["auth_url"],
            auth=region.get_auth(),
            session=region.get_session(),
            auth_args=auth_args,
            region_name=region.region_name,
            interface=region.config.get("interface") or "public",
            kind="token" if "token" in auth_args else "password",
        )

    @classmethod
    def from_token(
        cls,
        token: str,
        *,
        auth_url: str,
        project_id: str | None = None,
        name: str = "token",
    ) -> Identity:
        """An identity that only holds a user's token (what Nova/Cinder receive from a user)."""
        from keystoneauth1 import session as ks_session
        from keystoneauth1.identity import v3

        auth = v3.Token(auth_url=auth_url, token=token, project_id=project_id)
        return cls(
            name=name,
            auth_url=auth_url,
            auth=auth,
            session=ks_session.Session(auth=auth, timeout=KEYSTONE_TIMEOUT),
            auth_args={"token": token, "project_id": project_id, "auth_url": auth_url},
            kind="token",
        )

    @classmethod
    def from_castellan(cls, context: Any, *, auth_url: str) -> Identity:
        """The identity behind a castellan credential or an oslo RequestContext (what Nova and
        Cinder hand their key manager), so the castellan backend can use byok's key path."""
        from castellan.common.credentials import keystone_password, keystone_token
        from keystoneauth1 import session as ks_session
        from keystoneauth1.identity import v3

        if isinstance(context, keystone_password.KeystonePassword):
            fields = ("username", "user_id", "user_domain_id", "user_domain_name", "project_id",
                      "project_name", "project_domain_id", "project_domain_name", "domain_id",
                      "domain_name", "trust_id")
            args: dict[str, Any] = {f: getattr(context, f, None) for f in fields}
            args = {k: v for k, v in args.items() if v}
            auth: v3.Password | v3.Token = v3.Password(
                auth_url=context.auth_url or auth_url, password=context.password, **args)
            name, kind = args.get("username") or args.get("user_id") or "password", "password"
            auth_args = {**args, "password": context.password}
        else:
            token = getattr(context, "token", None) or getattr(context, "auth_token", None)
            if not token:
                raise IdentityError(
                    f"cannot authenticate with a {type(context).__name__}: no token or password")
            project_id = getattr(context, "project_id", None)
            url = getattr(context, "auth_url", None) or auth_url
            if isinstance(context, keystone_token.KeystoneToken) and not project_id:
                auth = v3.Token(auth_url=url, token=token,
                                project_name=context.project_name,
                                project_domain_name=context.project_domain_name,
                                project_domain_id=context.project_domain_id)
            else:
                auth = v3.Token(auth_url=url, token=token, project_id=project_id)
            name, kind = "token", "token"
            auth_args = {"token": token, "project_id": project_id}
        return cls(name=name, auth_url=auth_url, auth=auth,
                   session=ks_session.Session(auth=auth, timeout=KEYSTONE_TIMEOUT),
                   auth_args=auth_args, kind=kind)

    # -- facts -------------------------------------------------------------------------------
    def is_service(self) -> bool:
        """True if Keystone gave this identity the ``service`` role (Cinder, Nova): it then acts
        on its own authority and must pass the confused-deputy guard's token-less rule."""
        if self._is_service is None:
            with self._lock:
                access = _ks_call(self, lambda: self.auth.get_access(self.session))
            self._is_service = SERVICE_ROLE in (access.role_names or [])
        return self._is_service

    def token(self) -> str:
        with self._lock:
            return str(_ks_call(self, lambda: self.session.get_token()))

    def user_id(self) -> str:
        with self._lock:
            return str(_ks_call(self, lambda: self.session.get_user_id()))

    def project_id(self) -> str:
        with self._lock:
            return str(_ks_call(self, lambda: self.session.get_project_id()))

    def endpoint(self, service_type: str) -> str:
        """Catalog URL of ``service_type`` for this identity's region/interface."""
        with self._lock:
            return str(_ks_call(
                self,
                lambda: self.session.get_endpoint(
                    service_type=service_type,
                    interface=self.interface,
                    region_name=self.region_name,
                ),
            ))

    def castellan_context(self) -> Any:
        """A castellan credential for this identity (what Nova/Cinder would pass castellan).

        Password identities become ``KeystonePassword`` (castellan re-authenticates each call);
        token identities become ``KeystoneToken``.
        """
        from castellan.common.credentials import keystone_password, keystone_token

        a = self.auth_args
        if self.kind == "token":
            return keystone_token.KeystoneToken(
                token=a["token"],
                auth_url=self.auth_url,
                project_id=a.get("project_id"),
                project_name=a.get("project_name"),
                project_domain_name=a.get("project_domain_name"),
            )
        return keystone_password.KeystonePassword(
            password=str(a.get("password") or ""),
            auth_url=self.auth_url,
            username=a.get("username"),
            user_id=a.get("user_id"),
            user_domain_name=a.get("user_domain_name"),
            user_domain_id=a.get("user_domain_id"),
            project_name=a.get("project_name"),
            project_id=a.get("project_id"),
            project_domain_name=a.get("project_domain_name"),
            project_domain_id=a.get("project_domain_id"),
        )


def _ks_call(ident: Identity, fn: Callable[[], Any]) -> Any:
    from keystoneauth1 import exceptions as ks_exc

    try:
        return fn()
    except ks_exc.Unauthorized as e:
        raise IdentityError(f"Keystone refused the credentials of '{ident.name}': {e}") from e
    except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout, ks_exc.DiscoveryFailure) as e:
        raise KeyServiceUnavailable(
            f"Keystone at {ident.auth_url} is unreachable: {type(e).__name__}",
            hint="is the cloud up? for the embedded stack: byok stack up",
        ) from e
    except ks_exc.ClientException as e:
        raise KeyServiceUnavailable(f"Keystone at {ident.auth_url} failed: {e}") from e
