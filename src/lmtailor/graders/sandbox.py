"""Where python graders run: a bubblewrap sandbox (Debian's `bubblewrap`, the tool Flatpak isolates its apps with).

    argv = sandboxed(argv, payload, result)          bwrap: new mount, PID, network, IPC and UTS namespaces; a
                                                     read-only view of /usr and of the Python installation (the
                                                     virtual environment's packages included); private, size-
                                                     limited /tmp and /scratch; no /etc (but the loader's cache),
                                                     no home, no lmtailor home, an empty environment; the payload
                                                     read-only and the result file the one host file it may write
    why  = unavailable()                             None where the sandbox works on this machine, else why not
    ok   = trusted(server)                           whether graders may run without it (lmtailor serve
                                                     --trust-graders; a CLI run is the user's own code)

As root, bwrap makes no user namespace: the child reads its payload and opens its result as root, then becomes
nobody (65534) before the grader's code runs, so it owns no file and RLIMIT_NPROC counts its processes. As
another user, bwrap makes a user namespace (where the kernel allows them) and the child stays that user. Either
way a seccomp program (no_user_namespaces, made with libseccomp) keeps the grader from making a user namespace
of its own, where it would have the capabilities to mount things.
Where bwrap is missing or cannot make its namespaces (a container without them), the server refuses python
graders unless its operator trusts them: they run then as before, in a child process with the same limits and
no network, but with the server user's view of the files (python_runner.py).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TRUST_ENV = (
    "LMTAILOR_TRUST_GRADERS"  # "1" trusted, "0" not (lmtailor serve sets it); unset: a CLI run, trusted
)
BWRAP_ENV = "LMTAILOR_BWRAP"  # the bwrap program (default: bwrap on PATH)
NOBODY = 65534
SCRATCH_BYTES = 64 << 20  # each of /tmp and /scratch
PAYLOAD, RESULT = "/io/payload.json", "/io/result.json"  # where the sandbox sees them
CLONE_NEWUSER = 0x10000000


def trusted(server: bool = False) -> bool:
    """Whether a python grader may run unsandboxed: the operator said so (TRUST_ENV "1"), or, where nobody said
    anything (TRUST_ENV unset), outside a server: the user's own grader in the user's own CLI run."""
    said = os.environ.get(TRUST_ENV)
    return said == "1" or (said is None and not server)


def as_root() -> bool:
    return os.geteuid() == 0


def _readable_roots() -> list[str]:
    """The Python installation and the virtual environment, outside /usr (bound whole)."""
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    roots.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))  # bin/python's installation
    return sorted(r for r in roots if r != "/" and not r.startswith("/usr/"))


def no_user_namespaces() -> int:
    """A file descriptor holding a seccomp program (BPF, made by libseccomp) for bwrap's --seccomp: `clone` and
    `unshare` asking for a new user namespace fail with EPERM, and `clone3`, whose flags a filter cannot read,
    with ENOSYS (the C library then falls back to `clone`); all else is allowed. Docker's default profile and
    Flatpak refuse the same. The caller passes the descriptor to bwrap and closes it."""
    fd = os.memfd_create("lmtailor-seccomp")  # close-on-exec: Popen's pass_fds hands it to bwrap alone
    try:
        os.write(fd, _program())
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@functools.cache
def _program() -> bytes:
    """no_user_namespaces' BPF program, compiled by libseccomp once per process (a grader runs per sample)."""
    import errno

    import pyseccomp as seccomp

    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    clone_flags = 1 if platform.machine().startswith("s390") else 0  # s390 swaps clone's first two arguments
    for call, arg in (("clone", clone_flags), ("unshare", 0)):
        rules.add_rule(seccomp.ERRNO(errno.EPERM), call, seccomp.Arg(arg, seccomp.MASKED_EQ, CLONE_NEWUSER,
                                                                     CLONE_NEWUSER))  # fmt: skip
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as program:  # libseccomp writes to a descriptor
        rules.export_bpf(program)
        program.seek(0)
        return program.read()


def sandboxed(argv: list[str], payload: str, result: str, home: str | Path | None = None,
              seccomp_fd: int | None = None) -> list[str]:  # fmt: skip
    """`argv` run inside bwrap, with `payload` at PAYLOAD (read-only) and `result` at RESULT (writable), and
    the seccomp program in `seccomp_fd` (no_user_namespaces; pass the descriptor on: Popen's pass_fds)."""
    bwrap = os.environ.get(BWRAP_ENV) or shutil.which("bwrap") or "bwrap"
    cmd = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
           "--unshare-uts", "--unshare-cgroup-try"]  # fmt: skip
    if seccomp_fd is not None:
        cmd += ["--seccomp", str(seccomp_fd)]
    if not as_root():  # unprivileged bwrap needs a user namespace; the grader may not nest another in it (a
        # nested one could mount tmpfs without bound). Root keeps none, so that its child becomes nobody outside
        # (and the seccomp program keeps nobody from making one)
        cmd += ["--unshare-user", "--disable-userns"]
    cmd += ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    cmd += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    made: set[str] = set()
    for root in _readable_roots():  # its parents made traversable: bwrap would make them 0700, root's
        for parent in reversed(Path(root).parents[:-1]):
            if str(parent) not in made and not _under(parent, ["/usr"]):
                made.add(str(parent))
                cmd += ["--perms", "0755", "--dir", str(parent)]
        cmd += ["--ro-bind", root, root]
    if home is not None:  # a home inside a bound installation stays out of sight
        cmd += ["--tmpfs", os.path.realpath(home)] if _under(home, _readable_roots()) else []
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    for scratch in ("/tmp", "/scratch"):  # world-writable as /tmp is: as root the grader is nobody by then
        cmd += ["--perms", "1777", "--size", str(SCRATCH_BYTES), "--tmpfs", scratch]
    cmd += ["--ro-bind", payload, PAYLOAD, "--bind", result, RESULT]
    # the sandbox's own root and /dev (its /dev/shm) are the user's to write there, unbounded
    if not as_root():
        cmd += ["--remount-ro", "/", "--remount-ro", "/dev"]
    cmd += ["--chdir", "/scratch", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/scratch", "--setenv", "TMPDIR", "/tmp",
            "--setenv", "PYTHONIOENCODING", "utf-8", "--setenv", "OMP_NUM_THREADS", "1", "--"]  # fmt: skip
    return cmd + argv


def _under(path: str | Path, roots: list[str]) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


@functools.cache
def unavailable() -> str | None:
    """Why python graders cannot be sandboxed here (bwrap missing, or unable to make its namespaces), or None.
    Tried once per process: a sandboxed Python that imports json."""
    bwrap = os.environ.get(BWRAP_ENV) or shutil.which("bwrap")
    if not bwrap or not os.path.exists(bwrap):
        return "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    with tempfile.TemporaryDirectory(prefix="lmtailor-sandbox-") as tmp:
        payload, result = os.path.join(tmp, "payload"), os.path.join(tmp, "result")
        for path in (payload, result):
            Path(path).touch()
        # as the grader will: the result opened first, then (as root) the drop to nobody, which a container
        # without CAP_SETUID would refuse
        probe = ("import os, sys; out = open(sys.argv[1], 'w')\n"
                 f"if os.geteuid() == 0: os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
                 "out.write('ok')")  # fmt: skip
        argv = [sys.executable, "-I", "-c", probe, RESULT]
        try:
            fd = no_user_namespaces()
        except (ImportError, AttributeError, OSError, RuntimeError, ValueError) as e:
            return (
                f"libseccomp cannot make the sandbox's system call filter: {type(e).__name__}: {e} (Debian: "
                "apt-get install libseccomp2; a libseccomp older than 2.5 does not know clone3)"
            )
        try:
            done = subprocess.run(sandboxed(argv, payload, result, seccomp_fd=fd), capture_output=True, text=True,
                                  timeout=60, stdin=subprocess.DEVNULL, pass_fds=(fd,))  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"bubblewrap failed to start: {e}"
        finally:
            os.close(fd)
        if done.returncode != 0 or Path(result).read_text() != "ok":
            why = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
            return f"bubblewrap cannot make its sandbox here: {why}"
    return None


def refusal() -> str:
    return (
        f"python graders run only in a sandbox on this server, and {unavailable()}; the operator may run them "
        "unsandboxed, with the server's view of the files, by starting it with --trust-graders"
    )
