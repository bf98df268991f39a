"""Configuration files of the embedded Keystone and Barbican, rendered from :class:`StackConfig`.

Traps these files work around (measured on this machine, see ../shared/notes/keystone-barbican.md):

* Barbican parses its config at import time from oslo.config's default search path only, so
  ``barbican.conf`` goes to ``<state>/barbican/home/.barbican/barbican.conf`` and the server runs
  with ``HOME=<state>/barbican/home``.
* Barbican's own WSGI entry hard-codes ``/etc/barbican/barbican-api-paste.ini``; ours
  (:mod:`byok.stack.wsgi_barbican`) loads the paste file named by ``BYOK_BARBICAN_PASTE``.
* Keystone's bcrypt cost is lowered to 4 rounds (a test cloud: 54 ms per password auth instead of
  260 ms); it must be set before users are created because the cost is baked into each hash.
"""

from __future__ import annotations

from pathlib import Path

from byok.common import paths
from byok.stack.config import StackConfig


def keystone_conf(cfg: StackConfig) -> str:
    k = cfg.state_dir / "keystone"
    return f"""\
# Written by byok stack up; edits are overwritten.
[DEFAULT]
debug = False
log_file = {k / "keystone.log"}

[database]
connection = sqlite:///{k / "keystone.sqlite"}

[token]
provider = fernet
expiration = 3600

[fernet_tokens]
key_repository = {k / "fernet-keys"}

[fernet_receipts]
key_repository = {k / "fernet-keys"}

[credential]
key_repository = {k / "credential-keys"}

[identity]
# Test cloud only: bcrypt cost 4 (default 12) makes each password auth ~5x faster.
password_hash_rounds = 4
"""


def barbican_conf(cfg: StackConfig, *, kek: str, service_password: str) -> str:
    b = cfg.state_dir / "barbican"
    return f"""\
# Written by byok stack up; edits are overwritten. Found by Barbican via HOME (see files.py).
[DEFAULT]
host_href = {cfg.barbican_url}
sql_connection = sqlite:///{b / "barbican.sqlite"}
db_auto_create = True
debug = False
log_file = {b / "barbican-api.log"}

[secretstore]
enabled_secretstore_plugins = store_crypto

[crypto]
enabled_crypto_plugins = simple_crypto

[simple_crypto_plugin]
kek = {kek}

[keystone_authtoken]
www_authenticate_uri = {cfg.keystone_url}
auth_url = {cfg.keystone_url}
auth_type = password
username = barbican
password = {service_password}
user_domain_name = Default
project_name = service
project_domain_name = Default
service_token_roles_required = True
"""


BARBICAN_PASTE = """\
# Barbican API behind keystonemiddleware (the keystone pipeline). Written by byok stack up.
[composite:main]
use = egg:Paste#urlmap
/: barbican_version
/v1: barbican-api-keystone

[pipeline:barbican_version]
pipeline = request_id http_proxy_to_wsgi microversion versionapp

[pipeline:barbican-api-keystone]
pipeline = request_id http_proxy_to_wsgi authtoken context microversion apiapp

[app:apiapp]
paste.app_factory = barbican.api.app:create_main_app

[app:versionapp]
paste.app_factory = barbican.api.app:create_version_app

[filter:context]
paste.filter_factory = barbican.api.middleware.context:ContextMiddleware.factory

[filter:microversion]
paste.filter_factory = barbican.api.middleware.microversion:MicroversionMiddleware.factory

[filter:authtoken]
paste.filter_factory = keystonemiddleware.auth_token:filter_factory

[filter:request_id]
paste.filter_factory = oslo_middleware.request_id:RequestId.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
"""


def keystone_conf_path(cfg: StackConfig) -> Path:
    return cfg.state_dir / "keystone" / "keystone.conf"


def barbican_home(cfg: StackConfig) -> Path:
    return cfg.state_dir / "barbican" / "home"


def barbican_paste_path(cfg: StackConfig) -> Path:
    return cfg.state_dir / "barbican" / "barbican-api-paste.ini"


def write_all(cfg: StackConfig, *, kek: str, service_password: str) -> None:
    """(Re)write every config file; directories are 0700 and files holding secrets 0600."""
    k = paths.private_dir(cfg.state_dir / "keystone")
    paths.private_dir(k / "fernet-keys")
    paths.private_dir(k / "credential-keys")
    paths.write_private(keystone_conf_path(cfg), keystone_conf(cfg))
    home = paths.private_dir(barbican_home(cfg) / ".barbican")
    paths.write_private(
        home / "barbican.conf", barbican_conf(cfg, kek=kek, service_password=service_password)
    )
    paths.write_private(barbican_paste_path(cfg), BARBICAN_PASTE)
