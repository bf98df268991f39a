"""cinder.conf of ``byok cinder up``, rendered from the stack and the deployment's settings.

One file for every service of one deployment (as a packaged Cinder reads /etc/cinder/cinder.conf).
What is not a packaged default, and why:

* ``sqlite`` with a busy timeout: four processes share one database file here (MySQL is not
  part of this machine); Cinder's own functional tests run on sqlite too.
* ``[coordination] backend_url = file://...``: tooz file locks, Cinder's default for a single
  host; the clone lock the experiments measure (``<source>-delete_volume``) is one of them.
* ``report_interval`` 5 s, ``periodic_interval`` 10 s, the backup service's stats every 10 s:
  the scheduler hears from a new backup service in seconds instead of a minute.
* the local-folder NfsDriver (openstack/tier/local_nfs.py): encrypted volumes are NfsDriver's
  qcow2 with LUKS inside, their clones raw LUKS files.

A devstack-written cinder.conf can follow this file on the command line (``--conf``): later
files win for the options they set, as oslo.config reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ConfInputs:
    """Everything cinder.conf is made from."""

    base: Path               # the deployment's directory
    tree: Path               # the patched Cinder tree (api-paste.ini, resource_filters.json)
    host: str                # Cinder's [DEFAULT] host of every service
    transport_url: str
    control_exchange: str
    keystone_url: str
    barbican_url: str
    cinder_password: str
    backend: str             # castellan backend: byok or barbican


def render(c: ConfInputs) -> str:
    b = c.base
    return f"""\
# Written by byok cinder up; edits are overwritten. Holds passwords: keep 0600.
[DEFAULT]
host = {c.host}
my_ip = 127.0.0.1
state_path = {b / "state"}
transport_url = {c.transport_url}
control_exchange = {c.control_exchange}
auth_strategy = keystone
enabled_backends = local
default_volume_type = luks
api_paste_config = {c.tree / "etc" / "cinder" / "api-paste.ini"}
resource_query_filters_file = {c.tree / "etc" / "cinder" / "resource_filters.json"}
image_conversion_dir = {b / "conversion"}
backup_driver = cinder.backup.drivers.posix.PosixBackupDriver
backup_posix_path = {b / "backups"}
report_interval = 5
periodic_interval = 10
backup_driver_stats_polling_interval = 10
debug = False
# A test cloud: experiments and benchmarks create many volumes (Cinder's default quota is 10;
# without use_default_quota_class = False the database's default class of 10 would win).
use_default_quota_class = False
quota_volumes = -1
quota_snapshots = -1
quota_gigabytes = -1
quota_backups = -1
quota_backup_gigabytes = -1

[database]
connection = sqlite:///{b / "cinder.sqlite"}?timeout=60

[oslo_concurrency]
lock_path = {b / "locks"}

[coordination]
backend_url = file://{b / "coordination"}

[key_manager]
backend = {c.backend}

[barbican]
barbican_endpoint = {c.barbican_url}
auth_endpoint = {c.keystone_url}

[keystone_authtoken]
www_authenticate_uri = {c.keystone_url}
auth_url = {c.keystone_url}
auth_type = password
username = cinder
password = {c.cinder_password}
project_name = service
user_domain_name = Default
project_domain_name = Default
service_token_roles_required = True

[oslo_messaging_notifications]
driver = noop

[local]
volume_driver = local_nfs.LocalFolderNfsDriver
volume_backend_name = local
nfs_shares_config = {b / "nfs_shares"}
nfs_mount_point_base = {b / "mnt"}
nfs_qcow2_volumes = True
nfs_snapshot_support = True
nfs_sparsed_volumes = True
nas_secure_file_operations = false
nas_secure_file_permissions = false
"""


SHARE = "127.0.0.1:/byok-local-share"
