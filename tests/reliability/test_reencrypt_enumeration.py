"""cryptsetup's LUKS2 re-encryption killed at its writes, one state after another, with a
ground truth: ``byok recover`` on every crashed image is exact or refuses — never a wrong byte
— and refuses only where cryptsetup's own ``repair`` + ``reencrypt --resume-only`` on a copy
cannot bring the data back either.

CI runs a sample of the enumeration (>= 100 crashed states over every mode: re-encryption
with checksum, journal and none, in-place encryption with a data shift, decryption with a
detached header and with the header exported; 512/4096-byte sectors, 256/512-bit keys, a
symmetric key and a passphrase; torn data writes). ``BYOK_CRASH_FULL=1`` (or ``./dev bench``,
``byok bench crash``) kills at every write of every shape. Counts go to "byok reliability
counts"."""

from __future__ import annotations

import os

import pytest

from byok.harness import crashenum as ce
from tests.reliability.conftest import count

FULL = os.environ.get("BYOK_CRASH_FULL") == "1"

#: (shape, kill every n-th write, tear every n-th large write, compare with cryptsetup every n)
CI = [
    (ce.Shape(), 2, 2, 6),
    (ce.Shape(resilience="journal", sector=4096, key_bits=256), 6, 4, 0),
    (ce.Shape(resilience="none"), 4, 0, 0),
    (ce.Shape(mode="encrypt", hotzone=None), 4, 0, 0),
    (ce.Shape(mode="decrypt", header="detached"), 8, 0, 0),
    (ce.Shape(mode="decrypt", header="export", hotzone=None), 8, 0, 0),
    (ce.Shape(sector=4096, key_bits=256, secret="passphrase"), 8, 0, 0),
]


def _record(shape: ce.Shape, tally: ce.Tally) -> None:
    name = shape.name
    count(f"crash states (cryptsetup reencrypt): {name}: tried", tally.tried)
    for k in ("exact", "refused", "wrong"):
        count(f"crash states (cryptsetup reencrypt): {name}: byok {k}", tally.byok.get(k, 0))
    for k, n in sorted(tally.cryptsetup.items()):
        count(f"crash states (cryptsetup reencrypt): {name}: cryptsetup repair+resume {k}", n)
    count("crash states (cryptsetup reencrypt): tried", tally.tried)
    count("crash states (cryptsetup reencrypt): byok wrong", tally.byok.get("wrong", 0))


@pytest.mark.parametrize(("shape", "every", "torn", "compare"), CI, ids=[s.name for s, *_ in CI])
def test_every_crashed_state_is_recovered_exactly_or_refused(tmp_path, shape, every, torn,
                                                             compare):
    fractions = (0.3, 0.7) if (torn or FULL) else ()
    _base, tally = ce.enumerate_shape(
        shape, tmp_path / "lab", every=1 if FULL else every, torn_every=1 if FULL else torn or 1,
        torn_fractions=fractions, torn_min_bytes=64 << 10, compare_every=1 if FULL else compare)
    _record(shape, tally)
    assert tally.tried >= 8, f"{shape.name}: only {tally.tried} states"
    assert tally.byok.get("wrong", 0) == 0, (
        f"{shape.name}: byok recover exited 0 with wrong bytes in {tally.wrong_states}")
    # A refusal is right only where cryptsetup cannot bring the data back either — except
    # after resilience "none", where cryptsetup succeeds only by luck of timing (it cannot
    # tell either, and destroys data in the states next to these).
    if shape.resilience != "none":
        assert not tally.refused_where_cryptsetup_exact, (
            f"{shape.name}: byok refused where cryptsetup's repair recovers: "
            f"{tally.refused_where_cryptsetup_exact}")


def test_the_sample_is_large_enough():
    """Runs last in this module (pytest keeps file order): CI saw >= 100 crashed states."""
    from tests.reliability.conftest import COUNTS

    assert COUNTS.get("crash states (cryptsetup reencrypt): tried", 0) >= 100
