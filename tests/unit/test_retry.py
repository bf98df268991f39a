"""byok.common.retry: the attempts it promises, the filter, the last error unchanged."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from byok.common.retry import retry


@given(st.integers(1, 6), st.integers(0, 8))
def test_retries_exactly_until_success_or_the_limit(retries, failures):
    calls = []

    @retry(KeyError, retries=retries, interval=0)
    def flaky():
        calls.append(1)
        if len(calls) <= failures:
            raise KeyError(len(calls))
        return "ok"

    if failures < retries:
        assert flaky() == "ok" and len(calls) == failures + 1
    else:
        with pytest.raises(KeyError) as e:
            flaky()
        assert len(calls) == retries and e.value.args == (retries,)


def test_other_errors_and_filtered_ones_are_not_retried():
    calls = []

    @retry(ValueError, retries=5, interval=0, when=lambda e: "again" in str(e))
    def f(msg):
        calls.append(msg)
        raise ValueError(msg)

    with pytest.raises(ValueError):
        f("final")
    assert calls == ["final"]
    with pytest.raises(TypeError):
        retry(ValueError, retries=5)(lambda: calls.append("t") or (_ for _ in ()).throw(
            TypeError("x")))()
    assert calls.count("t") == 1
    with pytest.raises(ValueError):
        retry(ValueError, retries=0)
