"""The python grader: `def grade(sample, item) -> float` run in a child process with a time limit, a memory
limit and no network.

No network: the child first tries to enter a new network namespace of its own (Linux `unshare`, allowed to
root or with user namespaces), where no interface but an unconnected loopback exists; where that is not
allowed it replaces the socket module's constructors, which stops ordinary code (requests, urllib, socket)
but not a determined one, so run untrusted graders where the namespace is allowed. Memory: RLIMIT_AS.
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
    isolated = ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0  # CLONE_NEWNET
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
namespace = {"__name__": "grader"}
try:
    exec(compile(payload["source"], "<grader>", "exec"), namespace)
    value = namespace["grade"](payload["sample"], payload["item"])
except MemoryError:
    print(json.dumps({"error": "the grader ran out of its memory limit"}))
    sys.exit(0)
except BaseException as e:
    import traceback
    print(json.dumps({"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)}))
    sys.exit(0)
if isinstance(value, bool) or not isinstance(value, (int, float)):
    print(json.dumps({"error": f"grade() returned {type(value).__name__} {value!r}, not a number"}))
else:
    print(json.dumps({"value": float(value)}))
"""


@dataclass
class PythonResult:
    value: float | None
    error: str | None = None
    kind: str | None = None  # runtime | timeout | server
    seconds: float = 0.0


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
    try:
        out = subprocess.run([sys.executable, "-I", "-c", CHILD, f.name, str(memory_limit)], capture_output=True,
                             text=True, timeout=time_limit, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        return PythonResult(None, f"the grader ran past its time limit of {time_limit:g} s", "timeout",
                            time.monotonic() - start)  # fmt: skip
    finally:
        os.unlink(f.name)
    seconds = time.monotonic() - start
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if not lines:
        why = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        return PythonResult(None, f"the grader process failed: {why}", "server", seconds)
    got = json.loads(lines[-1])
    if "error" in got:
        return PythonResult(None, got["error"], "runtime", seconds)
    return PythonResult(got["value"], None, None, seconds)
