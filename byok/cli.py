"""The ``byok`` command. Thin: it parses arguments, calls the modules, prints results.

Exit codes (also in README): 0 ok, 2 usage, 3 invalid key ref, 4 key not found, 5 access denied
or wrong key, 6 key service unavailable, 7 key type mismatch, 8 not LUKS / header corrupt,
9 no device-mapper, 10 guest error, 11 stack error, 12 tool missing, 13 command failed,
14 volume error, 15 recovery error, 16 experiment error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich_argparse import RawDescriptionRichHelpFormatter

from byok.errors import ByokError, UsageError

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

Handler = Callable[[argparse.Namespace], int | None]


def _parser() -> argparse.ArgumentParser:
    fmt = RawDescriptionRichHelpFormatter
    p = argparse.ArgumentParser(
        prog="byok",
        formatter_class=fmt,
        description=(
            "User-supplied-key volume encryption for OpenStack Cinder: an attach-path hook,\n"
            "a castellan backend and a research harness, on real Keystone, Barbican,\n"
            "cryptsetup, os-brick and dm-crypt.\n\n"
            "Start here:\n"
            "  byok stack up                  real Keystone + Barbican on 127.0.0.1\n"
            "  byok experiments list          what the research harness measures\n"
            "  byok experiments run           run them all; then: byok report RUN_DIR"
        ),
    )
    p.add_argument("--debug", action="store_true", help="log every command byok runs")
    sub = p.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True
    for register in _REGISTRARS:
        register(sub, fmt)
    return p


# --- stack -----------------------------------------------------------------------------------


def _stack_parser(sub, fmt) -> None:
    sp = sub.add_parser(
        "stack",
        formatter_class=fmt,
        help="the embedded real Keystone + Barbican (up, down, status, env)",
        description=(
            "Run a real Keystone (sqlite, fernet) and a real Barbican (sqlite, simple_crypto,\n"
            "keystonemiddleware) on 127.0.0.1, all state in one directory.\n\n"
            "Seeded identities (clouds in clouds.yaml): byok-alice and byok-carol in\n"
            "alice-project, byok-bob in bob-project, service users byok-cinder and byok-nova,\n"
            "and byok-admin. Passwords stay in the state dir (0600) and are never printed."
        ),
    )
    sp.add_argument(
        "--state-dir", type=Path, default=None,
        help="stack state directory (default: .byok/stack in the checkout, or $BYOK_STACK_DIR)",
    )
    ss = sp.add_subparsers(dest="action", metavar="ACTION")
    ss.required = True
    up = ss.add_parser("up", formatter_class=fmt, help="bootstrap once, start, seed (idempotent)")
    up.add_argument("--keystone-port", type=int, help="Keystone port (default 15000)")
    up.add_argument("--barbican-port", type=int, help="Barbican port (default 19311)")
    up.add_argument("--reset", action="store_true", help="delete this stack's state first")
    up.add_argument("--json", action="store_true", help="print status as JSON")
    up.set_defaults(func=_stack_up)
    down = ss.add_parser("down", formatter_class=fmt, help="stop the servers this stack started")
    down.set_defaults(func=_stack_down)
    st = ss.add_parser("status", formatter_class=fmt, help="health, ports, pids, start-up time")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_stack_status)
    env = ss.add_parser(
        "env", formatter_class=fmt,
        help="print 'export OS_CLIENT_CONFIG_FILE=...' for the stack's clouds.yaml",
    )
    env.set_defaults(func=_stack_env)


def _stack(args: argparse.Namespace):
    from byok.stack.manager import Stack

    return Stack.at(
        args.state_dir,
        keystone_port=getattr(args, "keystone_port", None),
        barbican_port=getattr(args, "barbican_port", None),
    )


def _stack_up(args: argparse.Namespace) -> int:
    stack = _stack(args)
    status = stack.up(reset=args.reset, progress=lambda m: err.print(f"[dim]…[/] {m}"))
    _print_status(status, as_json=args.json)
    return 0 if status["healthy"] else 11


def _stack_down(args: argparse.Namespace) -> int:
    stopped = _stack(args).down()
    for name, was in stopped.items():
        out.print(f"{name}: {'stopped' if was else 'not running'}")
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    status = _stack(args).status()
    _print_status(status, as_json=args.json)
    return 0 if status["healthy"] else 1


def _stack_env(args: argparse.Namespace) -> int:
    stack = _stack(args)
    if not stack.cfg.settings_file.exists():
        raise UsageError("no stack here yet", hint="run: byok stack up")
    path = stack.write_clouds_yaml()
    out.print(f"export OS_CLIENT_CONFIG_FILE={path}")
    err.print("[dim]# clouds: " + ", ".join(stack.status()["clouds"]) + "[/]")
    return 0


def _print_status(status: dict, *, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(status))
        return
    from rich.table import Table

    t = Table(title=f"byok stack ({status['state_dir']})")
    for col in ("service", "url", "pid", "healthy", "start-up s"):
        t.add_column(col)
    for name, s in status["services"].items():
        t.add_row(
            name, s["url"], str(s["pid"] or "-"),
            "[green]yes[/]" if s["healthy"] else "[red]no[/]",
            f"{s['startup_seconds']:.2f}" if s["startup_seconds"] else "-",
        )
    out.print(t)
    if status.get("clouds_yaml"):
        out.print(f"clouds.yaml: {status['clouds_yaml']}  (byok stack env)")


# --- identities (shared by every command that talks to a cloud) -----------------------------


def add_identity_args(p: argparse.ArgumentParser, *, default_user: str | None = None) -> None:
    g = p.add_mutually_exclusive_group(required=default_user is None)
    g.add_argument(
        "--as", dest="as_user", metavar="USER", default=default_user,
        help="a seeded user of the embedded stack (alice, carol, bob, cinder, nova, admin)",
    )
    g.add_argument(
        "--cloud", metavar="NAME",
        help="a cloud from clouds.yaml instead (devstack, production: OS_CLIENT_CONFIG_FILE)",
    )


def identity_from_args(args: argparse.Namespace):
    from byok.identity import Identity

    if getattr(args, "cloud", None):
        return Identity.from_cloud(args.cloud)
    from byok.stack.manager import Stack

    stack = Stack.at(getattr(args, "state_dir", None))
    if not stack.cfg.clouds_yaml.exists():
        raise UsageError("the embedded stack has no clouds.yaml yet", hint="run: byok stack up")
    return Identity.from_cloud(stack.cloud_name(args.as_user), clouds_yaml=stack.cfg.clouds_yaml)


# --- key ---------------------------------------------------------------------------------------


def _key_parser(sub, fmt) -> None:
    kp = sub.add_parser(
        "key", formatter_class=fmt, help="store, inspect, grant and revoke user keys in Barbican",
        description=(
            "Manage the user's own volume keys in Barbican. Key material is read from a file or\n"
            "generated, sent to Barbican, and never printed: 'show' prints a fingerprint.\n\n"
            "Examples:\n"
            "  byok key store --as alice --generate --bits 512\n"
            "  byok key grant REF --to cinder --as alice --private\n"
            "  byok key show REF --as alice"
        ),
    )
    ks = kp.add_subparsers(dest="action", metavar="ACTION")
    ks.required = True
    st = ks.add_parser("store", formatter_class=fmt, help="store a key, print its ref")
    add_identity_args(st)
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", type=Path, help="raw key bytes (or passphrase text) from a file")
    src.add_argument("--generate", action="store_true", help="generate random key material")
    st.add_argument("--passphrase", action="store_true",
                    help="store a passphrase secret instead of a symmetric AES key")
    st.add_argument("--bits", type=int, choices=(256, 512), default=512,
                    help="AES key size (512 = AES-256-XTS, the default)")
    st.add_argument("--name", default="byok-volume-key", help="secret name in Barbican")
    st.set_defaults(func=_key_store)
    sh = ks.add_parser("show", formatter_class=fmt,
                       help="type, size, owner, consumers, fingerprint")
    sh.add_argument("ref", metavar="REF", help="secret href or UUID")
    add_identity_args(sh)
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(func=_key_show)
    for name, helptext in (("grant", "let a service user read this key (Barbican ACL)"),
                           ("revoke", "remove a user from the key's ACL")):
        gp = ks.add_parser(name, formatter_class=fmt, help=helptext)
        gp.add_argument("ref", metavar="REF", help="secret href or UUID")
        gp.add_argument("--to" if name == "grant" else "--from", dest="target", required=True,
                        metavar="USER",
                        help="user name (embedded stack) or Keystone user id")
        add_identity_args(gp)
        if name == "grant":
            gp.add_argument("--private", action="store_true",
                            help="also turn project access off (only you + ACL users)")
        gp.set_defaults(func=_key_acl, acl_action=name)
    dl = ks.add_parser("delete", formatter_class=fmt, help="delete the key (refused while in use)")
    dl.add_argument("ref", metavar="REF")
    add_identity_args(dl)
    dl.add_argument("--force", action="store_true", help="delete even if volumes consume it")
    dl.set_defaults(func=_key_delete)


def _key_store(args: argparse.Namespace) -> int:
    import os
    import secrets as pysecrets

    from byok.barbican_api import BarbicanAPI
    from byok.keys import Resolver
    from byok.sensitive import Sensitive

    ident = identity_from_args(args)
    if args.generate:
        raw = (pysecrets.token_urlsafe(32).encode() if args.passphrase
               else os.urandom(args.bits // 8))
    else:
        raw = args.file.read_bytes()
    if not args.passphrase and len(raw) * 8 != args.bits:
        raise UsageError(
            f"{args.file} holds {len(raw)} bytes; a {args.bits}-bit key is {args.bits // 8} bytes",
            hint="use --bits to match, or --passphrase for text",
        )
    api: BarbicanAPI = Resolver(ident).api
    if args.passphrase:
        ref = api.store(Sensitive(raw), secret_type="passphrase", name=args.name)
    else:
        ref = api.store(Sensitive(raw), secret_type="symmetric", name=args.name,
                        algorithm="aes", bit_length=args.bits, mode="xts")
    out.print(ref.href)
    return 0


def _key_show(args: argparse.Namespace) -> int:
    from byok import guard
    from byok.keys import Resolver

    ident = identity_from_args(args)
    r = Resolver(ident)
    ref = r.parse(args.ref)
    info = r.info(ref, validate=False)
    desc = info.describe()
    owned = guard.owned_by_callers_project(ref, ident)
    desc["owned_by_your_project"] = owned
    # Barbican never names a secret's project to outsiders; an ACL grantee learns only "not mine".
    desc["owner_project"] = (
        f"{ident.auth_args.get('project_name') or ident.project_id()} ({ident.project_id()})"
        if owned else "another project (Barbican does not say which)"
    )
    try:
        desc["fingerprint"] = r.resolve(ref).payload.fingerprint()
        desc["usable_as_volume_key"] = True
    except ByokError as e:
        desc["usable_as_volume_key"] = False
        desc["problem"] = e.message
    if args.json:
        out.print_json(json.dumps(desc))
    else:
        for k, v in desc.items():
            out.print(f"[bold]{k:>22}[/]  {v}")
    return 0


def _user_id(args: argparse.Namespace, name: str) -> str:
    import re

    if re.fullmatch(r"[0-9a-f]{32}", name):
        return name
    from byok.stack.manager import Stack

    ids = Stack.at(getattr(args, "state_dir", None)).ids()
    if f"user:{name}" not in ids:
        raise UsageError(f"unknown user {name!r}", hint="give the Keystone user id instead")
    return ids[f"user:{name}"]


def _key_acl(args: argparse.Namespace) -> int:
    from byok.keys import Resolver

    r = Resolver(identity_from_args(args))
    ref = r.parse(args.ref)
    acl = r.api.acl(ref).get("read", {})
    users = list(acl.get("users", []))
    project_access = bool(acl.get("project-access", True))
    target = _user_id(args, args.target)
    if args.acl_action == "grant":
        users = sorted({*users, target})
        project_access = project_access and not args.private
    else:
        users = [u for u in users if u != target]
    r.api.set_acl(ref, users=users, project_access=project_access)
    out.print(f"{args.acl_action}: read ACL of {ref.secret_id} is now users={users} "
              f"project-access={project_access}")
    return 0


def _key_delete(args: argparse.Namespace) -> int:
    from byok.keys import Resolver

    r = Resolver(identity_from_args(args))
    ref = r.parse(args.ref)
    r.api.delete(ref, force=args.force)
    out.print(f"deleted {ref.secret_id}")
    return 0


# --- bench -------------------------------------------------------------------------------------

BENCHES = ("resolve", "attach", "parallel", "recover", "rekey", "crash", "suite")


def _bench_parser(sub, fmt) -> None:
    bp = sub.add_parser(
        "bench", formatter_class=fmt, help="benchmarks: side-by-side ratios as JSON",
        description=(
            "Each benchmark measures two things interleaved in one run and reports p50/p95,\n"
            "the ratio and its target. Runs on the embedded stack (started and stopped if\n"
            "needed) or on --cloud."
        ),
    )
    bp.add_argument("which", choices=(*BENCHES, "all"),
                    help="which benchmark ('all' runs every one, the suite last)")
    bp.add_argument("--skip-suite", action="store_true",
                    help="with 'all': leave out the full experiment run (about 5 minutes)")
    bp.add_argument("--n", type=int, default=30, help="samples per side (default 30)")
    bp.add_argument("--out", type=Path, help="write the JSON here as well as to stdout")
    add_identity_args(bp, default_user="alice")
    bp.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    import os
    import platform
    import time

    from byok.bench import attach, crash, parallel, recover, rekey, resolve, suite
    from byok.stack.manager import Stack

    results: dict = {"host": {"kernel": platform.release(), "cpus": os.cpu_count(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    wanted = BENCHES if args.which == "all" else (args.which,)
    if args.which == "all" and args.skip_suite:
        wanted = tuple(b for b in wanted if b != "suite")
    with contextlib.ExitStack() as es:
        stack = None
        if args.cloud:
            ident = identity_from_args(args)
        else:
            stack = es.enter_context(Stack.at().running(progress=lambda m: err.print(f"… {m}")))
            ident = stack.identity(args.as_user)
        jobs = {
            "resolve": lambda: resolve.run(ident, n=args.n),
            "attach": lambda: attach.run(ident, n=max(5, args.n // 3)),
            "parallel": parallel.run,
            "recover": recover.run,
            "rekey": rekey.run,
            "crash": crash.run,
            "suite": lambda: suite.run(stack) if stack else {"skipped": "needs the embedded stack"},
        }
        for name in wanted:
            err.print(f"… bench {name}")
            t0 = time.perf_counter()
            results[name] = jobs[name]()
            results[name]["bench_seconds"] = round(time.perf_counter() - t0, 1)
            if "target" in results[name]:
                err.print(f"  {name}: target {results[name]['target']}: "
                          f"{'met' if results[name].get('target_met') else 'NOT met'}")
    text = json.dumps(results, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


# --- attach / detach ---------------------------------------------------------------------------


def _attach_parser(sub, fmt) -> None:
    ap = sub.add_parser(
        "attach", formatter_class=fmt,
        help="unlock a volume with a user's key through os-brick on real dm-crypt (UML guest)",
        description=(
            "Resolve the user's key, check the volume (never auto-format), and attach it with\n"
            "os-brick's LUKS encryptor inside a User-Mode Linux guest with real dm-crypt.\n"
            "Without --hold the session is: attach, optional --write/--read, detach.\n"
            "With --hold the mapping stays open until 'byok detach VOLUME' (or Ctrl-C).\n\n"
            "Examples:\n"
            "  truncate -s 64M vol.img\n"
            "  byok attach vol.img --key-ref REF --as alice --new --write 7:4M\n"
            "  byok attach vol.img --key-ref REF --as alice --read 4M\n"
            "  byok attach vol.img --key-ref OTHER --as alice      # exit 5: wrong key"
        ),
    )
    ap.add_argument("volume", type=Path, help="a pool volume id or a volume image file")
    ap.add_argument("--key-ref", help="the user's key (default: the pool volume's key)")
    add_identity_args(ap)
    ap.add_argument("--provider", choices=("luks", "luks2"), default="luks2")
    ap.add_argument("--new", action="store_true",
                    help="the volume is new: format it if (and only if) it is entirely blank")
    ap.add_argument("--write", metavar="SEED:SIZE", help="write a deterministic pattern")
    ap.add_argument("--read", metavar="SIZE", help="print the sha256 of the first SIZE bytes")
    ap.add_argument("--hold", action="store_true", help="keep attached until 'byok detach'")
    ap.add_argument("--json", action="store_true")
    ap.set_defaults(func=_attach)
    dp = sub.add_parser("detach", formatter_class=fmt, help="end a 'byok attach --hold' session")
    dp.add_argument("volume", type=Path)
    dp.set_defaults(func=_detach)


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if t and t[-1] in units:
            return int(float(t[:-1]) * units[t[-1]])
        return int(t)
    except ValueError:
        raise UsageError(f"not a size: {text!r} (examples: 4096, 64M, 1G)") from None


def _hold_file(volume: Path) -> Path:
    from byok import paths

    return paths.base_dir() / "run" / f"attach-{volume.resolve().as_posix().replace('/', '_')}"


def _attach(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading

    from byok import attach as hookmod

    svc = None
    if not args.volume.exists():  # a pool volume id
        svc = _volume_service(args, with_service=False)
        conn, enc, new = svc.attach_args(str(args.volume), args.key_ref)
        args.new = args.new or new
    else:
        if not args.key_ref:
            raise UsageError("give --key-ref (the user's key reference)")
        conn = hookmod.connection_info_for(args.volume.resolve())
        enc = {"key_ref": args.key_ref, "provider": args.provider}
    hook = hookmod.AttachHook(identity_from_args(args))
    v = hook.prepare(conn, enc, new_volume=args.new)
    if svc is not None and v.state == "formatted":
        svc.mark_formatted(v.volume_id)
    steps = [hookmod.attach_step(v, name="attach")]
    if args.write:
        seed, _, size = args.write.partition(":")
        steps.append(hookmod.write_step(v, int(seed), _size(size or "4M"), name="write"))
    release = threading.Event()
    hold = _hold_file(args.volume)
    if args.hold:
        steps.append(hookmod.wait_step("detach"))
    if args.read:
        steps.append(hookmod.read_step(v, _size(args.read), name="read"))
    steps.append(hookmod.detach_step(v, name="detach"))

    def on_wait(token: str) -> None:
        hold.parent.mkdir(parents=True, exist_ok=True)
        from byok import proc

        hold.write_text(json.dumps({"pid": os.getpid(), "start_time": proc.pid_start_time(
            os.getpid()), "volume": str(args.volume.resolve())}))
        err.print(f"attached {args.volume} at /dev/mapper/{v.mapper_name} (in the guest); "
                  f"run 'byok detach {args.volume}' to release")
        release.wait()

    old = signal.signal(signal.SIGUSR1, lambda *_: release.set())
    try:
        run = hook.run([v], steps, on_wait=on_wait,
                       progress=lambda s: err.print(f"[dim]… {s}[/]"))
    finally:
        signal.signal(signal.SIGUSR1, old)
        hold.unlink(missing_ok=True)
    hookmod.raise_for(run, {v.volume_id: v.path})
    summary = {
        "volume": str(args.volume), "state": v.state, "key": v.key.ref.secret_id,
        "mapper": run.step("attach")["mapper"], "guest_seconds": round(run.seconds, 2),
        "steps": {s["name"]: round(s["seconds"], 3) for s in run.steps},
    }
    for name in ("write", "read"):
        if any(s["name"] == name for s in run.steps):
            summary[f"{name}_sha256"] = run.step(name)["sha256"]
    if args.json:
        out.print_json(json.dumps(summary))
    else:
        for k, val in summary.items():
            out.print(f"[bold]{k:>14}[/]  {val}")
    return 0


def _detach(args: argparse.Namespace) -> int:
    import os
    import signal

    from byok import proc

    hold = _hold_file(args.volume)
    try:
        rec = json.loads(hold.read_text())
        pid, started = int(rec["pid"]), rec["start_time"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        raise UsageError(
            f"{args.volume} is not attached by a 'byok attach --hold' session"
        ) from None
    # SIGUSR1 would kill an unrelated process that reused the pid of a session killed with -9:
    # signal only the very process that wrote the record (same kernel start time).
    if started is None or proc.pid_start_time(pid) != started:
        hold.unlink(missing_ok=True)
        raise UsageError(
            f"the session holding {args.volume} is gone (stale record removed)"
        )
    try:
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        hold.unlink(missing_ok=True)
        raise UsageError(
            f"the session holding {args.volume} is gone (stale record removed)"
        ) from None
    out.print(f"detach requested from session {pid}")
    return 0


# --- volume ------------------------------------------------------------------------------------


def _volume_service(args: argparse.Namespace, *, with_service: bool = True):
    """The prototype volume service for the chosen user (service identity: cinder)."""
    from byok.identity import Identity
    from byok.volumes import Pool, VolumeService

    user = identity_from_args(args)
    service = None
    if with_service:
        if getattr(args, "service_cloud", None):
            service = Identity.from_cloud(args.service_cloud)
        elif not getattr(args, "cloud", None):
            from byok.stack.manager import Stack

            service = Stack.at(getattr(args, "state_dir", None)).identity("cinder")
    return VolumeService(Pool(getattr(args, "pool", None)), user, service=service)


def _print_record(rec, as_json: bool = False) -> None:
    from dataclasses import asdict

    doc = asdict(rec)
    if as_json:
        out.print_json(json.dumps(doc))
        return
    for k in ("id", "kind", "name", "size", "state", "key_ref", "secret_type", "key_owner",
              "luks_type", "escrow_ref", "source"):
        out.print(f"[bold]{k:>12}[/]  {doc[k]}")


def _volume_parser(sub, fmt) -> None:
    from byok.luks import POLICIES

    vp = sub.add_parser(
        "volume", formatter_class=fmt,
        help="the prototype Cinder side: volumes, clones, backups, images, rotation",
        description=(
            "File-backed volumes whose key is the user's. Copies share the key reference\n"
            "(a Barbican consumer each), delete never deletes the key, rotation is journaled\n"
            "and crash-safe. Pool: .byok/pool (or --pool / $BYOK_POOL_DIR).\n\n"
            "Examples:\n"
            "  byok volume create --size 64M --key-ref REF --as alice\n"
            "  byok volume clone VOL --as alice                 # shares the key\n"
            "  byok volume clone VOL --key-ref OTHER --as alice # rekeyed clone\n"
            "  byok volume rotate VOL --key-ref NEW --as alice\n"
            "  byok volume backup VOL --as alice"
        ),
    )
    vp.add_argument("--pool", type=Path, default=None, help="pool directory")
    vs = vp.add_subparsers(dest="action", metavar="ACTION")
    vs.required = True

    def cmd(name: str, helptext: str, func, *, target: str | None = "VOL", json_flag=True):
        p = vs.add_parser(name, formatter_class=fmt, help=helptext)
        if target:
            p.add_argument("target", metavar=target)
        add_identity_args(p)
        p.add_argument("--service-cloud", help="cloud of the service identity (with --cloud)")
        if json_flag:
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)
        return p

    c = cmd("create", "a volume encrypted with the user's key", _vol_create, target=None)
    c.add_argument("--size", required=True, help="e.g. 64M, 1G")
    c.add_argument("--key-ref", required=True)
    c.add_argument("--name", default="")
    c.add_argument("--provider", choices=("luks", "luks2"), default="luks2")
    c.add_argument("--escrow", action="store_true",
                   help="add a keyslot for a deployment escrow key (either party can recover)")
    c.add_argument("--no-format", action="store_true",
                   help="leave it blank; the attach hook formats it on first attach")
    c.add_argument("--pbkdf", choices=tuple(POLICIES),
                   help="PBKDF policy (default: by the secret's type)")
    c = cmd("clone", "a new volume from VOL (same key, or --key-ref to rekey)", _vol_copy)
    c.add_argument("--key-ref")
    c.set_defaults(copy="clone")
    for name, helptext in (("snapshot", "a snapshot of VOL (shares the key)"),
                           ("backup", "a backup of VOL: ciphertext + header of now"),
                           ("upload", "upload VOL as a LUKS image (shares the key)")):
        cmd(name, helptext, _vol_copy).set_defaults(copy=name)
    c = cmd("restore", "a new volume from BACKUP", _vol_copy, target="BACKUP")
    c.add_argument("--key-ref", help="a key that opens the backup (if rotated since)")
    c.set_defaults(copy="restore")
    c = cmd("from-image", "a new volume from IMAGE", _vol_copy, target="IMAGE")
    c.add_argument("--key-ref")
    c.set_defaults(copy="from-image")
    c = cmd("image-from-raw", "a LUKS image from a plaintext file (no root, no dm)",
            _vol_image_from_raw, target="RAW")
    c.add_argument("--key-ref", required=True)
    cmd("delete", "delete a volume/snapshot/backup/image (never the key)", _vol_delete,
        json_flag=False)
    c = cmd("rotate", "move VOL to another user key (journaled, crash-safe)", _vol_rotate)
    c.add_argument("--key-ref", help="the new key (not needed with --resume)")
    c.add_argument("--resume", action="store_true", help="only finish an interrupted rotation")
    c = cmd("reencrypt", "new volume key for all data, then the new user key (LUKS2)",
            _vol_reencrypt)
    c.add_argument("--key-ref", help="the new key (not needed with --resume)")
    c.add_argument("--resume", action="store_true",
                   help="only finish an interrupted re-encryption")
    cmd("header-backup", "save VOL's LUKS header", _vol_header, json_flag=False).set_defaults(
        header="backup")
    c = cmd("header-restore", "write a saved header back onto VOL", _vol_header,
            json_flag=False)
    c.add_argument("--from", dest="from_file", type=Path,
                   help="backup file (default: the newest one that opens with the current key)")
    c.set_defaults(header="restore")
    ls = vs.add_parser("list", formatter_class=fmt, help="everything in the pool")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_vol_list)


def _vol_create(args: argparse.Namespace) -> int:
    svc = _volume_service(args, with_service=args.escrow)
    rec = svc.create(_size(args.size), args.key_ref, name=args.name, provider=args.provider,
                     escrow=args.escrow, format=not args.no_format, policy=args.pbkdf)
    _print_record(rec, args.json)
    return 0


def _vol_copy(args: argparse.Namespace) -> int:
    svc = _volume_service(args, with_service=False)
    key_ref = getattr(args, "key_ref", None)
    op = {
        "clone": lambda: svc.clone(args.target, key_ref=key_ref),
        "snapshot": lambda: svc.snapshot(args.target),
        "backup": lambda: svc.backup(args.target),
        "upload": lambda: svc.upload_image(args.target),
        "restore": lambda: svc.restore(args.target, key_ref=key_ref),
        "from-image": lambda: svc.create_from_image(args.target, key_ref=key_ref),
    }[args.copy]
    _print_record(op(), args.json)
    return 0


def _vol_image_from_raw(args: argparse.Namespace) -> int:
    svc = _volume_service(args, with_service=False)
    _print_record(svc.image_from_raw(Path(args.target), args.key_ref), args.json)
    return 0


def _vol_delete(args: argparse.Namespace) -> int:
    svc = _volume_service(args)
    svc.delete(args.target)
    out.print(f"deleted {args.target} (the key stays in Barbican)")
    return 0


def _vol_rotate(args: argparse.Namespace) -> int:
    from byok import rotation

    svc = _volume_service(args, with_service=False)
    if not args.resume and not args.key_ref:
        raise UsageError("give --key-ref NEW (or --resume to finish an interrupted rotation)")
    rec = rotation.rotate(svc, args.target, args.key_ref or "", resume_only=args.resume)
    _print_record(rec, args.json)
    return 0


def _vol_reencrypt(args: argparse.Namespace) -> int:
    from byok import rotation

    if not args.resume and not args.key_ref:
        raise UsageError("give --key-ref NEW (or --resume to finish an interrupted one)")
    svc = _volume_service(args)  # the service identity drops a now useless escrow secret
    rec, seconds = rotation.reencrypt(svc, args.target, args.key_ref,
                                      resume_only=getattr(args, "resume", False))
    err.print(f"re-encrypted all data in {seconds:.2f} s")
    _print_record(rec, args.json)
    return 0


def _vol_header(args: argparse.Namespace) -> int:
    svc = _volume_service(args, with_service=False)
    if args.header == "backup":
        out.print(str(svc.header_backup(args.target)))
    else:
        out.print(f"restored {svc.header_restore(args.target, args.from_file)}")
    return 0


def _vol_list(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from byok.volumes import Pool

    recs = Pool(args.pool).list()
    if args.json:
        out.print_json(json.dumps([asdict(r) for r in recs]))
        return 0
    from rich.table import Table

    t = Table()
    for col in ("id", "kind", "size", "state", "key", "source"):
        t.add_column(col)
    for r in recs:
        t.add_row(r.id, r.kind, str(r.size), r.state, r.key_ref.rsplit("/", 1)[-1][:8] + "…",
                  f"{r.source.get('kind', '')} {r.source.get('id', '')[:8]}")
    out.print(t)
    return 0


# --- recover -----------------------------------------------------------------------------------


def _recover_parser(sub, fmt) -> None:
    rp = sub.add_parser(
        "recover", formatter_class=fmt,
        help="offline: a LUKS volume/backup/image file -> plaintext, with only your key",
        description=(
            "Decrypt a LUKS1/LUKS2 volume, backup or image offline: no Keystone, no Barbican,\n"
            "no root, no device-mapper, no cryptsetup. Give the key exactly as stored in\n"
            "Barbican: --key-file with the raw key bytes of a symmetric secret (the passphrase\n"
            "is derived as os-brick does), or --passphrase-file with a passphrase secret.\n"
            "A wrong key exits with status 5 and writes nothing. The output is sparse.\n\n"
            "A LUKS2 volume caught in the middle of 'cryptsetup reencrypt' is read as\n"
            "cryptsetup's own repair would (each segment with its own key, the hotzone from\n"
            "its checksums, journal or moved copy), each keyslot only for the segments its\n"
            "digest is bound to. Bytes that cannot be vouched for (resilience 'none'\n"
            "interrupted, a hotzone block nothing explains) are refused: exit 15, nothing\n"
            "written, the byte ranges and why on stderr (--json: on stdout).\n\n"
            "Example:\n"
            "  byok recover vol.img --key-file my-key.bin --out vol.plain"
        ),
    )
    rp.add_argument("image", type=Path, help="volume, backup or image file")
    g = rp.add_mutually_exclusive_group(required=True)
    g.add_argument("--key-file", type=Path, help="raw key bytes (symmetric secret)")
    g.add_argument("--passphrase-file", type=Path, help="passphrase secret text")
    rp.add_argument("--header", type=Path, help="detached LUKS header file")
    out = rp.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", type=Path, help="plaintext output file")
    out.add_argument("--check", action="store_true",
                     help="decrypt everything, write nothing: does this key open it?")
    rp.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(func=_recover)


def _recover(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from byok import recovery
    from byok.errors import RecoveryRefused, WrongKey

    candidates = recovery.read_passphrase(key_file=args.key_file,
                                          passphrase_file=args.passphrase_file)
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("decrypting", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        last: WrongKey | None = None
        for pw in candidates:
            try:
                summary = recovery.recover(args.image, None if args.check else args.out,
                                           passphrase=pw,
                                           header=args.header, progress=progress,
                                           overwrite=args.force)
                break
            except WrongKey as e:
                last = e
            except RecoveryRefused as e:
                if args.json:
                    out.print_json(json.dumps({
                        "refused": [{"start": a, "end": b, "bytes": b - a, "why": why}
                                    for a, b, why in e.ranges],
                        "reencryption": e.state}))
                else:
                    for a, b, why in e.ranges[:20]:
                        err.print(f"refused: bytes {a}-{b - 1} ({b - a} bytes): {why}")
                raise
        else:
            assert last is not None
            raise last
    if args.json:
        out.print_json(json.dumps(summary))
    else:
        where = "checked (nothing written)" if args.check else f"to {args.out}"
        keys = ", ".join(f"digest {d} from keyslot {k['keyslot']}"
                         for d, k in summary["keys"].items()) or "no key needed"
        state = summary["reencryption"]
        how = "" if state["status"] == "none" else (
            f"; interrupted {state['mode']} ({state['resilience']}), state {state['status']}")
        out.print(f"recovered {summary['plaintext_bytes']} bytes {where} "
                  f"(LUKS{summary['luks_version']}, {keys}{how}, {summary['seconds']} s, "
                  f"{summary['backend']})")
    return 0


# --- experiments, report, main job ----------------------------------------------------------


def _experiments_parser(sub, fmt) -> None:
    ep = sub.add_parser(
        "experiments", formatter_class=fmt, help="the research harness: list and run experiments",
        description=(
            "Each experiment states a hypothesis tied to a spec hurdle (H1-H10), runs on the\n"
            "real path and records measurements and checks; its verdict comes from its checks.\n"
            "One results JSON per experiment goes to the run directory, plus run.json.\n\n"
            "Examples:\n"
            "  byok experiments list\n"
            "  byok experiments run                 # all, on the embedded stack\n"
            "  byok experiments run E04 E11 --repeat 3\n"
            "  byok experiments run --cloud mycloud # clouds mycloud-alice, mycloud-bob, ...\n"
            "  byok report results/<run>"
        ),
    )
    es = ep.add_subparsers(dest="action", metavar="ACTION")
    es.required = True
    ls = es.add_parser("list", formatter_class=fmt, help="the experiments, as a table")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_exp_list)
    rn = es.add_parser("run", formatter_class=fmt, help="run experiments, write results")
    rn.add_argument("ids", nargs="*", metavar="ID", help="experiment ids (default: all)")
    rn.add_argument("--cloud", help="run against clouds NAME-alice, NAME-bob, NAME-carol, "
                                    "NAME-cinder, NAME-nova from clouds.yaml")
    rn.add_argument("--out", type=Path, help="run directory (default results/<run-id>)")
    rn.add_argument("--repeat", type=int, default=1, help="run each experiment N times")
    rn.add_argument("--keep-scratch", action="store_true", help="keep volumes and temp files")
    rn.add_argument("--report", action="store_true", help="write report.md afterwards")
    rn.set_defaults(func=_exp_run)


def _exp_list(args: argparse.Namespace) -> int:
    from byok.harness.registry import discover

    reg = discover()
    if args.json:
        out.print_json(json.dumps([{"id": e.id, "title": e.title, "hurdle": e.hurdle,
                                    "hypothesis": e.hypothesis, "needs": sorted(e.needs)}
                                   for e in reg.values()]))
        return 0
    from rich.table import Table

    t = Table(title="byok experiments")
    for col in ("id", "hurdle", "title", "needs"):
        t.add_column(col)
    for e in reg.values():
        t.add_row(e.id, e.hurdle, e.title, ", ".join(sorted(e.needs)))
    out.print(t)
    return 0


def _run_with_progress(selected, env, args) -> object:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from byok.harness.runner import run_experiments

    colors = {"supported": "green", "refuted": "red", "error": "red"}
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=err) as bar:
        task = bar.add_task("experiments", total=len(selected) * args.repeat)

        def on_result(res) -> None:
            color = colors.get(res.verdict, "yellow")
            bar.console.print(f"{res.id} [{color}]{res.verdict}[/] "
                              f"({sum(c.passed for c in res.checks)}/{len(res.checks)} checks, "
                              f"{res.seconds:.1f} s) {res.title}")
            bar.advance(task)

        return run_experiments(
            selected, env, out_dir=args.out, repeat=args.repeat,
            progress=lambda m: bar.update(task, description=m[:70]),
            on_result=on_result, keep_scratch=args.keep_scratch,
        )


def _exp_run(args: argparse.Namespace) -> int:
    from byok.harness.context import Environment
    from byok.harness.registry import discover, select
    from byok.stack.manager import Stack

    selected = select(discover(), args.ids)
    with contextlib.ExitStack() as es:
        if args.cloud:
            env = Environment.from_cloud(args.cloud)
        else:
            stack = es.enter_context(Stack.at().running(progress=lambda m: err.print(f"… {m}")))
            env = Environment.embedded(stack)
        summary = _run_with_progress(selected, env, args)
    return _finish_run(summary, args.report)


def _finish_run(summary, report: bool, spec: Path | None = None) -> int:
    counts = summary.counts()
    err.print(f"run {summary.run_id}: " + ", ".join(f"{v} {k}" for k, v in counts.items())
              + f" in {summary.seconds:.0f} s" + (" [red](interrupted)[/]" if summary.interrupted
                                                   else ""))
    out.print(f"results: {summary.run_dir}")
    if report:
        from byok.harness import report as rpt

        bench = _latest_bench(summary.run_dir)
        out.print(f"report:  {rpt.render(summary.run_dir, bench=bench)}")
        if spec:
            _inject_spec(summary.run_dir, spec)
    if summary.interrupted:
        return 130
    return 0 if not counts.get("error") and not counts.get("refuted") else 16


def _latest_bench(run_dir: Path) -> dict | None:
    """Benchmarks to show in a report: the run's own bench.json, else bench/latest.json."""
    from byok import paths

    root = paths.project_root()
    for candidate in (run_dir / "bench.json", root / "bench" / "latest.json" if root else None):
        if candidate and candidate.exists():
            return json.loads(candidate.read_text())
    return None


def _inject_spec(run_dir: Path, spec: Path) -> None:
    from byok.harness import spec as specmod
    from byok.harness.results import load_run

    results = load_run(run_dir)
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"] if (
        run_dir / "run.json").exists() else run_dir.name
    changed = specmod.update(spec, results, run_id)
    out.print(f"spec:    {spec} ({'evidence regenerated' if changed else 'unchanged'})")


def _report_parser(sub, fmt) -> None:
    rp = sub.add_parser(
        "report", formatter_class=fmt, help="report.md (+ plots) from a results run",
        description=(
            "Build RUN_DIR/report.md and RUN_DIR/plots/*.png from the results JSON only.\n"
            "With --spec, also regenerate the spec's evidence blocks from this run\n"
            "(idempotent: the same run gives the same text).\n\n"
            "Example:\n"
            "  byok report results/20261125T101500-ab12 --spec design/user-supplied-keys.rst"
        ),
    )
    rp.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    rp.add_argument("--spec", type=Path, help="spec file whose evidence blocks to regenerate")
    rp.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from byok.harness import report as rpt

    if not args.run_dir.is_dir() or not list(args.run_dir.glob("E*.json")):
        raise UsageError(f"{args.run_dir} holds no experiment results",
                         hint="run them first: byok experiments run")
    out.print(f"report: {rpt.render(args.run_dir, bench=_latest_bench(args.run_dir))}")
    if args.spec:
        _inject_spec(args.run_dir, args.spec)
    return 0


def _main_job_parser(sub, fmt) -> None:
    mp = sub.add_parser(
        "main-job", formatter_class=fmt,
        help="the README's main job: stack up, every experiment, report, spec evidence",
    )
    mp.add_argument("--out", type=Path, help="run directory (default results/<run-id>)")
    mp.add_argument("--spec", type=Path, default=None,
                    help="spec to refresh (default: design/user-supplied-keys.rst if present)")
    mp.add_argument("--no-spec", action="store_true", help="do not touch the spec")
    mp.set_defaults(func=_main_job)


def _main_job(args: argparse.Namespace) -> int:
    from byok import paths
    from byok.harness.context import Environment
    from byok.harness.registry import discover
    from byok.stack.manager import Stack

    selected = list(discover().values())
    args.repeat, args.keep_scratch = 1, False
    with Stack.at().running(progress=lambda m: err.print(f"… {m}")) as stack:
        summary = _run_with_progress(selected, Environment.embedded(stack), args)
    spec = None
    if not args.no_spec:
        root = paths.project_root()
        spec = args.spec or (root / "design" / "user-supplied-keys.rst" if root else None)
        spec = spec if spec and spec.exists() else None
    return _finish_run(summary, True, spec)


_REGISTRARS: list[Callable] = [_stack_parser, _key_parser, _bench_parser, _attach_parser,
                               _volume_parser, _recover_parser, _experiments_parser,
                               _report_parser, _main_job_parser]


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    parser = _parser()
    args = parser.parse_args(argv)
    if not args.debug:  # eventlet's and openstacksdk's deprecation banners are not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        for noisy in ("castellan", "barbicanclient", "keystoneauth", "os_brick", "stevedore"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)
    handler: Handler = args.func
    try:
        return int(handler(args) or 0)
    except ByokError as e:
        err.print(f"[red]error:[/] {e.message}")
        if e.hint:
            err.print(f"[yellow]hint:[/] {e.hint}")
        return e.exit_code
    except KeyboardInterrupt:
        err.print("[red]interrupted[/]")
        return 130


if __name__ == "__main__":
    sys.exit(main())
