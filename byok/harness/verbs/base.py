"""What every verb group stands on: the environment, the scratch directory, identities and
the cleanups that run after the experiment (the context provides the state)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from byok.harness.context import Environment
    from byok.harness.registry import Experiment
    from byok.keys.identity import Identity


class VerbBase:
    env: Environment
    exp: Experiment
    scratch: Path
    _cleanups: list[Callable[[], None]]

    def user(self, name: str = "alice") -> Identity:
        """The identity ``name`` (cached for the run: its token is reused)."""
        return self.env.identity(name)

    def on_cleanup(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after the experiment (last registered, first run; errors ignored)."""
        self._cleanups.append(fn)

    def archived_evidence(self, name: str) -> dict[str, Any]:
        """A JSON file archived in the checkout's ``design/evidence/`` (a full enumeration
        too long for an experiment run, e.g. ``byok bench crash-lifecycle``), to cite."""
        import json

        from byok.common import paths
        from byok.common.errors import ExperimentError

        root = paths.project_root()
        path = root / "design" / "evidence" / name if root else None
        if path is None or not path.is_file():
            raise ExperimentError(f"archived evidence {name} not found under design/evidence/ "
                                  "(it ships with the checkout)")
        return dict(json.loads(path.read_text()))

    def lifecycle_crash_evidence(self, name: str) -> dict[str, Any]:
        """The archived ``byok bench crash-lifecycle`` run ``name`` in short: states tried and
        states with a problem (a loss, a wrong byte, a dangling or missing consumer, record and
        disk disagreeing), in total and per operation."""
        doc = self.archived_evidence(name)
        bench = doc.get("crash-lifecycle", doc)
        per_op = {op: sum(v["tried"] for v in variants.values())
                  for op, variants in bench["operations"].items()}
        bad = {op: sum(len(v["problems"]) for v in variants.values())
               for op, variants in bench["operations"].items()}
        out = {"path": f"design/evidence/{name}", "tried": bench["totals"]["tried"],
               "problems": bench["totals"]["problems"], "tried_per_operation": per_op,
               "problems_per_operation": bad,
               "started": doc.get("host", {}).get("started")}
        # The same archive's full run of rotation, re-encryption and header restore (a test
        # that asserts every state: a problem fails the run, so a passed run has none).
        rot = doc.get("rotation-enumeration")
        if rot and rot.get("target_met"):
            out["rotation_tried_per_operation"] = {
                op: sum(v["tried"] for v in variants.values())
                for op, variants in rot["operations"].items()}
            out["rotation_tried"] = rot["totals"]["tried"]
        return out
