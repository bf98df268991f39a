"""The ``enable_plugin byok`` line of devstack/README.md, fetched the way devstack fetches it.

devstack's ``enable_plugin NAME URL [BRANCH]`` defaults BRANCH to ``master``, and its
``git_clone`` (functions-common) then runs ``git clone --no-checkout URL DEST``, ``git fetch
origin BRANCH`` and ``git checkout FETCH_HEAD``; a re-run skips DEST once it exists. This
repository has ``main`` only, so a line without the branch fails at the fetch and leaves DEST
behind, and the next stack.sh silently runs without the plugin. The test takes the line from
the README, points its URL at this checkout and runs those three git commands (transcribed from
devstack, not devstack's code; devstack itself is not fetched here) with real git.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = REPO / "devstack" / "README.md"
DEVSTACK_DEFAULT_BRANCH = "master"  # functions-common: local branch=${3:-master}


def enable_plugin_line() -> list[str]:
    lines = [ln.strip() for ln in README.read_text().splitlines()
             if re.match(r"\s*enable_plugin\s+byok\s", ln)]
    assert len(lines) == 1, f"devstack/README.md has {len(lines)} 'enable_plugin byok' lines"
    return shlex.split(lines[0])


def devstack_git_clone(url: str, dest: Path, branch: str) -> subprocess.CompletedProcess[str]:
    """What devstack's git_clone does for a branch name, stopping at the first failure."""
    script = (f"set -e; git clone -q --no-checkout {shlex.quote(url)} {shlex.quote(str(dest))}; "
              f"cd {shlex.quote(str(dest))}; git fetch -q origin {shlex.quote(branch)}; "
              "git checkout -q FETCH_HEAD")
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120,
                          check=False)


def test_readme_line_names_the_branch_this_repository_has():
    words = enable_plugin_line()
    assert len(words) == 4, f"enable_plugin byok URL BRANCH, got {words}: without a branch " \
                            f"devstack fetches {DEVSTACK_DEFAULT_BRANCH!r}"
    branch = words[3]
    # A clone (CI's, a user's) may hold the branch as a local head or only as origin/<branch>.
    refs = subprocess.run(["git", "-C", str(REPO), "for-each-ref", "--format=%(refname)",
                           "refs/heads", "refs/remotes"], capture_output=True, text=True,
                          check=True).stdout.split()
    names = {r.split("/", 3)[3] if r.startswith("refs/remotes/") else r.split("/", 2)[2]
             for r in refs if r.count("/") >= 2}
    assert branch in names, f"branch {branch!r} is not in this repository ({sorted(names)})"


def _published(tmp_path: Path, branch: str) -> str:
    """A bare repository standing for the README's URL, holding this checkout's HEAD as
    ``branch`` (CI's clone may be on a detached HEAD)."""
    bare = tmp_path / "published.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    subprocess.run(["git", "-C", str(REPO), "push", "-q", str(bare), f"HEAD:refs/heads/{branch}"],
                   check=True, capture_output=True)
    return bare.as_uri()


def test_readme_line_clones_the_plugin_as_devstack_does(tmp_path: Path):
    branch = enable_plugin_line()[3]
    dest = tmp_path / "opt" / "stack" / "byok"  # GITDIR[byok]=$DEST/byok
    r = devstack_git_clone(_published(tmp_path, branch), dest, branch)
    assert r.returncode == 0, r.stderr
    for f in ("devstack/plugin.sh", "devstack/settings", "pyproject.toml"):
        assert (dest / f).is_file(), f"{f} missing from the clone of {branch}"


def test_without_the_branch_the_clone_fails_and_leaves_the_directory(tmp_path: Path):
    """Why the README names the branch: devstack's default fails here, and the directory it
    leaves makes the next stack.sh skip the clone."""
    dest = tmp_path / "byok"
    r = devstack_git_clone(_published(tmp_path, enable_plugin_line()[3]), dest,
                           DEVSTACK_DEFAULT_BRANCH)
    assert r.returncode != 0 and DEVSTACK_DEFAULT_BRANCH in r.stderr, r.stderr
    assert dest.is_dir() and not (dest / "devstack" / "plugin.sh").exists()
