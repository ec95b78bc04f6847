"""The python grader: `def grade(sample, item) -> float` run in a child process with limits on time, memory,
processes and output, and no network.

Where the machine can (graders/sandbox.py), the child runs in a bubblewrap sandbox: it sees a read-only Python
and private scratch folders, nothing of the host's files, environment, processes or network, and runs as
nobody when the server runs as root. Where it cannot, a server refuses python graders unless its operator
trusts them (`lmtailor serve --trust-graders`); a trusted grader then runs as the server's user with the same
limits, and no network: the child first tries to enter a new network namespace of its own (Linux `unshare`: as
root, or inside a new user namespace where the kernel allows those), else replaces the socket module's
constructors, which stops ordinary code but not a determined one. Time: the child and everything it started (its
own process group; in the sandbox, its PID namespace) are killed at the limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TIME_LIMIT = 10.0  # seconds per call
MEMORY_LIMIT = 1 << 30  # bytes of address space
PROCESS_LIMIT = 32  # processes and threads (in the sandbox: its own; trusted, the server user's beyond those)
OUTPUT_LIMIT = 16 << 20  # bytes any one file the grader writes may reach (its stderr included)

CHILD = r"""
import ctypes, json, os, resource, sys, traceback
payload_file, limit, result_file, nproc, output, mode = sys.argv[1:7]
payload = json.load(open(payload_file, encoding="utf-8"))
out = open(result_file, "w", encoding="utf-8")  # both opened before the privileges go
if mode == "nobody":  # the sandbox as root: the grader owns nothing, and its processes are counted
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
for name, value in (("RLIMIT_AS", int(limit)), ("RLIMIT_NPROC", int(nproc)), ("RLIMIT_FSIZE", int(output)),
                    ("RLIMIT_CORE", 0)):
    which = getattr(resource, name)
    hard = resource.getrlimit(which)[1]  # a limit can only be lowered
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(which, (value, value))
isolated = mode != "trusted"  # the sandbox has a network namespace of its own
try:
    libc = ctypes.CDLL(None, use_errno=True)
    # a new network namespace: as root directly, else inside a new user namespace where that is allowed
    isolated = isolated or libc.unshare(0x40000000) == 0 or libc.unshare(0x10000000 | 0x40000000) == 0
except Exception:
    pass
if not isolated:
    import socket
    def _no_network(*args, **kwargs):
        raise OSError("network access is not allowed in a python grader")
    socket.socket = socket.create_connection = socket.getaddrinfo = _no_network
    try:
        import _socket
        _socket.socket = _no_network
    except ImportError:
        pass
def report(result):
    json.dump(result, out)
    out.close()
namespace = {"__name__": "grader"}
try:
    exec(compile(payload["source"], "<grader>", "exec"), namespace)
    value = namespace["grade"](payload["sample"], payload["item"])
except MemoryError:
    report({"error": "the grader ran out of its memory limit"})
    sys.exit(0)
except BaseException as e:
    report({"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)})
    sys.exit(0)
if isinstance(value, bool) or not isinstance(value, (int, float)):
    report({"error": f"grade() returned {type(value).__name__} {value!r}, not a number"})
else:
    report({"value": float(value)})
"""


@dataclass
class PythonResult:
    value: float | None
    error: str | None = None
    kind: str | None = None  # runtime | timeout | server
    seconds: float = 0.0


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def check_source(source: str) -> str | None:
    """Why a grader's source is unusable (a syntax error, no grade function), or None."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        return f"the source does not parse: {e.msg} (line {e.lineno})"
    if not any(isinstance(n, ast.FunctionDef) and n.name == "grade" for n in tree.body):
        return "the source defines no function grade(sample, item)"
    return None


def run_python(source: str, sample: dict, item, time_limit: float = TIME_LIMIT,
               memory_limit: int = MEMORY_LIMIT) -> PythonResult:  # fmt: skip
    from lmtailor.graders import sandbox

    start = time.monotonic()
    if sandbox.unavailable() and not sandbox.trusted():
        return PythonResult(None, sandbox.refusal(), "server", 0.0)
    # a private folder (0700) for the two files: no other user can read the payload or plant a link there
    folder = tempfile.mkdtemp(prefix="lmtailor-grader-")
    try:
        got, timed_out, stderr, code = _run_child(folder, source, sample, item, time_limit, memory_limit)
    except OSError as e:  # no room for the payload, no process to start: the server's trouble, said in words
        return PythonResult(None, f"the grader could not be started: {e}", "server", time.monotonic() - start)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    seconds = time.monotonic() - start
    if not isinstance(got, dict):
        if timed_out:
            return PythonResult(
                None, f"the grader ran past its time limit of {time_limit:g} s", "timeout", seconds
            )
        why = (stderr.strip().splitlines() or [f"exit code {code}"])[-1]
        return PythonResult(None, f"the grader process failed: {why}", "server", seconds)
    if "error" in got:
        return PythonResult(None, str(got["error"]), "runtime", seconds)
    if not isinstance(got.get("value"), int | float):
        return PythonResult(None, "the grader process gave no value", "server", seconds)
    return PythonResult(float(got["value"]), None, None, seconds)


def _run_child(folder: str, source: str, sample: dict, item, time_limit: float, memory_limit: int):
    """The grader's child process, sandboxed where it can be, its two files in `folder`: (what it reported or
    None, whether it timed out, its stderr, its exit code)."""
    from lmtailor.graders import sandbox
    from lmtailor.home import home_dir

    payload_file, result = os.path.join(folder, "payload.json"), os.path.join(folder, "result.json")
    with open(payload_file, "x", encoding="utf-8") as f:
        json.dump({"source": source, "sample": sample, "item": item}, f)
    open(result, "x").close()  # the one host file the sandbox may write, bound into it
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    # no sandbox (trusted): the server user's view of the files, its processes counted too
    trusted = sandbox.unavailable() is not None
    mode = "trusted" if trusted else "nobody" if sandbox.as_root() else "sandbox"
    nproc = _processes() + PROCESS_LIMIT if trusted else PROCESS_LIMIT
    # the two files where the child sees them
    payload, out = (payload_file, result) if trusted else (sandbox.PAYLOAD, sandbox.RESULT)
    argv = [sys.executable, "-I", "-c", CHILD, payload, str(memory_limit), out, str(nproc), str(OUTPUT_LIMIT),
            mode]  # fmt: skip
    fds = () if trusted else (sandbox.no_user_namespaces(),)
    try:
        if fds:
            argv = sandbox.sandboxed(argv, payload_file, result, home_dir(None), seccomp_fd=fds[0])
        with tempfile.TemporaryFile("w+", encoding="utf-8") as errors:
            # the result comes through a file: a process the grader started may hold stdout open long after
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=errors, env=env, pass_fds=fds,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
            for fd in fds:  # bwrap has its copy
                os.close(fd)
            fds = ()
            try:
                proc.wait(timeout=time_limit)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)  # anything the grader started dies with it
            errors.seek(0)
            stderr = errors.read(64 << 10)
    finally:
        for fd in fds:
            os.close(fd)
    try:
        with open(result, encoding="utf-8") as r:
            got = json.loads(r.read(1 << 20) or "null")
    except (OSError, json.JSONDecodeError):
        got = None
    return got, timed_out, stderr, proc.returncode


def _processes() -> int:
    """Processes and threads of this user now (RLIMIT_NPROC counts them all, the server's own included)."""
    uid, count = os.getuid(), 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            count += int(fields.get("Threads", "1"))
    return count
