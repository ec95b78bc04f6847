"""Several training files in one run: the shares and counts weights ask for, a seeded draw that is recorded, the
validation split per file, `--data FILE[:WEIGHT]` errors in one line, and a loss per file in a short real run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lmtailor.cli import app
from lmtailor.data.mix import counts, load_mixture, shares, source_names
from lmtailor.errors import SpecError
from lmtailor.specs import DataSource, TrainSpec, build_spec, data_option, load_spec
from lmtailor.train.core import output_dir
from lmtailor.train.supervised import load_train_val


def qa_file(path: Path, n: int, topic: str) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"{topic} question {i}?"},
                          {"role": "assistant", "content": f"{topic} answer {i}."}]} for i in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {"a": qa_file(tmp_path / "a.jsonl", 10, "alpha"), "b": qa_file(tmp_path / "b.jsonl", 30, "beta")}


def drawn(train) -> Counter:
    return Counter(r.extra["source"] for r in train)


def test_shares_and_counts_follow_the_weights() -> None:
    assert shares([None, None], [10, 30]) == [0.25, 0.75]  # no weight: by rows
    assert shares([0.5, None, None], [10, 30, 10]) == [0.5, 0.375, 0.125]  # the rest by rows
    assert shares([0.2, 0.6], [10, 30]) == pytest.approx([0.25, 0.75])  # every file weighted: scaled to 1
    assert counts([0.5, 0.5], [10, 30]) == [20, 20]
    assert counts([0.999, 0.001], [10, 30]) == [40, 1]  # a weighted file gives at least one row
    listed = [DataSource(path="x/a.jsonl"), DataSource(path="y/a.jsonl"), DataSource(path="my data.csv"),
              DataSource(path="files/file-123.jsonl", name="support")]  # fmt: skip
    assert source_names(listed) == ["a", "a-2", "my_data", "support"]


def test_without_weights_every_row_of_every_file_is_used_once(files: dict[str, Path]) -> None:
    train, val = load_mixture(TrainSpec(data=[str(files["a"]), str(files["b"])]))
    assert drawn(train) == {"a": 10, "b": 30} and val == []
    assert sorted(r.line for r in train if r.extra["source"] == "b") == list(range(1, 31))
    assert [(s.name, s.rows_available, s.rows_drawn, s.weight) for s in train.sources] == [
        ("a", 10, 10, 0.25), ("b", 30, 30, 0.75)]  # fmt: skip


def test_weights_give_the_counts_they_ask_for(files: dict[str, Path]) -> None:
    # N = 40 rows; a asks for half (20 of its 10 rows: all twice), b gets the rest (20 of its 30, no repeats)
    train, _ = load_mixture(TrainSpec(data=[f"{files['a']}:0.5", str(files["b"])], seed=3))
    assert len(train) == 40 and drawn(train) == {"a": 20, "b": 20}
    a_lines = Counter(r.line for r in train if r.extra["source"] == "a")
    assert a_lines == {line: 2 for line in range(1, 11)}
    b_lines = [r.line for r in train if r.extra["source"] == "b"]
    assert len(set(b_lines)) == 20  # without replacement
    record = {s.name: (s.weight_given, s.weight, s.rows_available, s.rows_drawn) for s in train.sources}
    assert record == {"a": (0.5, 0.5, 10, 20), "b": (None, 0.5, 30, 20)}
    # a share past a file's rows: all of them repeated, and the rest drawn
    train, _ = load_mixture(TrainSpec(data=[f"{files['a']}:0.6", f"{files['b']}:0.4"], seed=3))
    assert drawn(train) == {"a": 24, "b": 16}
    assert sorted(Counter(r.line for r in train if r.extra["source"] == "a").values()) == [2] * 6 + [3] * 4
    # weights that do not sum to 1, all given: scaled (0.2 : 0.6 is 1 : 3)
    train, _ = load_mixture(TrainSpec(data=[f"{files['a']}:0.2", f"{files['b']}:0.6"]))
    assert drawn(train) == {"a": 10, "b": 30}


def test_the_seeded_draw_is_reproducible_and_recorded(files: dict[str, Path]) -> None:
    spec = TrainSpec(data=[str(files["a"]), f"{files['b']}:0.25"], seed=11)
    lines = lambda train: [(r.extra["source"], r.line) for r in train]  # noqa: E731
    first, again = load_mixture(spec)[0], load_mixture(spec)[0]
    assert lines(first) == lines(again)
    other = load_mixture(spec.model_copy(update={"seed": 12}))[0]
    assert drawn(other) == drawn(first) == {"a": 30, "b": 10} and lines(other) != lines(first)
    assert first.seed == 11
    b = next(s for s in first.sources if s.name == "b")
    import hashlib

    assert (
        b.path == str(files["b"].resolve())
        and b.sha256 == hashlib.sha256(files["b"].read_bytes()).hexdigest()
    )


def test_validation_is_held_out_of_each_file(files: dict[str, Path]) -> None:
    spec = TrainSpec(data=[str(files["a"]), f"{files['b']}:0.5"], val_ratio=0.2, seed=5)
    train, val = load_train_val(spec)
    assert drawn(val) == {"a": 2, "b": 6}  # 20% of each file
    held = {(r.extra["source"], r.line) for r in val}
    assert not held & {(r.extra["source"], r.line) for r in train}  # never drawn for training as well
    assert {s.name: (s.rows, s.val_rows, s.rows_available) for s in train.sources} == {
        "a": (10, 2, 8), "b": (30, 6, 24)}  # fmt: skip
    assert drawn(train) == {"a": 16, "b": 16}  # N = 8 + 24 = 32, half each


def test_one_file_stays_the_plain_path(files: dict[str, Path]) -> None:
    assert TrainSpec(data=[str(files["a"])]).data == str(files["a"])
    assert data_option([f"{files['a']}:0.3"]) == str(files["a"])  # a weight alone is the whole mixture
    train, _ = load_train_val(TrainSpec(data=str(files["a"])))
    assert not hasattr(train, "sources") and "source" not in train[0].extra
    out = output_dir(TrainSpec(model="m", data=[str(files["a"]), str(files["b"])]), None)
    assert out.name.startswith("m-a+b-")


def test_yaml_lists_take_every_form(files: dict[str, Path], tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"data: [{files['a']}, '{files['b']}:0.3']\n", encoding="utf-8")
    spec = load_spec(TrainSpec, spec_file, {})
    assert [(s.path, s.weight) for s in spec.data_sources()] == [
        (str(files["a"]), None),
        (str(files["b"]), 0.3),
    ]
    spec_file.write_text(
        f"data:\n  - path: {files['a']}\n  - {{path: {files['b']}, weight: 0.3}}\n", encoding="utf-8"
    )
    assert load_spec(TrainSpec, spec_file, {}).data_sources()[1].weight == 0.3
    assert TrainSpec(**spec.model_dump()).data == spec.data  # the launcher's spec.json round trip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["a.jsonl", "a.jsonl"], "spec: data: a.jsonl: the same file twice (first as a.jsonl)"),
        (["a.jsonl:1.5", "b"], "spec: data: a.jsonl:1.5: weight 1.5 must be above 0 and at most 1"),
        (["a.jsonl:0.7", "b:0.5", "c"], "spec: data: weights 0.7 + 0.5 sum to 1.2, leaving no share for c"),
        ([{"path": "a", "weight": 0.2, "w": 1}, "b"], "a training file is FILE, FILE:WEIGHT or {path: FILE"),
    ],
)
def test_bad_lists_in_a_spec(data: list, message: str) -> None:
    with pytest.raises(SpecError) as e:
        build_spec(TrainSpec, {"data": data})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_dpo_and_rft_take_one_file() -> None:
    with pytest.raises(SpecError, match="method dpo trains on one data file; several are mixed for sft only"):
        build_spec(TrainSpec, {"data": ["a", "b"], "method": "dpo"})


def test_a_path_with_a_colon_and_no_number_after_it_is_a_path(tmp_path: Path) -> None:
    spec = TrainSpec(data=["logs:v2.jsonl", "C:\\data\\b.jsonl", "c.jsonl:0.5"])
    assert [(s.path, s.weight) for s in spec.data_sources()] == [
        ("logs:v2.jsonl", None), ("C:\\data\\b.jsonl", None), ("c.jsonl", 0.5)]  # fmt: skip
    odd = qa_file(tmp_path / "odd.jsonl:2", 2, "odd")  # a file whose whole name ends in :2 is that file
    assert TrainSpec(data=[str(odd), "z.jsonl"]).data_sources()[0].path == str(odd)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["{a}", "b.jsonl:0.3"], "--data b.jsonl:0.3: file not found: b.jsonl"),
        (["{a}", "{b}:0"], "--data {b}:0: weight 0 must be above 0 and at most 1 (its share of the mixture)"),
        (["{a}", "{b}:-0.5"], "--data {b}:-0.5: weight -0.5 must be above 0"),
        (["{a}", "{b}:1.5"], "--data {b}:1.5: weight 1.5 must be above 0 and at most 1"),
        (["{a}", "{b}:0.3x"], "--data {b}:0.3x: weight '0.3x' is not a number"),
        (["{a}:", "{b}"], "--data {a}:: no weight after ':' (write FILE or FILE:WEIGHT, e.g. a.jsonl:0.3)"),
        (["{a}", "{b}", "{a}:0.2"], "--data {a}:0.2: the same file twice (first as {a})"),
        (["{a}:0.6", "{b}:0.5", "{c}"], "--data weights 0.6 + 0.5 sum to 1.1, leaving no share for {c}"),
    ],
)
def test_each_bad_data_value_is_one_line_from_the_cli(files, tmp_path: Path, values, message) -> None:
    names = {"a": files["a"], "b": files["b"], "c": qa_file(tmp_path / "c.jsonl", 3, "gamma")}
    args = [v.format(**names) for v in values]
    argv = ["train", "--model", "m", "--dry-run"] + [x for v in args for x in ("--data", v)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1, result.output
    shown = " ".join(result.output.split())  # the terminal may wrap a long line
    assert message.format(**names) in shown and "Traceback" not in result.output
    assert result.output.count("error:") == 1


def test_a_short_run_on_two_files_reports_a_loss_per_file(
    tiny_llama_dir: Path, files, tmp_path: Path
) -> None:
    from lmtailor.train.sft import run_sft

    out = tmp_path / "mixed"
    logged: list[str] = []
    spec = TrainSpec(model=str(tiny_llama_dir), data=[str(files["a"]), f"{files['b']}:0.25"], output=str(out),
                     val_ratio=0.2, strategy="full", epochs=1, batch_size=8, learning_rate=1e-3, precision="fp32",
                     retention=False, seed=2)  # fmt: skip
    run_sft(spec, home=tmp_path / "home", progress=False, log=logged.append)
    assert any(line.startswith("  source a: 8 rows available, 24 drawn, weight 0.750") for line in logged)
    assert any(
        line.startswith("  source b: 24 rows available, 8 drawn, weight 0.250 (given 0.25)")
        for line in logged
    )
    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    sources = {s["name"]: s for s in card["data"]["sources"]}
    assert {n: (s["rows_available"], s["rows_drawn"], s["val_rows"], s["weight_given"]) for n, s in sources.items()} == {
        "a": (8, 24, 2, None), "b": (24, 8, 6, 0.25)}  # fmt: skip
    assert sources["b"]["sha256"] and card["data"]["mix_seed"] == 2 and card["data"]["train"]["rows"] == 32
    assert card["data"]["val"] == {"rows": 8, "by_source": {"a": 2, "b": 6}}
    assert {"eval_loss", "eval_a_loss", "eval_b_loss"} <= set(card["metrics"])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any("eval_loss" in r for r in rows) and any(
        "eval_a_loss" in r and "eval_b_loss" in r for r in rows
    )


def test_eval_reports_scores_per_source_when_rows_carry_one() -> None:
    from lmtailor.evaluate import metrics as M
    from lmtailor.evaluate.answers import EvalRow, ModelRun
    from lmtailor.evaluate.runner import scores_by_source

    rows = [EvalRow([{"role": "user", "content": "q"}], ref, i, src)
            for i, (ref, src) in enumerate([("a", "x"), ("b", "x"), ("c", "y"), ("d", "y"), ("e", "y")])]  # fmt: skip
    answers = ["a", "no", "c", "d", "no"]
    scores = M.score(["exact_match", "chrf"], answers, [r.reference for r in rows])
    run = ModelRun("m", "local", "fp", answers, 5, 0, 0.0, scores)
    by = scores_by_source(rows, run)
    assert by["x"]["exact_match"] == {"value": 0.5, "count": 2}
    assert by["y"]["exact_match"] == {"value": pytest.approx(2 / 3), "count": 3}
    assert by["y"]["chrf"]["count"] == 3 and by["y"]["chrf"]["value"] != scores["chrf"].value
    for r in rows:
        r.source = "x"
    assert scores_by_source(rows, run) is None  # one source: nothing to split
    for r in rows:
        r.source = None
    assert scores_by_source(rows, run) is None


def test_eval_reads_the_source_key_into_metrics_json(
    tiny_llama_dir: Path, tmp_path: Path, lmtailor_home
) -> None:
    from lmtailor.evaluate import runner
    from lmtailor.evaluate.spec import EvalSpec

    rows = [{"messages": [{"role": "user", "content": f"Q{i}"}], "reference": "yes", "source": src}
            for i, src in enumerate(["support", "support", "general"])]  # fmt: skip
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    spec = EvalSpec(models=[str(tiny_llama_dir)], data=str(data), output=str(tmp_path / "ev"), metrics=["contains"],
                    max_new_tokens=2, bootstrap=100)  # fmt: skip
    result = runner.run_eval(spec, home=lmtailor_home, log=lambda s: None)
    by = result["models"][0]["by_source"]
    assert {k: v["contains"]["count"] for k, v in by.items()} == {"support": 2, "general": 1}
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["models"][0]["by_source"] == by and "scores" in saved["models"][0]
