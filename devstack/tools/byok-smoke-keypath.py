#!/usr/bin/env python3
"""The devstack smoke experiment: H2 on the deployment, through the service's own config file.

As a user of the cloud (a clouds.yaml entry, devstack's ``devstack`` cloud is the ``demo``
user), store a fresh 512-bit AES key in Barbican; then, with the key manager Cinder builds from
its config file (``castellan.key_manager.API(CONF)`` — backend ``byok``), replay what Cinder
does with a volume's key: ``get`` for a volume (the os-brick passphrase), ``store`` of that key
(``clone_encryption_key``) and ``delete`` (volume delete). Checked against Barbican itself:
the bytes and the passphrase are the user's, the volume became a consumer, no secret was
created, the key survives the delete and the consumer is gone. The key is removed at the end.
Prints one line per check and no secret; exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import binascii
import os
import sys
import uuid
from pathlib import Path


def run(conf_path: str, cloud: str, clouds_yaml: str | None = None) -> list[tuple[str, bool]]:
    from castellan import key_manager
    from os_brick import utils as osbrick_utils
    from oslo_config import cfg

    from byok.common.errors import KeyNotFound
    from byok.common.sensitive import Sensitive
    from byok.key_manager.byok_key_manager import ByokKeyManager, volume_scope
    from byok.keys.barbican import BarbicanAPI
    from byok.keys.identity import Identity

    conf = cfg.ConfigOpts()
    conf(["--config-file", conf_path], project="byok-smoke", default_config_files=[])
    km = key_manager.API(conf)
    checks: list[tuple[str, bool]] = [("the file loads backend byok", isinstance(km,
                                                                              ByokKeyManager))]
    user = Identity.from_cloud(cloud, clouds_yaml=Path(clouds_yaml) if clouds_yaml else None)
    api = BarbicanAPI(user, conf.barbican.barbican_endpoint or user.endpoint("key-manager"))
    raw = os.urandom(64)
    ref = api.store(Sensitive(raw), secret_type="symmetric", name="byok-smoke", algorithm="aes",
                    bit_length=512, mode="xts")
    volume = f"byok-smoke-{uuid.uuid4()}"
    ctx = user.castellan_context()
    try:
        before = api.count_secrets()
        with volume_scope(volume):
            obj = km.get(ctx, ref.secret_id)
            checks += [
                ("get for a volume returns the user's key bytes", obj.get_encoded() == raw),
                ("os-brick derives the passphrase from it (hex of the key)",
                 osbrick_utils.get_passphrase_from_secret(obj) == binascii.hexlify(raw).decode()),
                ("the volume is now a consumer of the key",
                 volume in {c["resource_id"] for c in api.consumers(ref)}),
                ("store of the user's key returns the same id (clone shares, never copies)",
                 km.store(ctx, obj) == ref.secret_id),
                ("no secret was created", api.count_secrets() == before),
            ]
            km.delete(ctx, ref.secret_id)
        try:
            api.secret(ref)
            kept = True
        except KeyNotFound:
            kept = False
        checks += [("volume delete keeps the user's key", kept),
                   ("volume delete removes the volume's consumer",
                    volume not in {c["resource_id"] for c in api.consumers(ref)} if kept
                    else False)]
    finally:
        api.delete(ref, force=True)  # the smoke key is ours to remove
    return checks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("conf", help="the service's config file (cinder.conf)")
    p.add_argument("--cloud", required=True, help="a user's cloud in clouds.yaml")
    p.add_argument("--clouds-yaml", help="clouds.yaml to read (default: the usual places)")
    args = p.parse_args(argv)
    try:
        checks = run(args.conf, args.cloud, args.clouds_yaml)
    except Exception as e:  # one clear line for stack.sh, never a traceback with a secret
        print(f"byok smoke: key path FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    for claim, ok in checks:
        print(f"byok smoke: key path: {'ok' if ok else 'FAILED'}: {claim}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
