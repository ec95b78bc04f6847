"""OpenAI's graders, with OpenAI's semantics: hand-made cases and the examples of OpenAI's graders guide."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from lmtailor.graders.core import check, grade, render, sample_namespace
from lmtailor.graders.formula import FormulaError, evaluate
from lmtailor.graders.python_runner import run_python

ITEM = {"reference_answer": "Paris", "label": "positive", "nested": {"city": "Paris", "list": ["a", "b"]}}


def run(grader, output: str, item=ITEM, ask=None):
    return grade(grader, sample_namespace(output), item, ask)


def sc(op: str, reference: str = "{{ item.reference_answer }}"):
    return {"type": "string_check", "name": "s", "input": "{{ sample.output_text }}", "reference": reference,
            "operation": op}  # fmt: skip


def test_templates_fill_item_and_sample_keys():
    sample = sample_namespace('{"city": "Paris", "n": 3}')
    assert render("{{item.nested.city}} / {{ item.nested.list.1 }}", sample, ITEM) == "Paris / b"
    assert render("{{ sample.output_json.city }} {{ sample.output_json.n }}", sample, ITEM) == "Paris 3"
    assert render("{{ item.missing }}|{{ sample.output_json.nope }}", sample, ITEM) == "|"
    assert sample_namespace("not json")["output_json"] is None


def test_string_check_operations():
    # OpenAI's guide: eq / ne exact, like contains (case-sensitive), ilike contains ignoring case
    assert run(sc("eq"), "Paris").reward == 1.0 and run(sc("eq"), "paris").reward == 0.0
    assert run(sc("ne"), "Lyon").reward == 1.0 and run(sc("ne"), "Paris").reward == 0.0
    assert run(sc("like"), "It is Paris.").reward == 1.0 and run(sc("like"), "It is PARIS.").reward == 0.0
    assert run(sc("ilike"), "It is PARIS.").reward == 1.0 and run(sc("ilike"), "Lyon").reward == 0.0
    guide = {"type": "string_check", "name": "Example string check grader", "input": "{{sample.output_text}}",
             "reference": "{{item.label}}", "operation": "eq"}  # fmt: skip
    assert run(guide, "positive").reward == 1.0 and run(guide, "negative").reward == 0.0


@pytest.mark.parametrize(
    ("metric", "same", "low"),
    [("fuzzy_match", 1.0, 0.5), ("bleu", 1.0, 0.3), ("gleu", 1.0, 0.5), ("meteor", 0.99, 0.6),
     ("rouge_1", 1.0, 0.7), ("rouge_2", 1.0, 0.5), ("rouge_5", 1.0, 0.5), ("rouge_l", 1.0, 0.7)],
)  # fmt: skip
def test_text_similarity_metrics(metric, same, low):
    grader = {"type": "text_similarity", "name": "t", "input": "{{ sample.output_text }}",
              "reference": "{{ item.text }}", "evaluation_metric": metric}  # fmt: skip
    item = {"text": "the quick brown fox jumps over the lazy dog"}
    identical = run(grader, item["text"], item).reward
    near = run(grader, "the quick brown fox jumped over a lazy dog", item).reward
    unrelated = run(grader, "completely different words here", item).reward
    assert identical >= same and unrelated < near < identical and near > low * 0.5 and unrelated < 0.35


def test_text_similarity_by_hand():
    grader = {"type": "text_similarity", "name": "t", "input": "{{ sample.output_text }}", "reference": "abcd",
              "evaluation_metric": "fuzzy_match"}  # fmt: skip
    assert run(grader, "abce").reward == pytest.approx(0.75)  # 2 x 3 matching characters / 8
    grader |= {"evaluation_metric": "gleu", "reference": "a b c"}
    # n-grams of "a b d": a, b, d, a b, b d, a b d (6); of "a b c": 6; in common: a, b, a b -> 3 / 6
    assert run(grader, "a b d").reward == pytest.approx(0.5)
    cosine = run(grader | {"evaluation_metric": "cosine"}, "a b c")
    assert cosine.reward == 0.0 and cosine.errors["other_error"]


def test_python_grader_scores_and_fails_in_words(tmp_path):
    source = "def grade(sample, item):\n    return float(sample['output_text'] == item['reference_answer'])\n"
    grader = {"type": "python", "name": "p", "source": source}
    assert run(grader, "Paris").reward == 1.0 and run(grader, "Lyon").reward == 0.0
    boom = run(grader | {"source": "def grade(sample, item):\n    return 1 / 0\n"}, "x")
    assert boom.reward == 0.0 and boom.errors["python_grader_runtime_error"]
    assert "ZeroDivisionError" in boom.errors["python_grader_runtime_error_details"]
    text = run(grader | {"source": "def grade(sample, item):\n    return 'high'\n"}, "x")
    assert (
        text.errors["python_grader_runtime_error"]
        and "not a number" in text.errors["python_grader_runtime_error_details"]
    )


def test_python_grader_limits_time_memory_and_network():
    slow = run_python("def grade(sample, item):\n    while True:\n        pass\n", {}, {}, time_limit=1.5)
    assert slow.value is None and slow.kind == "timeout" and "time limit" in slow.error
    greedy = run_python("def grade(sample, item):\n    x = bytearray(3 << 30)\n    return 1.0\n", {}, {})
    assert greedy.value is None and "memory" in greedy.error.lower()
    with socket.socket() as listener:  # a real listening port on this machine: the grader must not reach it
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        source = ("import socket\ndef grade(sample, item):\n"
                  f"    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    return 1.0\n")  # fmt: skip
        reached = run_python(source, {}, {})
        assert reached.value is None and reached.kind == "runtime", reached
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing reached the port
            listener.accept()
        with socket.create_connection(("127.0.0.1", port)):  # the negative control: a connection is seen
            listener.setblocking(True)
            listener.settimeout(5)
            listener.accept()[0].close()
    fine = run_python("def grade(sample, item):\n    return 0.25\n", {}, {})
    assert fine.value == 0.25 and fine.error is None


def test_multi_grader_formula_and_its_errors():
    multi = {"type": "multi", "name": "m", "graders": {"exact": sc("eq"), "loose": sc("ilike")},
             "calculate_output": "0.7 * exact + 0.3 * loose"}  # fmt: skip
    got = run(multi, "paris")
    assert got.reward == pytest.approx(0.3) and got.sub_rewards == {"exact": 0.0, "loose": 1.0}
    assert run(multi | {"calculate_output": "max(exact, loose) ^ 2"}, "Paris").reward == 1.0
    bad_var = run(multi | {"calculate_output": "exact + precision"}, "Paris")
    assert bad_var.reward == 0.0 and bad_var.errors["invalid_variable_error"]
    assert check(multi | {"calculate_output": "exact + precision"}).startswith("grader.calculate_output:")
    for formula in (
        "__import__('os').system('true')",
        "exact.__class__",
        "[exact]",
        "exact if 1 else 0",
        "exact +",
    ):
        with pytest.raises(FormulaError):
            evaluate(formula, {"exact": 1.0})
    assert evaluate("sqrt(a) + log(exp(b)) - abs(-1) + floor(1.5) + ceil(0.2)", {"a": 4, "b": 2}) == 5.0
    assert run(multi | {"calculate_output": "exact / (loose - loose)"}, "Paris").errors["formula_parse_error"]


def test_model_graders_parse_scores_and_labels():
    """score_model / label_model semantics, with a fixed reply standing in for the grader model (the real
    call through a server is tests/serve/test_graders_endpoint.py)."""

    def says(text):
        return lambda model, messages, params: (text, 7)

    score = {"type": "score_model", "name": "s", "model": "judge", "range": [0, 10],
             "input": [{"role": "user", "content": "Rate {{ sample.output_text }} against {{ item.reference_answer }}"}]}  # fmt: skip
    assert run(score, "Paris", ask=says("Score: 8")).reward == 8.0
    out_of_range = run(score, "Paris", ask=says("11"))
    assert out_of_range.reward == 0.0 and out_of_range.errors["model_grader_parse_error"]
    label = {"type": "label_model", "name": "l", "model": "judge", "labels": ["right", "wrong"],
             "passing_labels": ["right"], "input": [{"role": "user", "content": "{{ sample.output_text }}"}]}  # fmt: skip
    assert (
        run(label, "x", ask=says("Right.")).reward == 1.0 and run(label, "x", ask=says("wrong")).reward == 0.0
    )
    assert run(label, "x", ask=says("maybe")).errors["model_grader_parse_error"]

    def down(model, messages, params):
        raise ConnectionError("connection refused")

    failed = run(score, "x", ask=down)
    assert (
        failed.errors["model_grader_server_error"]
        and "refused" in failed.errors["model_grader_server_error_details"]
    )
    seen = []
    run(score, "Lyon", ask=lambda m, msgs, p: seen.append(msgs) or ("1", 1))
    assert seen[0][0]["content"] == "Rate Lyon against Paris"


def test_check_names_the_bad_key():
    assert check(
        {"type": "string_check", "name": "s", "input": "x", "reference": "y", "operation": "regex"}
    ) == ("grader.operation: one of eq, ne, like, ilike")
    assert "evaluation_metric" in check({"type": "text_similarity", "name": "t", "input": "x", "reference": "y",
                                         "evaluation_metric": "bertscore"})  # fmt: skip
    assert "grade(sample, item)" in check(
        {"type": "python", "name": "p", "source": "def score(s, i): return 1"}
    )
    assert "does not parse" in check({"type": "python", "name": "p", "source": "def grade(:"})
    assert "passing_labels" in check({"type": "label_model", "name": "l", "model": "m", "input": [{"role": "user",
                                      "content": "x"}], "labels": ["a"], "passing_labels": ["b"]})  # fmt: skip
    assert check({"type": "nope", "name": "x"}).startswith("grader.type:")
    assert check(sc("eq")) is None


def test_graders_never_crash_on_shapes_names_or_numbers_they_did_not_expect():
    multi = {"type": "multi", "name": "m", "graders": {"a": sc("eq")}, "calculate_output": "min"}
    assert "not a grader here" in check(multi)
    bare = run(multi, "Paris")
    assert bare.reward == 0.0 and bare.errors["invalid_variable_error"]  # a function name is not a value
    huge = run(multi | {"calculate_output": "a * 1e308 * 10 + 1e308 * 10"}, "Paris")
    assert huge.reward == 0.0 and huge.errors["other_error"]  # inf is not a reward
    nan = run({"type": "python", "name": "p", "source": "def grade(s, i):\n    return float('nan')\n"}, "x")
    assert nan.reward == 0.0 and nan.errors["other_error"]
    label = {"type": "label_model", "name": "l", "model": "m", "input": [{"role": "user", "content": "x"}],
             "labels": [1, 2], "passing_labels": [1]}  # fmt: skip
    assert check(label) == "grader.labels: a list of strings"
    assert "list of messages" in check(
        {"type": "score_model", "name": "s", "model": "m", "input": ["Rate it"]}
    )
    odd = {"type": "score_model", "name": "s", "model": "m", "input": ["Rate it"]}
    got = run(odd, "x", ask=lambda model, messages, params: ("1", 1))
    assert got.reward == 0.0 and any(v is True for v in got.errors.values())  # a reason, not a crash


def test_a_grader_that_starts_a_process_is_stopped_with_it():
    import time

    start = time.monotonic()
    got = run_python("import subprocess\ndef grade(sample, item):\n    subprocess.Popen(['sleep', '600'])\n"
                     "    return 1.0\n", {}, {}, time_limit=5)  # fmt: skip
    assert (
        got.value == 1.0 and time.monotonic() - start < 5
    )  # the sleeping child does not hold the result back


def probe(body: str) -> str:
    """A grader whose grade() runs `body` (indented) and returns its number."""
    return "import os\ndef grade(sample, item):\n" + "".join(f"    {line}\n" for line in body.splitlines())


def test_a_python_grader_sees_nothing_of_the_host_and_writes_only_its_scratch(tmp_path, monkeypatch):
    from lmtailor.graders import sandbox

    assert sandbox.unavailable() is None, sandbox.unavailable()  # make test installs bubblewrap
    home = tmp_path / "home"
    (home / "models" / "tuned").mkdir(parents=True)
    (home / "models" / "tuned" / "model.safetensors").write_text("the weights")
    (home / "jobs.db").write_text("the job store")
    monkeypatch.setenv("LMTAILOR_HOME", str(home))
    monkeypatch.setenv("LMTAILOR_API_KEY", "sk-server-secret")  # the server's environment
    weights = str(home / "models" / "tuned" / "model.safetensors")
    for path in ("/etc/passwd", "/etc/shadow", str(home / "jobs.db"), weights):
        got = run_python(probe(f"return len(open({path!r}).read())"), {}, {})
        assert got.value is None and got.kind == "runtime", (path, got)
        assert "Error" in got.error and path in got.error
    listing = run_python(probe(f"return len(os.listdir({str(home / 'models')!r}))"), {}, {})
    assert listing.value is None and str(home / "models") in listing.error, listing
    outside = run_python(probe(f"open({str(tmp_path / 'planted')!r}, 'w').write('x')\nreturn 1"), {}, {})
    assert outside.kind == "runtime" and not (tmp_path / "planted").exists()
    assert not os.path.exists("/usr/planted")  # so that its absence below means something
    assert run_python(probe("open('/usr/planted', 'w')\nreturn 1"), {}, {}).kind == "runtime"
    assert not os.path.exists("/usr/planted")  # the host's /usr, writable to a root server, is unchanged
    scratch = run_python(
        probe("open('/scratch/a', 'w').write('ok')\nreturn len(open('/scratch/a').read())"), {}, {}
    )
    assert scratch.value == 2.0, scratch
    assert run_python(probe("return float('sk-server-secret' in str(os.environ))"), {}, {}).value == 0.0
    assert run_python(probe("return len([p for p in os.listdir('/proc') if p.isdigit()])"), {}, {}).value <= 2
    if os.geteuid() == 0:  # a root server's grader runs as nobody
        assert run_python(probe("return os.getuid()"), {}, {}).value == 65534.0
    numpy = run_python(
        "import numpy\ndef grade(sample, item):\n    return float(numpy.mean([1, 2]))\n", {}, {}
    )
    assert numpy.value == 1.5, numpy  # the environment's packages are there, read-only


def graders_on_host() -> set[int]:
    """The host's processes that are python graders: their command line names the payload, in the sandbox or
    in the grader's folder (unsandboxed)."""
    from lmtailor.graders import sandbox

    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if any(mark in cmdline.read_bytes() for mark in (sandbox.PAYLOAD.encode(), b"/lmtailor-grader-")):
                found.add(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            pass
    return found


def test_a_python_grader_keeps_to_its_process_and_output_limits():
    import resource
    import time

    from lmtailor.graders.python_runner import OUTPUT_LIMIT, PROCESS_LIMIT

    before = graders_on_host()
    forks = run_python(probe("import time\nn = 0\ntry:\n    for _ in range(200):\n        if os.fork() == 0:\n"
                             "            time.sleep(600)\n            os._exit(0)\n        n += 1\nexcept OSError:\n"
                             "    pass\nreturn n"), {}, {})  # fmt: skip
    assert forks.value is not None and forks.value < PROCESS_LIMIT, forks
    # its children sleep ten minutes: none is left on the host, so they were killed with it
    deadline = time.monotonic() + 2
    while graders_on_host() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not graders_on_host() - before
    big = run_python(
        probe(f"open('/scratch/big', 'wb').write(b'x' * {OUTPUT_LIMIT + (1 << 20)})\nreturn 1"), {}, {}
    )
    assert big.value is None and "File too large" in big.error, big
    spam = run_python(
        probe(f"import sys\nsys.stderr.write('x' * {OUTPUT_LIMIT + (1 << 20)})\nreturn 1"), {}, {}
    )
    assert spam.value is None and "File too large" in spam.error, spam  # its stderr too
    # stdout goes to /dev/null: a gigabyte printed costs the host neither memory nor disk, only the grader's time
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    printed = run_python(probe("import sys\nfor _ in range(1024):\n    sys.stdout.buffer.write(b'x' * (1 << 20))\n"
                               "return 1"), {}, {})  # fmt: skip
    assert printed.value == 1.0, printed
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 64 << 10
    forever = run_python(probe("while True:\n    print('x' * 4096)"), {}, {}, time_limit=2)
    assert forever.kind == "timeout" and forever.seconds < 10, forever


def test_a_python_grader_cannot_make_a_user_namespace_of_its_own(tmp_path):
    """In a user namespace of its own a grader would have the capabilities to mount a tmpfs without bound: the
    sandbox's seccomp program refuses it (root server or not). The negative control: the same sandbox without
    the program lets the same grader make one."""
    import json
    import subprocess
    import sys

    from lmtailor.graders import sandbox
    from lmtailor.graders.python_runner import CHILD

    nest = probe("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                 "return float(libc.unshare(0x10000000) == 0) or -ctypes.get_errno()")  # fmt: skip
    refused = run_python(nest, {}, {})
    assert refused.value == -1.0, refused  # EPERM
    forked = probe("pid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\nreturn 1.0")
    assert run_python(forked, {}, {}).value == 1.0  # processes and threads without new namespaces go on
    threaded = probe("import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()\nreturn 1.0")
    assert run_python(threaded, {}, {}).value == 1.0  # clone3 refused: the C library falls back to clone

    payload, result = tmp_path / "payload.json", tmp_path / "result.json"
    payload.write_text(json.dumps({"source": nest, "sample": {}, "item": {}}))
    result.touch()
    mode = "nobody" if sandbox.as_root() else "sandbox"
    argv = [
        sys.executable,
        "-I",
        "-c",
        CHILD,
        sandbox.PAYLOAD,
        str(1 << 30),
        sandbox.RESULT,
        "32",
        "1000000",
        mode,
    ]
    subprocess.run(sandbox.sandboxed(argv, str(payload), str(result)), check=True, timeout=60)
    if not sandbox.as_root():  # bwrap's --disable-userns refuses it too, with ENOSPC
        assert json.loads(result.read_text())["value"] == -28.0
    else:  # nobody, with nothing but the seccomp program in its way
        assert json.loads(result.read_text())["value"] == 1.0


def test_without_a_sandbox_a_server_refuses_python_graders_unless_its_operator_trusts_them(monkeypatch):
    from lmtailor.graders import sandbox

    grader = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 0.5\n"}
    monkeypatch.setenv(sandbox.BWRAP_ENV, "/nonexistent/bwrap")  # a machine without bubblewrap
    sandbox.unavailable.cache_clear()
    try:
        monkeypatch.delenv(sandbox.TRUST_ENV, raising=False)
        why = check(grader, "grader", server=True)
        assert "bubblewrap" in why and "--trust-graders" in why and why.startswith("grader: ")
        assert check({"type": "multi", "name": "m", "graders": {"p": grader}, "calculate_output": "p"},
                     server=True).startswith("grader.graders.p: ")  # fmt: skip
        assert check(grader) is None and run_python(grader["source"], {}, {}).value == 0.5  # a CLI run: yours
        monkeypatch.setenv(sandbox.TRUST_ENV, "0")  # a server's job process
        refused = run_python(grader["source"], {}, {})
        assert refused.value is None and "bubblewrap" in refused.error and check(grader) is not None
        monkeypatch.setenv(sandbox.TRUST_ENV, "1")  # lmtailor serve --trust-graders
        assert check(grader, server=True) is None and run_python(grader["source"], {}, {}).value == 0.5
        # the negative control of the sandbox tests above: unsandboxed, the same grader reads the host's file
        assert run_python(probe("return len(open('/etc/passwd').read())"), {}, {}).value > 0
    finally:
        monkeypatch.undo()
        sandbox.unavailable.cache_clear()
