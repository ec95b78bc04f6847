"""Checkpoints: an interrupted run resumed ends where an uninterrupted run ends; continued training names its parent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmtailor.specs import TrainSpec
from lmtailor.train.callbacks import ProgressCallback
from lmtailor.train.sft import run_sft

EXTRA_ROWS = [
    ("What is the capital of Italy?", "Rome."),
    ("What is 3 + 3?", "6."),
    ("Which animal barks?", "A dog."),
    ("What is frozen water called?", "Ice."),
]


class Interrupted(Exception):
    pass


def spec_for(model: Path, data: Path, out: Path, **fields) -> TrainSpec:
    base = dict(
        model=str(model),
        data=str(data),
        output=str(out),
        strategy="full",
        epochs=2,
        batch_size=4,
        learning_rate=1e-3,
        save_steps=2,
        save_total_limit=10,
        packing=True,
        precision="fp32",
        seed=7,
        replay_ratio=0.0,  # resuming is about the user's rows; replay and retention have tests of their own
        retention=False,
    )
    return TrainSpec(**{**base, **fields})


def loss_rows(out: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def crash_after_checkpoint_2(spec: TrainSpec, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `spec` and crash right after it writes checkpoint-2: no final weights, no card."""

    def crash(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise Interrupted

    with monkeypatch.context() as patch, pytest.raises(Interrupted):
        patch.setattr(ProgressCallback, "on_save", crash, raising=False)
        run_sft(spec, home=home, progress=False, log=lambda *_: None)


def test_resumed_run_equals_uninterrupted_run(tiny_llama_dir, tiny_chat_file, tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    quiet = lambda *_: None  # noqa: E731
    a = run_sft(
        spec_for(tiny_llama_dir, tiny_chat_file, tmp_path / "a"), home=home, progress=False, log=quiet
    )
    card_a = json.loads((a / "lmtailor.json").read_text(encoding="utf-8"))
    assert card_a["metrics"]["steps"] == 8  # 4 packed rows x 2 epochs

    # Run B crashes right after writing checkpoint-2: no final weights, no card.
    spec_b = spec_for(tiny_llama_dir, tiny_chat_file, tmp_path / "b")
    crash_after_checkpoint_2(spec_b, home, monkeypatch)
    b = tmp_path / "b"
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["checkpoint-2", "rows.json"]
    assert not (b / "lmtailor.json").exists() and not (b / "model.safetensors").exists()
    # a process killed while saving the next checkpoint leaves its folder without trainer_state.json
    half = b / "checkpoints" / "checkpoint-4"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 64)

    logs: list[str] = []
    assert (
        run_sft(spec_b.model_copy(update={"resume": True}), home=home, progress=False, log=logs.append) == b
    )
    assert not any("starting from the beginning" in line for line in logs)
    card_b = json.loads((b / "lmtailor.json").read_text(encoding="utf-8"))
    assert card_b["metrics"]["steps"] == 8

    # Same losses at every logged step (2 before the crash, 4, 6, 8 after), same final weights.
    steps_a, losses_a = zip(*loss_rows(a), strict=True)
    steps_b, losses_b = zip(*loss_rows(b), strict=True)
    assert steps_a == steps_b == (2, 4, 6, 8)
    torch.testing.assert_close(torch.tensor(losses_b), torch.tensor(losses_a), atol=1e-5, rtol=0)
    weights_a, weights_b = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert set(weights_a) == set(weights_b)
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], atol=1e-5, rtol=0, msg=key)
    base = load_file(tiny_llama_dir / "model.safetensors")
    assert not torch.equal(base["model.norm.weight"], weights_a["model.norm.weight"])  # training did move it


def test_a_resume_over_other_rows_is_refused_and_keeps_the_checkpoint(
    tiny_llama_dir, tiny_chat_file, write_chat, tmp_path, monkeypatch
) -> None:
    """The Trainer resumes by skipping the steps already done: over other rows or batches that would train the
    wrong ones, so lmtailor records what the run trains and refuses a resume that differs, in words."""
    from lmtailor.errors import LmtailorError
    from lmtailor.train.core import ROWS_FILE

    home, quiet = tmp_path / "home", (lambda *_: None)
    spec = spec_for(tiny_llama_dir, tiny_chat_file, tmp_path / "r")
    crash_after_checkpoint_2(spec, home, monkeypatch)
    out = tmp_path / "r"
    record = json.loads((out / "checkpoints" / ROWS_FILE).read_text(encoding="utf-8"))
    assert (record["rows"], record["batch_size"], record["seed"]) == (12, 4, 7)

    rows = [json.loads(line) for line in tiny_chat_file.read_text(encoding="utf-8").splitlines()]
    more = write_chat(tmp_path / "more.jsonl", [(r["messages"][-2]["content"], r["messages"][-1]["content"])
                                                for r in rows] + EXTRA_ROWS, {})  # fmt: skip
    with pytest.raises(LmtailorError, match="12 rows then, 16 now") as refused:
        run_sft(
            spec.model_copy(update={"resume": True, "data": str(more)}), home=home, progress=False, log=quiet
        )
    assert "cannot resume from checkpoint-2" in str(refused.value) and "another output folder" in str(
        refused.value
    )
    longest = record["max_length"]  # packed differently with a longer limit, though no row changes
    with pytest.raises(LmtailorError, match=f"max_length {longest} then, {longest + 100} now"):
        run_sft(
            spec.model_copy(update={"resume": True, "max_length": longest + 100}),
            home=home,
            progress=False,
            log=quiet,
        )
    with pytest.raises(LmtailorError, match="batch_size 4 then, 2 now"):
        run_sft(
            spec.model_copy(update={"resume": True, "batch_size": 2}), home=home, progress=False, log=quiet
        )
    edited = tmp_path / "edited.jsonl"  # as many rows, one answer changed
    edited.write_text(tiny_chat_file.read_text(encoding="utf-8").replace("Paris", "Lyon"), encoding="utf-8")
    assert edited.read_text(encoding="utf-8") != tiny_chat_file.read_text(encoding="utf-8")
    with pytest.raises(LmtailorError, match="the rows' content"):
        run_sft(
            spec.model_copy(update={"resume": True, "data": str(edited)}),
            home=home,
            progress=False,
            log=quiet,
        )
    assert (out / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()  # nothing lost

    # checkpoints written before lmtailor recorded its rows resume unchecked, and say so (the same rows resume
    # checked in test_resumed_run_equals_uninterrupted_run)
    (out / "checkpoints" / ROWS_FILE).unlink()
    logs: list[str] = []
    run_sft(spec.model_copy(update={"resume": True}), home=home, progress=False, log=logs.append)
    assert json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))["metrics"]["steps"] == 8
    assert (
        "resuming from checkpoint-2; the run that wrote it did not record its rows, so they are not checked"
        in logs
    )


def test_a_fresh_run_clears_an_earlier_runs_checkpoints(tiny_llama_dir, tiny_chat_file, tmp_path) -> None:
    """A new run into a folder whose checkpoints an earlier run left must not resume from them later."""
    out = tmp_path / "f"
    old = out / "checkpoints" / "checkpoint-99"
    old.mkdir(parents=True)
    (old / "trainer_state.json").write_text("{}", encoding="utf-8")
    logs: list[str] = []
    spec = spec_for(tiny_llama_dir, tiny_chat_file, out, epochs=1, keep_checkpoints=True)
    run_sft(spec, home=tmp_path / "home", progress=False, log=logs.append)
    assert not old.exists()
    assert f"removed 1 checkpoint(s) of an earlier run in {out / 'checkpoints'}" in logs
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "checkpoint-2",
        "checkpoint-4",
        "rows.json",
    ]


def test_resume_without_checkpoint_starts_from_the_beginning(
    tiny_llama_dir, tiny_chat_file, tmp_path
) -> None:
    logs: list[str] = []
    spec = spec_for(tiny_llama_dir, tiny_chat_file, tmp_path / "c", epochs=1, resume=True)
    out = run_sft(spec, home=tmp_path / "home", progress=False, log=logs.append)
    assert f"no checkpoint in {out / 'checkpoints'}: starting from the beginning" in logs
    assert json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))["metrics"]["steps"] == 4


def test_continued_training_names_its_parent(tiny_llama_dir, tiny_chat_file, write_chat, tmp_path) -> None:
    home = tmp_path / "home"
    quiet = lambda *_: None  # noqa: E731
    first = run_sft(
        spec_for(tiny_llama_dir, tiny_chat_file, tmp_path / "first", epochs=1),
        home=home,
        progress=False,
        log=quiet,
    )
    new_data = write_chat(tmp_path / "more.jsonl", EXTRA_ROWS, {})
    second = run_sft(
        spec_for(first, new_data, tmp_path / "second", epochs=3, strategy="lora", lora_r=4),
        home=home,
        progress=False,
        log=quiet,
    )
    card = json.loads((second / "lmtailor.json").read_text(encoding="utf-8"))
    assert card["parent"] == {"path": str(first), "name": "first"}
    assert card["base_model"] == str(tiny_llama_dir)  # the root, not the intermediate model
    assert card["base_path"] == str(first)
    assert card["hyperparameters"]["model"] == str(first)
    assert (card["strategy"], card["data"]["train"]["rows"]) == ("lora", 4)
    assert (
        card["metrics"]["steps"] == 3
    )  # one packed row of 4 samples, 3 epochs (the first step is warmup, lr 0)

    w_first, w_second = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(w_first[key], w_second[key])  # trained on from the first model's weights...
    assert torch.equal(
        w_first["model.norm.weight"], w_second["model.norm.weight"]
    )  # ...which LoRA left alone


def test_eval_metrics_during_training_pick_the_best_checkpoint(tiny_llama_dir, tiny_chat_file, tmp_path):
    """eval_metrics are generated and scored at each evaluation, logged, and keep_best watches them."""
    from lmtailor.specs import TrainSpec
    from lmtailor.train.callbacks import read_metrics
    from lmtailor.train.sft import run_sft

    out = tmp_path / "best"
    spec = TrainSpec(model=str(tiny_llama_dir), data=str(tiny_chat_file), val_data=str(tiny_chat_file),
                     output=str(out), strategy="full", epochs=2, batch_size=4, eval_steps=2, keep_best=True,
                     eval_metrics=["contains", "rouge_l"], best_metric="rouge_l", precision="fp32")  # fmt: skip
    run_sft(spec, progress=False, log=lambda *a: None)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "eval_rouge_l" in r]
    assert [r["step"] for r in rows][:2] == [2, 4]
    assert all(0.0 <= r["eval_rouge_l"] <= 1.0 and 0.0 <= r["eval_contains"] <= 1.0 for r in rows)
    card = json.loads((out / "lmtailor.json").read_text())
    assert "eval_rouge_l" in card["metrics"] and "eval_loss" in card["metrics"]


def test_best_metric_must_be_measured():
    from lmtailor.errors import SpecError
    from lmtailor.specs import TrainSpec, build_spec

    with pytest.raises(SpecError, match="best_metric 'f1' must be eval_loss or one of eval_metrics"):
        build_spec(TrainSpec, {"data": "x.jsonl", "eval_metrics": ["contains"], "best_metric": "f1"})
    with pytest.raises(SpecError, match="unknown metric"):
        build_spec(TrainSpec, {"data": "x.jsonl", "eval_metrics": ["nope"]})
    assert TrainSpec(data="x.jsonl").eval_metrics is None


def test_a_new_run_into_the_same_folder_starts_a_new_metrics_log(tiny_llama_dir, tiny_chat_file, tmp_path):
    from lmtailor.train.callbacks import read_metrics

    out = tmp_path / "again"
    spec = TrainSpec(model=str(tiny_llama_dir), data=str(tiny_chat_file), output=str(out), strategy="full",
                     epochs=2, batch_size=4, precision="fp32")  # fmt: skip
    run_sft(spec, progress=False, log=lambda *a: None)
    first = read_metrics(out / "metrics.jsonl")
    run_sft(spec, progress=False, log=lambda *a: None)
    second = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in second] == [r["step"] for r in first]  # replaced, not appended
    steps = [r["step"] for r in second if "loss" in r]
    assert steps == sorted(set(steps))


def test_early_stopping_watches_a_generated_metric(tiny_llama_dir, tiny_chat_file, tmp_path):
    """early_stopping_patience on an eval_metrics metric stops the run: its scorer runs before the stopping
    callback (it used to run after, so the metric was missing when stopping looked and the run went on)."""
    from lmtailor.specs import TrainSpec
    from lmtailor.train.callbacks import read_metrics
    from lmtailor.train.sft import run_sft

    out = tmp_path / "stopped"
    spec = TrainSpec(model=str(tiny_llama_dir), data=str(tiny_chat_file), val_data=str(tiny_chat_file),
                     output=str(out), strategy="lora", lora_r=4, epochs=10, batch_size=4, eval_steps=2,
                     early_stopping_patience=1, eval_metrics=["contains"], best_metric="contains", precision="fp32",
                     replay_ratio=0, retention=False)  # fmt: skip
    run_sft(spec, progress=False, log=lambda *a: None)
    scored = [r for r in read_metrics(out / "metrics.jsonl") if "eval_contains" in r]
    card = json.loads((out / "lmtailor.json").read_text())
    # the random tiny model answers nothing right: no gain after the first evaluation, stopped at the second
    # (step 4 of 10 epochs x 3 steps); the run's last validation scores the model it ends with once more
    assert [(r["step"], r["eval_contains"]) for r in scored] == [(2, 0.0), (4, 0.0), (4, 0.0)]
    assert card["metrics"]["steps"] == 4
