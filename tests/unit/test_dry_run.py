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


def test_the_estimate_per_device_follows_sharding_checkpointing_and_qlora(tiny_llama_dir):
    from lmtailor.train.memory import estimate

    base = estimate(tiny_llama_dir, "full", batch_size=8, max_length=512)
    ddp = estimate(tiny_llama_dir, "full", batch_size=8, max_length=512, processes=4)
    zero2 = estimate(
        tiny_llama_dir, "full", batch_size=8, max_length=512, processes=4, distributed="deepspeed-zero2"
    )
    fsdp = estimate(tiny_llama_dir, "full", batch_size=8, max_length=512, processes=4, distributed="fsdp")
    offload = estimate(tiny_llama_dir, "full", batch_size=8, max_length=512, processes=4,
                       distributed="deepspeed-zero3", offload=True)  # fmt: skip
    # DDP: a full copy of the model and its states on each device, a quarter of the batch
    assert ddp["weights"] == base["weights"] and ddp["optimizer"] == base["optimizer"]
    assert ddp["activations"] == base["activations"] // 4 and ddp["logits"] == base["logits"] // 4
    # ZeRO-2 shards gradients and optimizer states; FSDP (and ZeRO-3) the weights as well; offload moves them out
    assert zero2["optimizer"] == base["optimizer"] // 4 and zero2["weights"] == base["weights"]
    assert fsdp["weights"] == base["weights"] // 4 and fsdp["gradients"] == base["gradients"] // 4
    assert offload["optimizer"] == 0 and offload["weights"] < fsdp["weights"]
    # checkpointing keeps one layer's activations and each layer's input
    ckpt = estimate(tiny_llama_dir, "full", batch_size=8, max_length=512, checkpointing=True)
    assert ckpt["activations"] < base["activations"] and ckpt["weights"] == base["weights"]
    # QLoRA: the frozen base in 4 bits instead of 16, the same adapters
    lora = estimate(tiny_llama_dir, "lora", batch_size=8, max_length=512)
    qlora = estimate(tiny_llama_dir, "qlora", batch_size=8, max_length=512)
    # the console's "auto": the rule with its default replay trains LoRA (train/defaults.py)
    assert estimate(tiny_llama_dir, "auto", batch_size=8, max_length=512) == lora
    assert qlora["trained_parameters"] == lora["trained_parameters"]
    assert qlora["weights"] < 0.4 * lora["weights"] + lora["trained_parameters"] * 4
