"""The verbs experiments are written in, one module per group; :class:`~byok.harness.context.
Context` inherits them all, so an experiment imports nothing but the harness and says what it
does (``ctx.delete_key(ref)``, ``ctx.damage_header(path, "luks1-phdr")``,
``ctx.kill_during(argv, at="added")``) while every verb runs the product's real code path.

* :mod:`.keys` — a user's Barbican view, resolve, the guard's checks, castellan key managers;
* :mod:`.volumes` — the volume service, the attach hook, rotation and re-encryption;
* :mod:`.luks` — format, test a key, dump, damage a header, encrypt a file, recover, other
  readers (qemu-img, dissect.fve), KDF and cipher limits;
* :mod:`.guest` — guest step builders, QEMU's native read, parallel opens on real dm-crypt;
* :mod:`.process` — the byok CLI killed at a crash point or a moment, the stack's servers
  paused, stopped, wiped, or behind a fault-injecting proxy.
"""

from byok.harness.verbs.guest import GuestVerbs
from byok.harness.verbs.keys import KeyVerbs
from byok.harness.verbs.luks import LuksVerbs
from byok.harness.verbs.process import ProcessVerbs
from byok.harness.verbs.volumes import VolumeVerbs

__all__ = ["GuestVerbs", "KeyVerbs", "LuksVerbs", "ProcessVerbs", "VolumeVerbs"]
