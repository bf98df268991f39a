"""Property tests for the Work Items parsers (byok.harness.workitems): the spec table's reader
is the inverse of its writer, and the patch reader finds exactly the files, hunks and changed
lines of a generated unified diff (checked against a hand-built diff, not the parser)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from byok.harness import workitems

IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True)
PATCH = st.builds(lambda proj, n: f"{proj}/{n:04d}", st.sampled_from(["cinder", "nova"]),
                  st.integers(1, 9))
PATH = st.builds(lambda parts, leaf: "/".join([*parts, leaf + ".py"]),
                 st.lists(IDENT, min_size=1, max_size=4), IDENT)
FUNC = st.builds(lambda parts: ".".join(parts), st.lists(IDENT, min_size=1, max_size=3))
WORDS = st.lists(st.from_regex(r"[A-Za-z0-9:()'/_.-]{1,18}", fullmatch=True), min_size=1,
                 max_size=30).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(PATCH, PATH, st.lists(FUNC, min_size=1, max_size=6, unique=True),
                          WORDS), min_size=1, max_size=12, unique_by=lambda t: (t[0], t[1])))
def test_rows_read_back_what_render_wrote(items):
    found, changes = set(), {}
    for patch, path, fns, change in items:
        full = f"{patch.split('/')[0]}/{path}"
        found |= {(patch, full, fn) for fn in fns}
        changes[(patch, full)] = change
    text = "Title\n=====\n\n" + workitems.render(found, changes) + "\n\nAfter.\n"
    rows = workitems.rows(text)
    assert workitems.expand(rows) == found
    assert {(r.patch, r.path): r.change for r in rows} == changes


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(PATH, st.lists(st.tuples(IDENT, st.lists(IDENT, min_size=1,
                                                                     max_size=4)),
                                         min_size=1, max_size=3)),
                min_size=1, max_size=4, unique_by=lambda t: t[0]))
def test_parse_finds_every_file_hunk_and_added_line(files):
    """A diff built by hand: each hunk adds lines to a function; parse must find the file, the
    hunk (its start and header) and each added line at its new line number."""
    out = ["From 0 Mon Sep 17 00:00:00 2001", "Subject: [PATCH 1/1] A change", "", "---"]
    want = {}
    for path, hunks in files:
        out += [f"diff --git a/{path} b/{path}", f"--- a/{path}", f"+++ b/{path}"]
        start = 10
        for func, added in hunks:
            body = [f"+    {a} = 1" for a in added]
            out.append(f"@@ -{start},1 +{start},{1 + len(body)} @@ def {func}():")
            out.append(" def inner():")
            out += body
            want.setdefault(path, []).append(
                (start, [(start + 1 + i, f"    {a} = 1") for i, a in enumerate(added)]))
            start += 100
    out += ["-- ", "2.39.5", ""]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "0001-x.patch"
        p.write_text("\n".join(out))
        patch = workitems.parse(p)
    assert patch.subject == "A change"
    got = {fd.path: [(h.new_start, h.changes()) for h in fd.hunks] for fd in patch.files}
    assert got == want
