"""The research harness itself: discovery, the results schema, verdicts from checks, partial
runs (Ctrl-C), the report, and the spec's evidence blocks (issues 7 and 8). No services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from byok.harness import registry, report, results, runner, spec
from byok.harness.context import Environment
from byok.harness.registry import Experiment

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "design" / "user-supplied-keys.rst"


def _exp(eid, func, needs=frozenset()):
    return Experiment(eid, f"title {eid}", "H1", "hypothesis", frozenset(needs), {}, func)


def _env():
    return Environment(identity_factory=lambda name: None, barbican_url="http://b",
                       keystone_url="http://k")


def test_discovery_finds_every_experiment_by_path():
    reg = registry.discover()
    ids = list(reg)
    assert ids == sorted(ids, key=registry.sort_key)  # a variant (E03-cinder) after its prototype
    assert {f"E{i:02d}" for i in range(1, 17)} <= set(ids)
    hurdles = {h for e in reg.values() for h in e.hurdle.split("/")}
    assert {f"H{i}" for i in range(1, 11)} <= hurdles  # every hurdle has an experiment
    for e in reg.values():
        assert e.hypothesis and e.title and set(e.needs) <= set(registry.NEEDS)


def test_verdicts_come_from_checks_and_results_validate(tmp_path):
    def good(ctx):
        ctx.measure("x", 1.5, "s", samples=[1.0, 2.0])
        ctx.check("holds", True)

    def bad(ctx):
        ctx.check("holds", True)
        ctx.check("does not hold", False, "detail")

    def crash(ctx):
        raise RuntimeError("boom")

    def nothing(ctx):
        ctx.measure("y", 2)

    def skip(ctx):
        ctx.skip("no reason to run")

    exps = [_exp("E91", good), _exp("E92", bad), _exp("E93", crash), _exp("E94", nothing),
            _exp("E95", skip)]
    summary = runner.run_experiments(exps, _env(), out_dir=tmp_path)
    verdicts = {e["id"]: e["verdict"] for e in summary.experiments}
    assert verdicts == {"E91": "supported", "E92": "refuted", "E93": "error", "E94": "error",
                        "E95": "skipped: no reason to run"}
    for f in tmp_path.glob("E*.json"):
        doc = json.loads(f.read_text())
        assert results.validate(doc) == [], f.name
        assert doc["host"]["cryptsetup"] is not None or doc["host"]["kernel"]
    crash_doc = json.loads((tmp_path / "E93.json").read_text())
    assert "boom" in crash_doc["error"]
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["counts"] == {"supported": 1, "refuted": 1, "error": 2, "skipped": 1}


def test_schema_validation_catches_lies():
    doc = {"id": "E1", "title": "t", "hurdle": "H1", "hypothesis": "h", "run_id": "r",
           "verdict": "supported", "measurements": [], "checks": [{"claim": "c",
                                                                    "passed": False}],
           "host": {}, "started": "", "ended": ""}
    assert "supported with a failed check" in results.validate(doc)
    doc["verdict"] = "maybe"
    assert any("bad verdict" in p for p in results.validate(doc))


def test_ctrl_c_leaves_consistent_partial_results(tmp_path):
    def ok(ctx):
        ctx.check("fine", True)

    def interrupted(ctx):
        ctx.check("started", True)
        raise KeyboardInterrupt

    def never(ctx):  # pragma: no cover - must not run
        raise AssertionError("ran after Ctrl-C")

    summary = runner.run_experiments(
        [_exp("E81", ok), _exp("E82", interrupted), _exp("E83", never)], _env(),
        out_dir=tmp_path)
    assert summary.interrupted
    assert [e["id"] for e in summary.experiments] == ["E81", "E82", "E83"]
    assert summary.experiments[2]["verdict"] == "not run (interrupted)"  # listed, not run
    assert json.loads((tmp_path / "E82.json").read_text())["error"].startswith("interrupted")
    assert not (tmp_path / "E83.json").exists()
    assert json.loads((tmp_path / "run.json").read_text())["interrupted"] is True
    for f in tmp_path.glob("E*.json"):
        assert results.validate(json.loads(f.read_text())) == []


def test_missing_needs_skip_with_a_reason(tmp_path):
    def needs_control(ctx):  # pragma: no cover - skipped
        ctx.check("x", True)

    summary = runner.run_experiments([_exp("E71", needs_control, {"stack-control"})], _env(),
                                     out_dir=tmp_path)
    assert summary.experiments[0]["verdict"].startswith("skipped: needs to stop")


def _fixed_run(tmp_path) -> Path:
    """A results directory with one result per experiment of the registry (no services)."""
    reg = registry.discover()
    for i, e in enumerate(reg.values()):
        r = results.ExperimentResult(
            id=e.id, title=e.title, hurdle=e.hurdle, hypothesis=e.hypothesis, run_id="fixed-run",
            verdict="supported", started="2026-11-25T00:00:00Z", ended="2026-11-25T00:01:00Z",
            measurements=[results.Measurement("latency_s", 0.125 * (i + 1), "s", [0.1, 0.2]),
                          results.Measurement("open_s:machine-key", 0.012, "s"),
                          results.Measurement("open_s:osbrick-default", 2.4, "s"),
                          results.Measurement("parallel_wall_s:machine-key:4", 0.03, "s"),
                          results.Measurement("rekey_s:64", 0.2, "s"),
                          results.Measurement("reencrypt_s:64", 0.3, "s"),
                          results.Measurement("rekey_s:256", 0.2, "s"),
                          results.Measurement("reencrypt_s:256", 0.9, "s"),
                          results.Measurement("outcome:luks2:added", "completed", ""),
                          results.Measurement("recover_mb_s:4096", 170.0, "MB/s"),
                          results.Measurement("openssl_mb_s:4096", 6800.0, "MB/s"),
                          results.Measurement("resolve_castellan_s", 0.2, "s", [0.2, 0.21]),
                          results.Measurement("resolve_byok_s", 0.02, "s", [0.02, 0.019])],
            checks=[results.Check("a claim with | pipes and *stars*", True, "d")],
        )
        results.write(r, tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "fixed-run", "counts": {}}))
    return tmp_path


def test_report_has_verdict_table_sections_and_plots(tmp_path):
    run_dir = _fixed_run(tmp_path)
    path = report.render(run_dir)
    text = path.read_text()
    assert "| id | experiment | hurdle | verdict |" in text
    for e in registry.discover().values():
        assert f"## {e.id}" in text
    pngs = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert any("pbkdf" in p for p in pngs) and any("resolve" in p for p in pngs)
    assert any("rekey" in p for p in pngs) and any("recovery" in p for p in pngs)
    assert any("crash-matrix" in p for p in pngs)
    for p in pngs:
        assert (run_dir / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spec_has_an_evidence_block_for_every_hurdle():
    """Across the core spec and its follow-ups (H6, H9 moved there in issue 17)."""
    from byok.harness import publish

    reg = registry.discover()
    _, found = spec.inject(SPEC, [], "none")
    assert found, "the spec has no evidence blocks"
    for other in publish.evidence_specs():
        found += spec.inject(other, [], "none")[1]
    assert set(found) <= set(reg), set(found) - set(reg)
    covered = {h for eid in found for h in reg[eid].hurdle.split("/")}
    assert {f"H{i}" for i in range(1, 11)} <= covered


def test_spec_regeneration_is_stable_and_builds_without_warnings(tmp_path):
    import docutils.core

    run_dir = _fixed_run(tmp_path / "run")
    res = results.load_run(run_dir)
    copy = tmp_path / "spec.rst"
    copy.write_text(SPEC.read_text())
    assert spec.update(copy, res, "fixed-run") or True
    once = copy.read_text()
    assert not spec.update(copy, res, "fixed-run")  # idempotent
    assert copy.read_text() == once
    assert "verdict **supported**" in once and "fixed-run" in once
    # Outside the blocks, nothing changed, byte for byte.
    assert _outside_blocks(once) == _outside_blocks(SPEC.read_text())
    html = tmp_path / "spec.html"
    docutils.core.publish_file(
        source_path=str(copy), destination_path=str(html), writer_name="html",
        settings_overrides={"halt_level": 2, "report_level": 2, "warning_stream": False},
    )
    page = html.read_text()
    assert page.count("<html") == 1 and "fixed-run" in page  # generated evidence renders


def _outside_blocks(text: str) -> list[str]:
    out, inside = [], False
    for ln in text.splitlines():
        if ln.startswith(".. evidence:"):
            inside = True
            out.append(ln)
        elif ln.startswith(".. end-evidence"):
            inside = False
            out.append(ln)
        elif not inside:
            out.append(ln)
    return out


def test_evidence_patterns_choose_the_measurements(tmp_path):
    run_dir = _fixed_run(tmp_path / "run")
    res = {r.id: r for r in results.load_run(run_dir)}
    some = next(r for r in res.values() if len(r.measurements) >= 2)
    name = some.measurements[1].name
    lines = spec.block(some.id, some, "r", [name])
    assert any(name in ln for ln in lines)
    assert not any(some.measurements[0].name + "``" in ln for ln in lines
                   if some.measurements[0].name != name)


def test_unclosed_evidence_block_is_an_error(tmp_path):
    bad = tmp_path / "bad.rst"
    bad.write_text("Title\n=====\n\n.. evidence: E01\n\ntext\n")
    with pytest.raises(ValueError, match="not closed"):
        spec.inject(bad, [], "r")
