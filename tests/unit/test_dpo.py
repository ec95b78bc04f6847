"""method: dpo — preference rows in both formats, TRL's DPOTrainer a few steps on a tiny model through
`lmtailor train`: the adapters move, reward accuracy and margins are logged (train and validation), the
saved model loads, bad rows are named by line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lmtailor.data.preference import load_preferences
from lmtailor.errors import DataError

PAIRS = [("What is the capital of France?", "Paris.", "London."), ("Who wrote Hamlet?", "Shakespeare.", "Dickens."),
         ("What is 2 + 2?", "4.", "5."), ("Name a primary colour.", "Red.", "Pink."),
         ("Which planet is red?", "Mars.", "Venus."), ("What is frozen water?", "Ice.", "Steam.")]  # fmt: skip


def preference_file(path: Path) -> Path:
    rows = []
    for i, (q, good, bad) in enumerate(PAIRS * 2):
        if i % 2:  # OpenAI's format
            rows.append({"input": {"messages": [{"role": "user", "content": q}]},
                         "preferred_output": [{"role": "assistant", "content": good}],
                         "non_preferred_output": [{"role": "assistant", "content": bad}]})  # fmt: skip
        else:  # the common one
            rows.append({"prompt": q, "chosen": good, "rejected": bad})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_preference_rows_in_both_formats_and_bad_ones_by_line(tmp_path):
    rows, errors = load_preferences(preference_file(tmp_path / "p.jsonl"))
    assert len(rows) == 12 and not errors
    assert rows[0].prompt == [{"role": "user", "content": PAIRS[0][0]}] and rows[1].chosen == PAIRS[1][1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}),
                              json.dumps({"prompt": "q", "chosen": "same", "rejected": "same"}),
                              json.dumps({"messages": [{"role": "assistant", "content": "hi"}], "chosen": "a", "rejected": "b"}),
                              json.dumps({"question": "q"}), "{broken"]) + "\n")  # fmt: skip
    with pytest.raises(DataError) as e:
        load_preferences(bad)
    text = str(e.value)
    assert (
        "bad.jsonl:2: chosen and rejected are the same" in text and "bad.jsonl:3: the prompt must end" in text
    )
    assert "bad.jsonl:4: not a preference row" in text and "bad.jsonl:5: invalid JSON" in text
    kept, skipped = load_preferences(bad, on_error="skip")
    assert len(kept) == 1 and len(skipped) == 4


def test_dpo_through_lmtailor_train(tiny_llama_dir, tmp_path, sft_card):
    """Also: the card has the keys of SFT's, the loss curve is drawn, and keep-best ends on the checkpoint with the
    lowest validation loss (DPO's loss on the held-out pairs)."""
    from lmtailor.cli import app

    data = preference_file(tmp_path / "prefs.jsonl")
    out = tmp_path / "dpo"
    result = CliRunner().invoke(app, ["train", "--method", "dpo", "--model", str(tiny_llama_dir), "--data", str(data),
                                      "--output", str(out), "--strategy", "lora", "--lora-r", "4", "--epochs", "3",
                                      "--batch-size", "4", "--lr", "5e-3", "--beta", "0.2", "--val-ratio", "0.25",
                                      "--keep-best", "--early-stopping-patience", "2", "--precision", "fp32",
                                      "--home", str(tmp_path / "home")])  # fmt: skip
    assert result.exit_code == 0, result.output
    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    assert card["method"] == "dpo" and card["strategy"] == "lora" and card["hyperparameters"]["beta"] == 0.2
    assert card["data"]["train"]["rows"] == 9 and card["data"]["val"]["rows"] == 3
    assert set(card) == set(sft_card) and set(card["hyperparameters"]) == set(sft_card["hyperparameters"])
    assert (out / "loss.png").stat().st_size > 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train_logs = [r for r in rows if "rewards/accuracies" in r]
    eval_logs = [r for r in rows if "eval_rewards/margins" in r]
    assert train_logs and eval_logs and "eval_rewards/accuracies" in eval_logs[-1]
    assert "eval_rewards/margins" in card["metrics"]
    during = [r["eval_loss"] for r in eval_logs[:-1]]  # the last one: the final validation, of the model kept
    assert len(during) == 3 and card["metrics"]["eval_loss"] == pytest.approx(min(during), rel=1e-4)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # LoRA B starts at zero: DPO moved it
    from lmtailor.models.loading import load_model

    merged = load_model(str(out), tmp_path / "home")
    base = load_model(str(tiny_llama_dir), tmp_path / "home")
    moved = sum(
        not torch.equal(a, b)
        for a, b in zip(merged.state_dict().values(), base.state_dict().values(), strict=False)
    )
    assert moved > 0


def test_dpo_resume_over_other_rows_is_refused(tiny_llama_dir, tmp_path):
    """DPO (and reinforcement) runs record their rows like SFT runs: a resume over other rows stops in words;
    a resume with no checkpoint yet says it starts from the beginning; a resumed run logs each step once."""
    from lmtailor.errors import LmtailorError
    from lmtailor.specs import TrainSpec
    from lmtailor.train.core import ROWS_FILE
    from lmtailor.train.sft import run_sft

    data = preference_file(tmp_path / "prefs.jsonl")
    out = tmp_path / "dpo"
    spec = TrainSpec(method="dpo", model=str(tiny_llama_dir), data=str(data), output=str(out), strategy="lora",
                     lora_r=4, epochs=1, batch_size=4, save_steps=1, keep_checkpoints=True, val_ratio=0.0,
                     precision="fp32", resume=True)  # fmt: skip
    logs: list[str] = []
    run_sft(spec, home=tmp_path / "home", progress=False, log=logs.append)
    assert f"no checkpoint in {out / 'checkpoints'}: starting from the beginning" in logs
    record = json.loads((out / "checkpoints" / ROWS_FILE).read_text(encoding="utf-8"))
    assert (record["rows"], record["batch_size"]) == (12, 4)
    fewer = tmp_path / "fewer.jsonl"
    fewer.write_text(
        "".join(data.read_text(encoding="utf-8").splitlines(keepends=True)[:8]), encoding="utf-8"
    )
    with pytest.raises(LmtailorError, match="12 rows then, 8 now"):
        run_sft(spec.model_copy(update={"data": str(fewer)}), home=tmp_path / "home",
                progress=False, log=lambda *_: None)  # fmt: skip

    # A run stopped after checkpoint-2 (its last step logged, no model yet) and resumed: each step logged once.
    def losses():
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        return [r["step"] for r in rows if "loss" in r]

    assert losses() == [1, 2, 3] and (out / "loss.png").is_file()
    shutil.rmtree(out / "checkpoints" / "checkpoint-3")
    (out / "lmtailor.json").unlink()
    logs.clear()
    resumed = spec.model_copy(update={"retention": False})  # retention has its tests
    run_sft(resumed, home=tmp_path / "home", progress=False, log=logs.append)
    assert not any("starting from the beginning" in line for line in logs)
    assert losses() == [1, 2, 3]  # step 3 trained again, logged once
    assert json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))["metrics"]["steps"] == 3
