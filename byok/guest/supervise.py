"""Run a guest so that nothing of it outlives it or us:
``python -I -S supervise.py [--rmtree DIR]... -- CMD...``.

A killed byok must not leave a guest running, and a guest's own helper processes must not
outlive the guest: User-Mode Linux forks helpers that, when its main process dies, are
reparented to init and sleep forever. This supervisor (standalone: stdlib only, started without
site-packages for speed) becomes a child subreaper, asks the kernel to send it SIGTERM when its
parent dies, and runs CMD as its child in a process group of its own. When CMD exits, or on
SIGTERM/SIGINT, it SIGKILLs that whole group (orphaned helpers are reparented to it, so it can
reap them), removes the ``--rmtree`` directories (UML's umid files), and exits with CMD's
status (143 when it was stopped).
"""

import ctypes
import os
import shutil
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36


def _reap_all() -> None:
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return


def main(args: list[str]) -> int:
    sep = args.index("--")
    trees, argv = args[1:sep:2], args[sep + 1 :]
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        return 1
    child = os.fork()
    if child == 0:
        os.setpgid(0, 0)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # if the supervisor itself is SIGKILLed
        try:
            os.execvp(argv[0], argv)  # noqa: S606 - the one exec outside byok.common.proc: the guest
        finally:
            os._exit(127)
    try:
        os.setpgid(child, child)  # both sides, so no signal can race the child's own call
    except (PermissionError, ProcessLookupError):
        pass

    def kill_guest() -> None:
        try:
            os.killpg(child, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def finish() -> None:
        kill_guest()
        _reap_all()
        for tree in trees:
            shutil.rmtree(tree, ignore_errors=True)

    def stop(_sig: int, _frame: object) -> None:
        finish()
        os._exit(143)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _, status = os.waitpid(child, 0)
    finish()
    return os.waitstatus_to_exitcode(status) % 256


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
