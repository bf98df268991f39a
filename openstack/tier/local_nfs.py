"""Cinder's own NfsDriver on a local folder: the volume driver of the tier and of `byok cinder`.

No mount, no rootwrap, file-based connections ('local', os-brick's LocalConnector); everything
else — qcow2 files with LUKS inside for encrypted volumes, clones through snapshots (a clone of
an encrypted volume is a raw LUKS file: NfsDriver converts the snapshot with ``-O luks``),
capacity — is the NfsDriver's own code.

qemu-img's own PBKDF benchmark (2 s by default) fails intermittently on a busy 2-core machine
("Unable to get accurate CPU usage"), after which Cinder reschedules the create: LUKS that
qemu-img writes here, at create (the driver's execute) and when a clone is converted to
``-O luks`` (image_utils builds that command), gets a short 10 ms iteration time instead. That
does not stop the benchmark from failing (it measures with tick-resolution CPU time), so the
driver's execute also retries qemu-img when it fails that way.
"""

from __future__ import annotations

import os

from cinder.image import image_utils
from cinder.volume.drivers import nfs
from oslo_concurrency import processutils

_luks_convert_cmd = image_utils._get_qemu_convert_luks_cmd


def _luks_convert_fixed_iter_time(*args, **kwargs):
    cmd = _luks_convert_cmd(*args, **kwargs)
    return [a + ",iter-time=10" if a == "key-secret=sec2" else a for a in cmd]


image_utils._get_qemu_convert_luks_cmd = _luks_convert_fixed_iter_time

QEMU_IMG_TRIES = 5
CPU_USAGE_FLAKE = "Unable to get accurate CPU usage"


def local_execute(*cmd, **kwargs):
    """Cinder's execute for a driver that runs as root without rootwrap or sudo.

    ``mount.nfs`` (probed by do_setup, never used: nothing is mounted) answers as if present.
    qemu-img's LUKS creation gets a short PBKDF time, and is retried when its PBKDF benchmark
    fails ("Unable to get accurate CPU usage", intermittent on a busy 2-core machine).
    """
    kwargs.pop("run_as_root", None)
    kwargs.pop("root_helper", None)
    if cmd and cmd[0] == "mount.nfs":
        return "", ""
    cmd = list(cmd)
    if cmd[:2] == ["qemu-img", "create"]:
        for i, arg in enumerate(cmd):
            if arg.startswith("encrypt.format=luks"):
                cmd[i] = arg + ",encrypt.iter-time=10"
    attempt = 1
    while True:
        try:
            return processutils.execute(*cmd, **kwargs)
        except processutils.ProcessExecutionError as e:
            # qemu-img times PBKDF2 with getrusage (tick resolution): on a busy machine a run can
            # measure 0 ms and qemu-img gives up, whatever iter-time says. Nothing was written
            # (it fails before creating the image). Left alone, Cinder's clone leaves its failed
            # temporary snapshot row behind and the source can never be deleted.
            if (cmd[0] != "qemu-img" or CPU_USAGE_FLAKE not in (e.stderr or "")
                    or attempt == QEMU_IMG_TRIES):
                raise
            attempt += 1


class LocalFolderNfsDriver(nfs.NfsDriver):
    """Cinder's NfsDriver whose share is a local folder (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        kwargs["execute"] = local_execute
        super().__init__(*args, **kwargs)
        self._execute = local_execute  # the base driver keeps utils.execute otherwise

    def _ensure_share_mounted(self, nfs_share):
        os.makedirs(self._get_mount_point_for_share(nfs_share), exist_ok=True)

    def initialize_connection(self, volume, connector):
        info = super().initialize_connection(volume, connector)
        path = os.path.join(self._local_volume_dir(volume), info["data"]["name"])
        return {"driver_volume_type": "local",
                "data": {"device_path": path, "format": info["data"].get("format")}}
