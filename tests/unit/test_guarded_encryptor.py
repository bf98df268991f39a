"""The guard sits where os-brick decides to format: its encryptor's own attach flow, driven
through os-brick's ``execute=`` seam with canned cryptsetup answers (no dm needed here)."""

from __future__ import annotations

import pytest
from castellan.common.objects import symmetric_key
from oslo_concurrency import processutils

from byok.attach.encryptor import encryptor
from byok.attach.guest_ops import PreResolvedKeyManager
from byok.common.errors import FormatRefused


def _run_attach(provider, *, guard, allow_format):
    calls = []

    def execute(*cmd, **kw):
        calls.append(cmd)
        if cmd[:2] == ("cryptsetup", "luksOpen") and len(
                [c for c in calls if c[:2] == ("cryptsetup", "luksOpen")]) == 1:
            # what a kernel without dm, or a damaged header, answers: exit 1
            raise processutils.ProcessExecutionError(exit_code=1, cmd=" ".join(cmd))
        if cmd[:2] == ("cryptsetup", "isLuks"):
            raise processutils.ProcessExecutionError(exit_code=1, cmd=" ".join(cmd))
        return "", ""

    key = symmetric_key.SymmetricKey("AES", 512, b"\x01" * 64, id="k")
    enc = encryptor(provider, guard=guard, allow_format=allow_format, root_helper=None,
                    connection_info={"data": {"device_path": "/dev/disk/by-id/v",
                                              "volume_id": "v"}},
                    keymgr=PreResolvedKeyManager(key, "k"), execute=execute,
                    encryption_key_id="k")
    try:
        enc.attach_volume(None)
        return calls, None
    except FormatRefused as e:
        return calls, e


@pytest.mark.parametrize("provider", ["luks", "luks2"])
def test_guarded_encryptor_refuses_os_bricks_format(provider):
    calls, refused = _run_attach(provider, guard=True, allow_format=False)
    assert refused is not None
    assert not any("luksFormat" in c for c in calls)  # nothing destructive ran


@pytest.mark.parametrize(("provider", "luks_type"), [("luks", "luks1"), ("luks2", "luks2")])
def test_new_blank_volume_may_be_formatted_and_stock_os_brick_always_does(provider, luks_type):
    for guard, allow in ((True, True), (False, False)):
        calls, refused = _run_attach(provider, guard=guard, allow_format=allow)
        assert refused is None
        fmt = [c for c in calls if "luksFormat" in c]
        assert len(fmt) == 1 and luks_type in fmt[0]
