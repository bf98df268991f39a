"""The session's secret-hygiene scan must be able to fail: a key written in any of its forms to
a file the session leaves behind is found, also among many files; library code is not read."""

import base64
import os

from tests.conftest import Hygiene, _small_files


def _finish(h: Hygiene, root) -> list[str]:
    h.start()  # the sampler and log handler, as the session runs them; finish stops both
    return [x for x in h.finish([], _small_files(root)) if "left behind" not in x]


def test_a_planted_key_is_found_in_each_form(tmp_path, monkeypatch):
    monkeypatch.setenv("BYOK_HOME", str(tmp_path / "empty-home"))  # only what is planted
    raw = os.urandom(32)
    for i, form in enumerate((raw, raw.hex().encode(), raw.hex().upper().encode(),
                              base64.b64encode(raw))):
        d = tmp_path / f"case{i}"
        (d / "records").mkdir(parents=True)
        for j in range(50):
            (d / "records" / f"r{j}.json").write_text('{"state": "available"}\n' * (j + 1))
        (d / "records" / "leak.log").write_bytes(b"before " + form + b" after")
        h = Hygiene()
        h.register(raw)
        assert _finish(h, d), f"form {i} was not found"
        assert h.files_scanned == 51  # 50 distinct records and the leak, each read once


def test_library_code_is_not_read_and_clean_files_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("BYOK_HOME", str(tmp_path / "empty-home"))
    raw = os.urandom(32)
    lib = tmp_path / "venv" / "lib" / "site-packages" / "pkg"
    lib.mkdir(parents=True)
    (lib / "data.txt").write_text(raw.hex())  # under site-packages: skipped
    (tmp_path / "module.py").write_text(f"K = '{raw.hex()}'\n")  # code: skipped
    (tmp_path / "record.json").write_text('{"key_ref": "https://barbican/v1/secrets/x"}')
    h = Hygiene()
    h.register(raw)
    assert _finish(h, tmp_path) == []
    assert h.files_scanned == 1
