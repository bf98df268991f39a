"""The guest layer's decisions with canned outcomes: which backend is picked, what a failure is
called, how module orders, package indexes and kernels are read. No guest boots here; the guest
tier boots every backend this host really has."""

from __future__ import annotations

import json
import lzma
import os
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byok.common.errors import GuestError, UsageError
from byok.guest import debian, kernel, modules, select
from byok.guest.diagnose import HostFacts, classify
from byok.guest.job import channel, read_channel

AMX = HostFacts(frozenset({"fpu", "avx512f", "amx_tile", "amx_bf16"}), 11952, ("kvm",), "6.18")
PLAIN = HostFacts(frozenset({"fpu", "avx2"}), 1776, ("kvm", "kvm_pvm"), "6.18")

UML_AMX_PANIC = """\
Linux version 6.1.176 (debian-kernel@lists.debian.org)
userspace - ptrace set fp regs failed, errno = 14
Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b
CPU: 0 PID: 1 Comm: sh Not tainted 6.1.176 #1
Stack:
 6006b1d4 60041e4f 00000000 6004ba98
"""
KVM_INTERNAL = """\
KVM internal error. Suberror: 1
extra data[0]: 0x0000000000000000
emulation failure
RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000
"""
KVM_MSR = ("qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n"
           "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion "
           "`ret == cpu->kvm_msr_buf->nmsrs' failed.\n")


# --- diagnosis of failures -------------------------------------------------------------------


def test_uml_panic_on_amx_names_the_cpu_and_the_fix():
    d = classify("uml", UML_AMX_PANIC, 0, facts=AMX)
    assert d.reason == "panics on this CPU (AMX, XSAVE 11952 B > what this UML kernel handles)"
    assert d.fix == "use uml-newer"
    assert "Stack" not in d.line()  # one line, not the stack trace


def test_newer_uml_panicking_too_points_to_qemu():
    assert classify("uml-newer", UML_AMX_PANIC, 0, facts=AMX).fix == "use qemu-tcg"


def test_kvm_internal_error_is_named_with_the_host_facts():
    d = classify("qemu-kvm", KVM_INTERNAL, 1, facts=PLAIN)
    assert d.reason.startswith("KVM cannot run a guest here (KVM internal error")
    assert "no vmx/svm CPU flag" in d.reason and "kvm_pvm" in d.reason
    assert d.fix == "use qemu-tcg or uml"


def test_kvm_rejected_msr():
    d = classify("qemu-kvm", KVM_MSR, 134, facts=PLAIN)
    assert d.reason.startswith("KVM rejects the guest CPU state (failed to set MSR 0x10a")


def test_hung_guest_is_a_boot_timeout_not_a_stack_trace():
    d = classify("qemu-kvm", "", None, facts=PLAIN, booted=False, timed_out=45)
    assert d.reason.startswith("did not boot within 45 s (no output at all)")
    d = classify("qemu-tcg", "Booting\n", None, facts=PLAIN, booted=True, timed_out=300)
    assert d.reason == "booted but the job did not finish within 300 s"


def test_missing_dm_module_and_9p_root():
    d = classify("qemu-tcg", "BYOK-INSMOD-FAILED dm-crypt.ko\n", 0, facts=PLAIN)
    assert d.reason == "the guest kernel could not load dm-crypt"
    assert "9p" in classify("qemu-tcg", "BYOK-ROOT-FAILED x\n", 0, facts=PLAIN).reason


def test_unknown_failure_quotes_the_last_lines():
    d = classify("uml", "a\nb\nsomething odd\n", 3, facts=PLAIN)
    assert d.reason == "stopped (exit status 3) before the agent answered: a | b | something odd"


def test_missing_packages_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing installed on this PATH
    for name, package in [("uml", "user-mode-linux"), ("qemu-tcg", "qemu-system-x86"),
                          ("qemu-kvm", "qemu-system-x86")]:
        reason = select.backend(name).unavailable()
        assert reason and f"apt-get install -y {package}" in reason, (name, reason)


# --- picking a backend from (canned) verdicts --------------------------------------------------


@pytest.fixture
def canned(monkeypatch, tmp_path):
    """A verdict cache holding canned verdicts for this host's key (no probe boots)."""
    monkeypatch.setenv("BYOK_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("BYOK_GUEST", raising=False)
    select._picked.clear()
    key = select.host_key()

    def write(usable: set[str]) -> None:
        doc = {key: {n: {"backend": n, "usable": n in usable,
                         "reason": "canned ok" if n in usable else f"canned failure of {n}",
                         "fix": None} for n in select.ORDER}}
        (tmp_path / "guest").mkdir(exist_ok=True)
        (tmp_path / "guest" / "verdicts.json").write_text(json.dumps(doc))
        select._picked.clear()

    yield write
    select._picked.clear()


def test_auto_takes_the_fastest_usable_backend(canned):
    canned({"uml-newer", "qemu-tcg"})  # e.g. an AMX host with broken nested KVM
    assert select.pick().name == "uml-newer"
    canned({"uml", "uml-newer", "qemu-tcg"})
    assert select.pick().name == "uml"
    canned({"host", "qemu-tcg"})
    assert select.pick().name == "host"


def test_no_usable_backend_says_why_for_each(canned):
    canned(set())
    with pytest.raises(GuestError) as e:
        select.pick()
    for n in select.ORDER:
        assert f"canned failure of {n}" in str(e.value)


def test_forced_backend_is_used_without_probe_and_unknown_is_usage(canned, monkeypatch, tmp_path):
    canned(set())  # every verdict negative: forcing ignores verdicts
    monkeypatch.setenv("BYOK_GUEST", "qemu-tcg")
    assert select.pick().name == "qemu-tcg"
    select._picked.clear()
    with pytest.raises(UsageError):
        select.pick("qemu-arm")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GuestError, match=r"forced by BYOK_GUEST.*user-mode-linux"):
        select.pick("uml")


def test_verdicts_are_keyed_by_cpu():
    assert select.host_key(AMX) != select.host_key(PLAIN)
    assert select.host_key(AMX) == select.host_key(AMX)


# --- module orders -----------------------------------------------------------------------------


@given(st.dictionaries(st.from_regex(r"kernel/[a-z]{1,6}/[a-z_]{1,8}\.ko", fullmatch=True),
                       st.lists(st.from_regex(r"kernel/[a-z]{1,6}/[a-z_]{1,8}\.ko",
                                              fullmatch=True), max_size=4), max_size=12))
def test_modules_dep_round_trip(deps):
    text = "".join(f"{k}: {' '.join(v)}\n" for k, v in deps.items())
    assert modules.parse_modules_dep(text) == deps


@given(st.text(min_size=1).filter(lambda t: ":" not in t and t.strip() and "\n" not in t
                                  and "\r" not in t and not t.startswith("#")))
def test_modules_dep_without_colon_is_refused(line):
    with pytest.raises(GuestError):
        modules.parse_modules_dep(line + "\n")


@given(st.lists(st.tuples(st.from_regex(r"[a-z]{1,8}", fullmatch=True),
                          st.text(st.characters(blacklist_characters="\0",
                                                blacklist_categories=("Cs",)), max_size=20)),
                max_size=10))
def test_modinfo_round_trip(pairs):
    blob = b"\0".join(f"{k}={v}".encode() for k, v in pairs) + b"\0"
    info = modules.parse_modinfo(blob)
    for k, v in pairs:
        assert v in info[k]


def _tree(tmp_path: Path, deps: dict[str, list[str]],
          builtin: tuple[str, ...] = ()) -> modules.ModuleTree:
    for rel in deps:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "modules.dep").write_text(
        "".join(f"{k}: {' '.join(v)}\n" for k, v in deps.items()))
    (tmp_path / "modules.builtin").write_text("".join(f"{b}\n" for b in builtin))
    return modules.ModuleTree(tmp_path)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 9).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=15))))
def test_load_order_puts_every_module_after_its_dependencies(tmp_path_factory, dag):
    n, edges = dag
    names = [f"m{i}" for i in range(n)]
    deps = {f"kernel/x/{names[i]}.ko": sorted({f"kernel/x/{names[j]}.ko" for a, j in edges
                                               if a == i and j < i}) for i in range(n)}
    tree = _tree(tmp_path_factory.mktemp("mods"), deps)
    order = tree.load_order(names, required=())
    assert sorted(order) == sorted(deps)
    for mod, ds in deps.items():
        for d in ds:
            assert order.index(d) < order.index(mod)


def test_load_order_skips_builtins_and_refuses_missing_required(tmp_path):
    tree = _tree(tmp_path, {"kernel/md/dm-crypt.ko": ["kernel/md/dm-mod.ko"],
                            "kernel/md/dm-mod.ko": []}, builtin=("kernel/crypto/cbc.ko",))
    assert tree.load_order(["cbc", "xts", "dm_crypt"]) == ["kernel/md/dm-mod.ko",
                                                           "kernel/md/dm-crypt.ko"]
    with pytest.raises(GuestError, match="no loop module"):
        tree.load_order(["loop"], required={"loop"})


def test_modinfo_agrees_with_debian_modules_dep():
    """Our .modinfo reader (used for Debian's kernel, which ships no modules.dep) against the
    modules.dep that Debian's UML package ships, built by kmod's depmod."""
    root = sorted(Path("/usr/lib/uml/modules").iterdir())[-1]
    dep = modules.parse_modules_dep((root / "modules.dep").read_text())
    checked = 0
    for rel in ("kernel/drivers/md/dm-crypt.ko", "kernel/drivers/md/dm-log-writes.ko",
                "kernel/crypto/xts.ko", "kernel/crypto/algif_skcipher.ko"):
        direct = {modules.normalize(d) for v in modules.modinfo_of(root / rel).get("depends", [])
                  for d in v.split(",") if d}
        assert direct <= {modules.normalize(d) for d in dep[rel]}, rel
        assert bool(direct) == bool(dep[rel]), rel
        checked += 1
    assert checked == 4


# --- Debian indexes, kernels, channels ---------------------------------------------------------

SHOW = """\
Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)
SHA256: 9f2c

Package: linux-image-amd64
Version: 6.1.176-1
Depends: linux-image-6.1.0-50-amd64 (= 6.1.176-1) | linux-image-x
SHA256: 11aa
"""


def test_apt_cache_show_is_read_with_python_debian():
    infos = debian.parse_show(SHOW)
    assert [(i.version, i.depends, i.sha256) for i in infos] == [
        ("6.1.192-3", ("linux-image-6.1.0-57-amd64",), "9f2c"),
        ("6.1.176-1", ("linux-image-6.1.0-50-amd64",), "11aa"),
    ]


@given(st.lists(st.tuples(st.from_regex(r"[a-z][a-z0-9+.-]{1,12}", fullmatch=True),
                          st.from_regex(r"[0-9]{1,3}\.[0-9]{1,3}-[0-9]{1,2}", fullmatch=True)),
                min_size=1, max_size=5))
def test_apt_cache_show_round_trip(pkgs):
    text = "\n".join(f"Package: {n}\nVersion: {v}\nSHA256: {'ab' * 4}\n" for n, v in pkgs)
    assert [(i.name, i.version) for i in debian.parse_show(text)] == pkgs


def test_codename_from_os_release():
    assert debian.host_codename('ID=debian\nVERSION_CODENAME=trixie\n') == "trixie"
    assert debian.host_codename('VERSION_CODENAME="bookworm"\n') == "bookworm"
    assert debian.host_codename("") == "bookworm"


@pytest.mark.parametrize("compress", [
    lambda b: lzma.compress(b, format=lzma.FORMAT_XZ),
    lambda b: (lambda c: c.compress(b) + c.flush())(zlib.compressobj(wbits=16 + zlib.MAX_WBITS)),
])
def test_vmlinux_is_found_inside_a_bzimage(compress):
    elf = b"\x7fELF" + os.urandom(5000)
    # A decoy signature before the real stream must not confuse it.
    bz = b"MZ" + os.urandom(300) + b"\xfd7zXZ\x00garbage" + compress(elf) + os.urandom(64)
    assert kernel.extract_vmlinux(bz) == elf


def test_bzimage_without_a_kernel_is_refused():
    with pytest.raises(GuestError, match="compressed ELF kernel"):
        kernel.extract_vmlinux(b"MZ" + lzma.compress(b"not an elf", format=lzma.FORMAT_XZ))


@given(st.binary(max_size=10000))
def test_channel_round_trip(data):
    fd = channel(data)
    try:
        assert read_channel(fd) == data
    finally:
        os.close(fd)


def test_channel_with_a_garbage_length_reads_as_empty():
    fd = channel(b"x")
    try:
        os.pwrite(fd, b"\xff" * 8, 0)
        assert read_channel(fd) == b""
    finally:
        os.close(fd)


def test_cli_lists_the_same_backends_as_the_probe():
    from byok.cli import guest

    assert guest.BACKEND_NAMES == select.ORDER


def test_host_backend_refuses_a_device_mapper_node_without_a_driver(tmp_path):
    from byok.guest.host import device_mapper_problem

    assert "no " in device_mapper_problem(str(tmp_path / "absent"))
    assert device_mapper_problem("/dev/null") is None  # an openable node
    (tmp_path / "dir").mkdir()
    assert "the kernel answers" in device_mapper_problem(str(tmp_path / "dir"))
