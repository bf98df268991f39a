"""The JSON of ``byok bench cinder`` from its samples (the services themselves run in
``byok bench cinder``; this checks the shape and the ratios only)."""

from __future__ import annotations

import json

from byok.bench.cinder import OPS, report


def _samples(byok: float, stock: float) -> dict:
    # three samples per operation: the nearest-rank p50 is the middle one
    return {"byok": {op: [byok, byok * 3, byok * 2] for op in OPS},
            "barbican": {op: [stock * 2, stock, stock * 3] for op in OPS},
            "barbican_user_key": {op: [stock, stock, stock] for op in OPS}}


def test_shape_and_ratios():
    out = json.loads(json.dumps(report(_samples(1.0, 2.0), n=3, deployments={
        "byok": "http://a", "barbican": "http://b"}, secrets_left_behind=0)))
    assert set(out) >= {"name", "unit", "n", "deployments", "target", "byok", "barbican",
                        "barbican_user_key", "ratio_p50", "ratio_p95",
                        "ratio_p50_vs_barbican_user_key", "secrets_left_behind", "target_met"}
    for side in ("byok", "barbican", "barbican_user_key"):
        assert set(out[side]) == set(OPS)
        assert all({"p50", "p95", "samples"} <= set(out[side][op]) for op in OPS)
    assert out["byok"]["create"]["p50"] == 2.0 and out["barbican"]["create"]["p50"] == 4.0
    assert out["ratio_p50"] == {op: 0.5 for op in OPS}
    assert out["ratio_p95"] == {op: 0.5 for op in OPS}  # 3.0 / 6.0
    assert out["ratio_p50_vs_barbican_user_key"] == {op: 1.0 for op in OPS}
    assert out["target_met"] is True


def test_target_not_met_when_the_user_key_path_is_slower():
    out = report(_samples(3.0, 1.0), n=3, deployments={}, secrets_left_behind=2)
    assert out["ratio_p50"]["clone"] == 3.0 and out["target_met"] is False
    assert out["secrets_left_behind"] == 2
