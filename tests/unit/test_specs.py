"""TrainSpec at the door: unknown keys named with the valid ones, flags over YAML, bad values name their field."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmtailor.errors import SpecError
from lmtailor.specs import TrainSpec, build_spec, load_spec


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_yaml_key_is_named_with_every_valid_key(tmp_path: Path) -> None:
    spec_file = write(tmp_path / "train.yaml", "data: d.jsonl\nlearning_rat: 0.001\n")
    with pytest.raises(SpecError) as e:
        load_spec(TrainSpec, spec_file, {})
    message = str(e.value)
    assert message.startswith(f"{spec_file}: unknown key 'learning_rat'; valid keys: model, data, ")
    listed = message.split("valid keys: ", 1)[1].split(", ")
    assert listed == list(TrainSpec.model_fields)
    assert {"learning_rate", "lora_r", "epochs", "strategy", "packing"} <= set(listed)


def test_two_unknown_keys_are_both_reported(tmp_path: Path) -> None:
    spec_file = write(tmp_path / "train.yaml", "data: d.jsonl\nlr: 1\nbatch: 2\n")
    with pytest.raises(SpecError) as e:
        load_spec(TrainSpec, spec_file, {})
    lines = str(e.value).splitlines()
    assert [line.split(";")[0] for line in lines] == [
        f"{spec_file}: unknown key 'lr'",
        f"{spec_file}: unknown key 'batch'",
    ]


def test_flags_override_yaml_and_none_flags_are_left_out(tmp_path: Path) -> None:
    spec_file = write(
        tmp_path / "train.yaml",
        "data: from-yaml.jsonl\nepochs: 3\nlearning_rate: 0.0001\nstrategy: lora\nlora_r: 8\npacking: false\n",
    )
    spec = load_spec(
        TrainSpec,
        spec_file,
        {"epochs": 5, "learning_rate": None, "lora_r": 16, "data": "from-flag.jsonl", "packing": None},
    )
    assert (spec.data, spec.epochs, spec.learning_rate, spec.strategy, spec.lora_r, spec.packing) == (
        "from-flag.jsonl",
        5.0,
        1e-4,
        "lora",
        16,
        False,
    )
    assert spec.model == "smollm2-135m-instruct"  # untouched defaults stay


def test_flags_alone_without_a_file() -> None:
    spec = load_spec(TrainSpec, None, {"data": "d.jsonl", "batch_size": 2})
    assert (spec.data, spec.batch_size, spec.epochs, spec.strategy) == ("d.jsonl", 2, None, "auto")


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"lora_r": 0}, "spec: lora_r: Input should be greater than or equal to 1"),
        ({"learning_rate": -1}, "spec: learning_rate: Input should be greater than 0"),
        ({"val_ratio": 1.0}, "spec: val_ratio: Input should be less than 1"),
        (
            {"strategy": "qlora2"},
            "spec: strategy: Input should be 'auto', 'lora', 'qlora', 'full' or 'freeze'",
        ),
        ({"epochs": "many"}, "spec: epochs: Input should be a valid number"),
        ({"max_length": 4}, "spec: max_length: Input should be greater than or equal to 8"),
    ],
)
def test_bad_values_name_the_field(fields: dict, expected: str) -> None:
    with pytest.raises(SpecError) as e:
        build_spec(TrainSpec, {"data": "d.jsonl", **fields})
    assert str(e.value).startswith(expected)


def test_missing_required_data() -> None:
    with pytest.raises(SpecError) as e:
        build_spec(TrainSpec, {"model": "m"}, where="job.yaml")
    assert str(e.value) == "job.yaml: data: Field required"


def test_freeze_options_need_the_freeze_strategy() -> None:
    with pytest.raises(SpecError) as e:
        build_spec(TrainSpec, {"data": "d.jsonl", "freeze_layers": 2})
    assert (
        str(e.value) == "spec: freeze_layers / freeze_modules need strategy: freeze"
    )  # a rule, in its words
    with pytest.raises(SpecError) as e:
        build_spec(TrainSpec, {"data": "d.jsonl", "method": "dpo", "devices": 2})
    assert str(e.value) == "spec: method dpo trains on one process: devices and nodes are for sft"
    spec = build_spec(TrainSpec, {"data": "d.jsonl", "strategy": "freeze", "freeze_layers": 2})
    assert spec.freeze_layers == 2


def test_assignment_is_validated_too() -> None:
    spec = build_spec(TrainSpec, {"data": "d.jsonl"})
    with pytest.raises(ValueError, match="lora_r"):
        spec.lora_r = 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data: [unclosed\n", "invalid YAML"),
        ("- data: d.jsonl\n", "a spec is a mapping of keys to values"),
    ],
)
def test_bad_spec_files(tmp_path: Path, text: str, expected: str) -> None:
    spec_file = write(tmp_path / "train.yaml", text)
    with pytest.raises(SpecError) as e:
        load_spec(TrainSpec, spec_file, {})
    assert str(e.value).startswith(f"{spec_file}: {expected}")


def test_missing_spec_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as e:
        load_spec(TrainSpec, tmp_path / "nope.yaml", {"data": "d.jsonl"})
    assert str(e.value) == f"spec file not found: {tmp_path / 'nope.yaml'}"


def test_empty_yaml_file_is_an_empty_mapping(tmp_path: Path) -> None:
    spec = load_spec(TrainSpec, write(tmp_path / "train.yaml", ""), {"data": "d.jsonl"})
    assert spec.data == "d.jsonl"


def test_options_a_method_does_not_use_are_refused_in_one_line(tmp_path: Path) -> None:
    """Not silently ignored: eval_metrics generates answers for sft's validation rows; keep-best and early
    stopping watch eval_loss, which DPO's validation measures and GRPO's does not."""
    from typer.testing import CliRunner

    from lmtailor.cli import app

    data = write(tmp_path / "p.jsonl", '{"prompt": "q", "chosen": "a", "rejected": "b"}\n')
    result = CliRunner().invoke(app, ["train", "--method", "dpo", "--data", str(data), "--eval-metrics", "contains",
                                      "--home", str(tmp_path / "home")])  # fmt: skip
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "method dpo: eval_metrics is for sft (" in result.output
    refused = "method reinforcement: keep_best and early_stopping_patience are for sft and dpo"
    with pytest.raises(SpecError, match=refused):
        build_spec(TrainSpec, {"data": "r.jsonl", "method": "reinforcement", "early_stopping_patience": 2})
    dpo = {"data": "p.jsonl", "method": "dpo", "keep_best": True, "early_stopping_patience": 2}
    spec = build_spec(TrainSpec, dpo)
    assert spec.keep_best and spec.early_stopping_patience == 2  # DPO's validation loss is watched
