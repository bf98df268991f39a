"""The results schema (one JSON document per experiment per run) and host facts.

A record: experiment id, title, hurdle, hypothesis, verdict (``supported`` / ``refuted`` /
``error`` / ``skipped: <reason>``), measurements (name, value, unit, samples), checks (claim,
passed, detail), parameters, host facts (kernel, cryptsetup, os-brick, castellan, barbican,
keystone versions; where dm-crypt ran), start/end time, run id, repeat index.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from byok.common import paths

SCHEMA_VERSION = 1
VERDICTS = ("supported", "refuted", "error")
DM_CRYPT_UNUSED = "not used (cryptsetup on files on the host, no device-mapper)"


@dataclass
class Measurement:
    name: str
    value: float | int | str | None
    unit: str = ""
    samples: list = field(default_factory=list)
    note: str = ""


@dataclass
class Check:
    claim: str
    passed: bool
    detail: str = ""


@dataclass
class ExperimentResult:
    id: str
    title: str
    hurdle: str
    hypothesis: str
    run_id: str
    repeat: int = 0
    verdict: str = "error"
    measurements: list[Measurement] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    parameters: dict = field(default_factory=dict)
    host: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    started: str = ""
    ended: str = ""
    seconds: float = 0.0
    schema: int = SCHEMA_VERSION

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict) -> ExperimentResult:
        doc = dict(doc)
        doc["measurements"] = [Measurement(**m) for m in doc.get("measurements", [])]
        doc["checks"] = [Check(**c) for c in doc.get("checks", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in doc.items() if k in known})

    def measurement(self, name: str) -> Measurement | None:
        for m in self.measurements:
            if m.name == name:
                return m
        return None


def validate(doc: dict) -> list[str]:
    """Problems with a results document (empty list = valid)."""
    problems = []
    for key in ("id", "title", "hurdle", "hypothesis", "run_id", "verdict", "measurements",
                "checks", "parameters", "host", "started", "ended"):
        if key not in doc:
            problems.append(f"missing {key}")
    verdict = doc.get("verdict", "")
    if not (verdict in VERDICTS or str(verdict).startswith("skipped: ")):
        problems.append(f"bad verdict {verdict!r}")
    for m in doc.get("measurements", []):
        if not isinstance(m, dict) or "name" not in m or "value" not in m or "unit" not in m:
            problems.append(f"bad measurement {m!r}")
    for c in doc.get("checks", []):
        if not isinstance(c, dict) or not isinstance(c.get("passed"), bool) or "claim" not in c:
            problems.append(f"bad check {c!r}")
    if verdict == "supported" and not doc.get("checks"):
        problems.append("supported without any check")
    if verdict == "supported" and not all(c.get("passed") for c in doc.get("checks", [])):
        problems.append("supported with a failed check")
    return problems


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


_HOST: dict | None = None


def host_facts() -> dict:
    """Versions and machine facts recorded with every result (computed once per process)."""
    global _HOST
    if _HOST is None:
        from byok.common import proc

        def tool_version(argv: list[str]) -> str | None:
            try:
                return proc.run(argv, timeout=30, check=False).out.strip().splitlines()[0]
            except Exception:
                return None

        _HOST = {
            "kernel": platform.release(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "cryptsetup": tool_version(["cryptsetup", "--version"]),
            "qemu_img": tool_version(["qemu-img", "--version"]),
            **{d: _version(d) for d in ("os-brick", "castellan", "barbican", "keystone",
                                        "python-barbicanclient", "keystoneauth1", "byok")},
        }
    return dict(_HOST)


def dm_crypt_where() -> str:
    """Which guest backend (and kernel) the dm-crypt steps of this run used."""
    from byok.guest import select

    b = select.pick()
    kernel = b.versions().get("kernel", "")
    return f"real dm-crypt in the {b.name} guest" + (f" ({kernel})" if kernel else "")


def environment_facts(env) -> dict:
    """Where the key services were: the embedded stack runs the pip versions recorded above;
    a real cloud (``--cloud``) runs whatever it runs, so those versions are not claimed."""
    if getattr(env, "cloud", None):
        return {"key_services": f"cloud {env.cloud} (Keystone {env.keystone_url})",
                "barbican": "remote, version unknown", "keystone": "remote, version unknown"}
    return {"key_services": "embedded stack on 127.0.0.1 (byok stack)"}


def write(result: ExperimentResult, out_dir: Path) -> Path:
    suffix = f"-r{result.repeat}" if result.repeat else ""
    path = out_dir / f"{result.id}{suffix}.json"
    paths.write_private(path, json.dumps(result.to_json(), indent=2, default=str) + "\n")
    return path


def load_run(run_dir: Path) -> list[ExperimentResult]:
    out = []
    for f in sorted(run_dir.glob("E*.json")):
        out.append(ExperimentResult.from_json(json.loads(f.read_text())))
    from byok.harness.registry import sort_key

    return sorted(out, key=lambda r: (sort_key(r.id), r.repeat))
