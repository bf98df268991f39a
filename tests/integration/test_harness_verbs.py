"""The harness verbs that do something an experiment's verdict rests on, checked against real
cryptsetup and real processes: each named header damage does what its name says (cryptsetup is
the judge, not our header parser), and kill_during really kills — or lets a run end on its own
when the crash point is never reached."""

from __future__ import annotations

import os

import pytest

from byok.common.errors import ExperimentError, NotLuks, WrongKey
from byok.common.sensitive import Sensitive
from byok.harness.context import Context, Environment
from byok.harness.registry import Experiment
from byok.harness.results import ExperimentResult
from byok.luks import cryptsetup as luks


def _ctx(tmp_path, env=None) -> Context:
    exp = Experiment("E98", "verbs", "H1", "hypothesis", frozenset(), {}, lambda ctx: None)
    env = env or Environment(identity_factory=lambda name: None, barbican_url="http://b",
                             keystone_url="http://k")
    res = ExperimentResult(id="E98", title="t", hurdle="H1", hypothesis="h", run_id="r",
                           repeat=0, started="")
    return Context(exp, env, res, tmp_path)


@pytest.fixture
def volume(tmp_path):
    pw = Sensitive(os.urandom(32).hex())

    def make(luks_type):
        p = tmp_path / f"{luks_type}.img"
        with open(p, "wb") as f:
            f.truncate(32 << 20)
        luks.format(p, pw, luks_type=luks_type)
        return p, pw

    return make


@pytest.mark.parametrize(("luks_type", "how", "outcome"), [
    ("luks1", "luks1-phdr", NotLuks),
    ("luks1", "primary-header", NotLuks),
    ("luks1", "keyslots", WrongKey),
    ("luks2", "primary-header", 0),  # the second metadata copy still opens it
    ("luks2", "both-headers", NotLuks),
    ("luks2", "keyslots", WrongKey),
])
def test_named_header_damage(tmp_path, volume, luks_type, how, outcome):
    ctx = _ctx(tmp_path)
    path, pw = volume(luks_type)
    before = path.read_bytes()
    ranges = ctx.damage_header(path, how)
    expected = bytearray(before)
    for o, n in ranges:
        expected[o:o + n] = bytes(n)
    assert ranges and path.read_bytes() == expected  # those ranges zeroed, nothing else touched
    if isinstance(outcome, int):
        assert ctx.test_key(path, pw) == outcome
    else:
        with pytest.raises(outcome):
            ctx.test_key(path, pw)
    assert ctx.is_luks(path) == (outcome is not NotLuks)


def test_unknown_damage_is_an_error(tmp_path, volume):
    path, _ = volume("luks1")
    with pytest.raises(ExperimentError, match="known: luks1-phdr"):
        _ctx(tmp_path).damage_header(path, "everything")
    with pytest.raises(ExperimentError, match="single header"):
        _ctx(tmp_path).damage_header(path, "both-headers")


@pytest.mark.stack
def test_kill_during_kills_or_lets_it_end(stack, tmp_path):
    ctx = _ctx(tmp_path, Environment.embedded(stack))
    rotate = ["volume", "--pool", str(tmp_path / "pool"), "rotate", "no-such-volume",
              "--key-ref", "00000000-0000-0000-0000-000000000000"]
    cut = ctx.kill_during(rotate, after=0.05)  # long before the CLI has even parsed its args
    assert cut.killed and cut.returncode == -9
    ended = ctx.kill_during(rotate, at="added")  # fails before any crash point: not killed
    assert not ended.killed and ended.returncode > 0 and ended.err
    assert ctx.byok_cli(rotate).returncode == ended.returncode
    with pytest.raises(ExperimentError):
        ctx.kill_during(rotate)
