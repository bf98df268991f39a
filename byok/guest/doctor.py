"""``byok doctor``: every guest backend, its verdict on this host and why, in one line each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from byok.common import proc
from byok.common.errors import ByokError
from byok.guest import diagnose, select


def _cryptsetup_version() -> str:
    try:
        r = proc.run(["cryptsetup", "--version"], check=False, timeout=20)
    except ByokError:
        return "not installed"
    return r.out.strip().removeprefix("cryptsetup ").split()[0] if r.out else "?"


def versions(verdicts: list[select.Verdict], facts: diagnose.HostFacts) -> dict[str, str]:
    """cryptsetup, QEMU, and the kernel each backend boots."""
    from byok.guest.qemu import qemu_version

    out = {"cryptsetup": _cryptsetup_version(), "qemu": qemu_version(),
           "host kernel": facts.kernel}
    by = {v.backend: v.versions or {} for v in verdicts}
    for name, label in (("uml", "uml"), ("uml-newer", "uml-newer"), ("qemu-tcg", "qemu guests")):
        kernel = by.get(name, {}).get("kernel")
        if kernel:
            pkg = by[name].get("package")
            out[label] = kernel + (f" ({pkg})" if pkg and pkg not in kernel else "")
    return out


def report(*, refresh: bool = False, only: list[str] | None = None,
           progress: Callable[[str], None] | None = None) -> dict:
    """Probe (or read the cached verdicts of) every backend (or ``only`` these); say which one
    ``auto`` picks."""
    verdicts = select.verdicts(refresh=refresh, only=only, progress=progress)
    pick = next((v.backend for v in verdicts if v.usable), None) if not only else None
    facts = diagnose.host_facts()
    forced = select.choice()
    return {
        "choice": forced,
        "only": only,
        "auto_pick": pick,
        "backends": [asdict(v) | {"line": v.line()} for v in verdicts],
        "versions": versions(verdicts, facts),
        "host": {"amx": facts.amx, "xsave_sigstack_bytes": facts.min_sigstack,
                 "hw_virt": facts.hw_virt, "kvm_modules": list(facts.kvm_modules)},
    }


def lines(doc: dict) -> list[str]:
    """The human form: a header, a line per backend, versions, host facts."""
    pick = doc["auto_pick"] or "none (no backend works here)"
    head = f"guest backends on this host (BYOK_GUEST={doc['choice']}; auto picks: {pick})"
    if doc.get("only"):
        head = f"guest backends on this host (only {', '.join(doc['only'])})"
    out = [head]
    for b in doc["backends"]:
        out.append("  " + b["line"])
    out.append("versions: " + " · ".join(f"{k}: {v}" for k, v in doc["versions"].items()))
    h = doc["host"]
    out.append(f"host: AMX {'yes' if h['amx'] else 'no'}, XSAVE signal stack "
               f"{h['xsave_sigstack_bytes']} B, vmx/svm {'yes' if h['hw_virt'] else 'no'}, "
               f"kvm modules {', '.join(h['kvm_modules']) or 'none'}")
    return out
