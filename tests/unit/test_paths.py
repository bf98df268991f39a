"""Where state goes must not depend on the current directory (the openstack tier's suites run from
their own trees and must find this checkout's stack)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_project_root_is_the_checkout_from_any_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOK_")}
    out = subprocess.run(
        [sys.executable, "-c",
         "from byok.common import paths; print(paths.project_root()); print(paths.stack_dir())"],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        check=True,
    ).stdout.split()
    assert out == [str(ROOT), str(ROOT / ".byok" / "stack")]
