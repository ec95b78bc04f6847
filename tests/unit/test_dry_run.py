"""lmtailor train --dry-run: the plan and the memory it needs, without training or writing a model."""

from __future__ import annotations

from typer.testing import CliRunner

from lmtailor.cli import app


def test_dry_run_prints_the_plan_and_memory_and_trains_nothing(tiny_llama_dir, tiny_chat_file, tmp_path):
    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["train", "--model", str(tiny_llama_dir), "--data", str(tiny_chat_file),
                                      "--output", str(out), "--strategy", "lora", "--batch-size", "2",
                                      "--dry-run", "--home", str(tmp_path / "home")], env={"COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    text = result.output
    assert "strategy = lora" in text and "batch_size = 2" in text and "memory per device" in text
    for key in ("weights", "gradients", "optimizer", "activations", "logits", "total"):
        assert key in text
    assert "fits" in text and not out.exists()
    full = CliRunner().invoke(app, ["train", "--model", str(tiny_llama_dir), "--data", str(tiny_chat_file),
                                    "--strategy", "full", "--batch-size", "64", "--max-length", "4096", "--dry-run",
                                    "--home", str(tmp_path / "home")], env={"COLUMNS": "200"})  # fmt: skip
    assert full.exit_code == 0, full.output

    def total(output: str) -> float:
        line = next(x for x in output.splitlines() if "total" in x)
        return float(line.split("│")[2].split()[0])

    assert total(full.output) > total(text)  # more tokens a step and every weight trained: more memory
