"""Why a guest did not come up, in one line a user can act on.

A failing guest prints a page of stack trace; what the user needs is the cause ("UML 6.1 panics
on this CPU: AMX") and the fix ("use uml-newer"). :func:`classify` reads the console text and the
host's facts and says both; it is a pure function so every known failure can be tested with
canned console output.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

AT_MINSIGSTKSZ = 51


@dataclass(frozen=True)
class HostFacts:
    """What decides which guest kernels work here."""

    cpu_flags: frozenset[str] = frozenset()
    min_sigstack: int = 0          # AT_MINSIGSTKSZ: grows with the XSAVE area (11952 with AMX)
    kvm_modules: tuple[str, ...] = ()
    kernel: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.cpu_flags

    @property
    def hw_virt(self) -> bool:
        return bool({"vmx", "svm"} & self.cpu_flags)

    def kvm_note(self) -> str:
        bits = []
        if not self.hw_virt:
            bits.append("no vmx/svm CPU flag")
        if "kvm_pvm" in self.kvm_modules:
            bits.append("/dev/kvm is kvm_pvm, software nested virtualisation")
        return "; ".join(bits)


def host_facts() -> HostFacts:
    from byok.guest.qemu import cpu_flags, kvm_modules

    try:
        minsig = int(ctypes.CDLL(None).getauxval(AT_MINSIGSTKSZ))
    except (OSError, AttributeError):
        minsig = 0
    return HostFacts(frozenset(cpu_flags()), minsig, tuple(kvm_modules()), os.uname().release)


@dataclass(frozen=True)
class Diagnosis:
    reason: str
    fix: str | None = None

    def line(self) -> str:
        return self.reason + (f" — fix: {self.fix}" if self.fix else "")


def _tail(console: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in console.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[:300]


def classify(backend: str, console: str, returncode: int | None, *, facts: HostFacts,
             booted: bool = False, timed_out: float | None = None) -> Diagnosis:
    """The cause of a failed boot or run of ``backend``, from its console and the host."""
    text = console
    if "ptrace set fp regs failed" in text or (
            backend.startswith("uml") and not booted and "Attempted to kill init" in text):
        if facts.amx or facts.min_sigstack > 4096:
            cpu = (f"AMX, XSAVE {facts.min_sigstack} B" if facts.amx
                   else f"XSAVE {facts.min_sigstack} B")
            reason = f"panics on this CPU ({cpu} > what this UML kernel handles)"
        else:
            reason = "panics at boot restoring FPU registers (ptrace set fp regs failed)"
        fix = "use uml-newer" if backend == "uml" else "use qemu-tcg"
        return Diagnosis(reason, fix)
    if "GLIBC_" in text and "not found" in text:
        return Diagnosis("the UML binary needs a newer glibc than the one it was run with",
                         "byok guest prepare --refresh")
    if "Too few physical memory" in text:
        return Diagnosis("UML could not map its memory (started through the wrong loader?)",
                         "byok guest prepare --refresh")
    if "KVM internal error" in text:
        note = facts.kvm_note()
        return Diagnosis("KVM cannot run a guest here (KVM internal error: emulation failure"
                         + (f"; {note})" if note else ")"), "use qemu-tcg or uml")
    m = re.search(r"failed to set MSR (\S+)", text)
    if m:
        note = facts.kvm_note()
        return Diagnosis(f"KVM rejects the guest CPU state (failed to set MSR {m.group(1)}"
                         + (f"; {note})" if note else ")"), "use qemu-tcg or uml")
    if re.search(r"(Could not access KVM kernel module|failed to initialize kvm|"
                 r"KVM not supported)", text, re.I):
        return Diagnosis(f"cannot use KVM: {_tail(text, 1)}", "use qemu-tcg or uml")
    if "BYOK-ROOT-FAILED" in text:
        return Diagnosis("the guest could not mount the host's root over 9p",
                         "check that qemu-system-x86 has 9p (virtfs) support")
    failed = _insmod_failures(text) & {"dm_mod", "dm-mod", "dm_crypt", "dm-crypt"}
    if failed:
        return Diagnosis(f"the guest kernel could not load {sorted(failed)[0]}",
                         "byok guest prepare --refresh")
    m = re.search(r"Kernel panic - not syncing: ([^\n]+)", text)
    if m:
        return Diagnosis(f"the guest kernel panicked: {m.group(1).strip()[:160]}")
    if timed_out is not None and not booted:
        where = f" (last output: {_tail(text, 1)})" if text.strip() else " (no output at all)"
        hint = facts.kvm_note() if backend == "qemu-kvm" else ""
        return Diagnosis(f"did not boot within {timed_out:g} s{where}"
                         + (f"; {hint}" if hint else ""),
                         "use another backend (byok doctor)")
    if timed_out is not None:
        return Diagnosis(f"booted but the job did not finish within {timed_out:g} s")
    status = f"exit status {returncode}" if returncode is not None else "no exit status"
    return Diagnosis(f"stopped ({status}) before the agent answered: {_tail(text) or 'no output'}")


def _insmod_failures(text: str) -> set[str]:
    return {Path(ln.split("BYOK-INSMOD-FAILED", 1)[1].strip()).name.split(".")[0]
            for ln in text.splitlines() if "BYOK-INSMOD-FAILED" in ln}
