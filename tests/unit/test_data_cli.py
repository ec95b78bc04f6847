"""`lmtailor data …` through typer's CliRunner: output, files written, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmtailor.cli.data import data_app

runner = CliRunner()


def chat(q: str, a: str, **extra: object) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}], **extra}


def write(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows)
    )
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write(
        tmp_path / "data.jsonl",
        [
            chat("你好", "你好！", reference="hi"),  # 1
            {"instruction": "Add", "input": "2 and 2", "output": "4"},  # 2
            "{broken",  # 3
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},  # 4
            {"messages": [{"role": "user", "content": "only a question"}]},  # 5
        ],
    )


def test_inspect_shows_counts_and_bad_rows(data: Path) -> None:
    result = runner.invoke(data_app, ["inspect", str(data)])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "chat: 1, alpaca: 1, sharegpt: 1" in out
    assert "user: 3, assistant: 3" in out
    assert "reference: 1" in out
    assert "2 bad rows" in result.stderr
    assert "last message is 'user'" in result.stderr


def test_inspect_with_model_shows_token_percentiles(data: Path, tiny_llama_dir: Path, tokenizer) -> None:
    result = runner.invoke(data_app, ["inspect", str(data), "--model", str(tiny_llama_dir)])
    assert result.exit_code == 0, result.output
    from lmtailor.data.formats import load_records
    from lmtailor.data.validate import token_length

    records = load_records(data, on_error="skip").records
    lengths = sorted(token_length(tokenizer, r) for r in records)
    assert f"max {lengths[-1]}" in result.stdout


def test_validate_lists_bad_rows_as_file_line_reason_and_exits_1(data: Path) -> None:
    result = runner.invoke(data_app, ["validate", str(data)])
    assert result.exit_code == 1
    bad = result.stdout.splitlines()
    assert bad[0].startswith(f"{data}:3: invalid JSON: ")
    assert bad[1] == f"{data}:5: last message is 'user'; a training row must end with an assistant message"
    assert "2 of 5 rows bad" in result.stderr


def test_validate_ok_file(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.jsonl", [chat("q", "a"), chat("q2", "a2")])
    result = runner.invoke(data_app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok: 2 rows (chat: 2)" in result.stdout


def test_validate_max_length_with_model(tmp_path: Path, tiny_llama_dir: Path, tokenizer) -> None:
    path = write(tmp_path / "d.jsonl", [chat("q", "a"), chat("question " * 20, "a long answer")])
    from lmtailor.data.formats import load_records
    from lmtailor.data.validate import token_length

    n = token_length(tokenizer, load_records(path).records[1])
    limit = token_length(tokenizer, load_records(path).records[0])
    result = runner.invoke(
        data_app, ["validate", str(path), "--model", str(tiny_llama_dir), "--max-length", str(limit)]
    )
    assert result.exit_code == 1
    assert f"{path}:2: over-long: {n} tokens > max_length {limit}" in result.stdout.splitlines()
    assert f"{path}:1:" not in result.stdout


def test_validate_max_length_needs_model(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [chat("q", "a")])
    result = runner.invoke(data_app, ["validate", str(path), "--max-length", "5"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: --max-length needs --model (its tokenizer counts the tokens)"


def test_missing_file_is_one_error_line_without_traceback(tmp_path: Path) -> None:
    result = runner.invoke(data_app, ["inspect", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'nope.jsonl'}: file not found"
    assert "Traceback" not in result.output


def test_clean_writes_chat_jsonl_and_reports(tmp_path: Path) -> None:
    path = write(
        tmp_path / "raw.jsonl",
        [
            chat("  Mail me at a@b.com  ", "Sure."),
            chat("mail me at a@b.com", "sure."),  # duplicate once normalised
            "{broken",
            {"instruction": "电话是多少？", "output": "13812345678"},
        ],
    )
    out = tmp_path / "clean" / "clean.jsonl"
    result = runner.invoke(data_app, ["clean", str(path), "--output", str(out), "--mask-pii"])
    assert result.exit_code == 0, result.output
    assert read_jsonl(out) == [chat("Mail me at <EMAIL>", "Sure."), chat("电话是多少？", "<PHONE>")]
    assert "1 skipped invalid rows" in result.stderr
    report = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in result.stdout.splitlines()
        if "│" in line
    }
    assert report["input"] == "3" and report["invalid"] == "1" and report["kept"] == "2"
    assert report["duplicate"] == "1" and report["emails masked"] == "2" and report["phones masked"] == "1"


def test_clean_on_error_fail_lists_bad_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "raw.jsonl", [chat("q", "a"), "{broken"])
    out = tmp_path / "clean.jsonl"
    result = runner.invoke(data_app, ["clean", str(path), "-o", str(out), "--on-error", "fail"])
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert lines[0] == f"error: {path}: 1 bad row:"
    assert lines[1].startswith(f"  {path}:2: invalid JSON: ")
    assert not out.exists()


def test_clean_no_dedup_keeps_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path / "raw.jsonl", [chat("q", "a"), chat("q", "a")])
    out = tmp_path / "clean.jsonl"
    result = runner.invoke(data_app, ["clean", str(path), "-o", str(out), "--no-dedup"])
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out)) == 2


def test_clean_max_tokens_needs_model(tmp_path: Path) -> None:
    path = write(tmp_path / "raw.jsonl", [chat("q", "a")])
    result = runner.invoke(
        data_app, ["clean", str(path), "-o", str(tmp_path / "o.jsonl"), "--max-tokens", "5"]
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: --max-tokens needs --model (its tokenizer counts the tokens)"


def test_split_writes_three_files_deterministically(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [chat(f"q{i}", f"答{i}") for i in range(20)])
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        result = runner.invoke(data_app, ["split", str(path), "--output-dir", str(out), "--seed", "5"])
        assert result.exit_code == 0, result.output
    sizes = {name: len(read_jsonl(first / f"{name}.jsonl")) for name in ("train", "val", "test")}
    assert sizes == {"train": 16, "val": 2, "test": 2}
    for name in ("train", "val", "test"):
        assert (first / f"{name}.jsonl").read_text() == (second / f"{name}.jsonl").read_text()
    rows = [row for name in ("train", "val", "test") for row in read_jsonl(first / f"{name}.jsonl")]
    assert sorted(r["messages"][0]["content"] for r in rows) == sorted(f"q{i}" for i in range(20))
    assert "答" in (first / "train.jsonl").read_text(encoding="utf-8")  # not \u-escaped


def test_split_two_ratios_writes_two_files(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", [chat(f"q{i}", "a") for i in range(10)])
    out = tmp_path / "s"
    result = runner.invoke(data_app, ["split", str(path), "-o", str(out), "--ratios", "0.7,0.3"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl", "val.jsonl"]
    assert len(read_jsonl(out / "val.jsonl")) == 3


@pytest.mark.parametrize(
    ("ratios", "message"),
    [
        ("0.8,x", "--ratios must be comma-separated numbers"),
        ("0.5,0.1,0.1", "split ratios must sum to 1, got 0.7"),
    ],
)
def test_split_bad_ratios(tmp_path: Path, ratios: str, message: str) -> None:
    path = write(tmp_path / "d.jsonl", [chat("q", "a")])
    result = runner.invoke(data_app, ["split", str(path), "-o", str(tmp_path / "s"), "--ratios", ratios])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {message}")


def test_every_command_help_has_an_example() -> None:
    for command in ("inspect", "validate", "clean", "split"):
        result = runner.invoke(data_app, [command, "--help"])
        assert result.exit_code == 0
        assert f"Example: lmtailor data {command} " in result.stdout


def test_importing_the_cli_loads_no_torch_or_transformers() -> None:
    code = (
        "import sys, lmtailor.cli.data\n"
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'pyarrow') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
