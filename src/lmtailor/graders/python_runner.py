"""The python grader: `def grade(sample, item) -> float` run in a child process with a time limit, a memory
limit and no network.

No network: the child first tries to enter a new network namespace of its own (Linux `unshare`: as root, or
inside a new user namespace where the kernel allows those), where no interface but an unconnected loopback
exists; where neither is allowed it replaces the socket module's constructors, which stops ordinary code
but not a determined one (a subprocess, say). Memory: RLIMIT_AS. Time: the child and everything it started
(its own process group) are killed at the limit. The child runs as the server's user and can read what
that user can: run a server that accepts graders from others as a dedicated user.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

TIME_LIMIT = 10.0  # seconds per call
MEMORY_LIMIT = 1 << 30  # bytes of address space

CHILD = r"""
import ctypes, json, resource, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
isolated = False
try:
    libc = ctypes.CDLL(None, use_errno=True)
    # a new network namespace: as root directly, else inside a new user namespace where that is allowed
    isolated = libc.unshare(0x40000000) == 0 or libc.unshare(0x10000000 | 0x40000000) == 0
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
payload = json.load(open(sys.argv[1], encoding="utf-8"))
def report(result):
    with open(sys.argv[3], "w", encoding="utf-8") as f:
        json.dump(result, f)
namespace = {"__name__": "grader"}
try:
    exec(compile(payload["source"], "<grader>", "exec"), namespace)
    value = namespace["grade"](payload["sample"], payload["item"])
except MemoryError:
    report({"error": "the grader ran out of its memory limit"})
    sys.exit(0)
except BaseException as e:
    import traceback
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
    start = time.monotonic()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump({"source": source, "sample": sample, "item": item}, f)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    result = f.name + ".out"
    with tempfile.TemporaryFile("w+", encoding="utf-8") as errors:
        # the result comes through a file: a process the grader started may hold stdout open long after
        proc = subprocess.Popen([sys.executable, "-I", "-c", CHILD, f.name, str(memory_limit), result],
                                stdout=subprocess.DEVNULL, stderr=errors, env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        try:
            proc.wait(timeout=time_limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(proc)  # anything the grader started dies with it
            os.unlink(f.name)
        errors.seek(0)
        stderr = errors.read()
    seconds = time.monotonic() - start
    try:
        with open(result, encoding="utf-8") as r:
            got = json.load(r)
        os.unlink(result)
    except (OSError, json.JSONDecodeError):
        got = None
    if got is None:
        if timed_out:
            return PythonResult(
                None, f"the grader ran past its time limit of {time_limit:g} s", "timeout", seconds
            )
        why = (stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return PythonResult(None, f"the grader process failed: {why}", "server", seconds)
    if "error" in got:
        return PythonResult(None, got["error"], "runtime", seconds)
    return PythonResult(got["value"], None, None, seconds)
