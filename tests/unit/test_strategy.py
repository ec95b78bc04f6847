"""Strategies train exactly their parameters: names before training, and what moved in the saved weights after."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmtailor.specs import TrainSpec

LINEAR = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]
STEPS = 4  # 12 rows of ~42 tokens packed into bins of 4 samples (seq_len = 4 x mean length): 4 rows, 1 epoch


def layer_names(arch: str, i: int) -> set[str]:
    p = f"model.layers.{i}."
    names = {f"{p}{m}.weight" for m in LINEAR} | {
        f"{p}input_layernorm.weight",
        f"{p}post_attention_layernorm.weight",
    }
    if arch == "qwen2":  # Qwen2 has biases on q, k and v
        names |= {f"{p}self_attn.{x}_proj.bias" for x in "qkv"}
    return names


def all_names(arch: str) -> set[str]:
    # Tied embeddings: lm_head.weight is model.embed_tokens.weight, listed (and saved) once.
    return {"model.embed_tokens.weight", "model.norm.weight"} | layer_names(arch, 0) | layer_names(arch, 1)


def linear_weights(layers=(0, 1), modules=LINEAR) -> set[str]:
    return {f"model.layers.{i}.{m}.weight" for i in layers for m in modules}


def lora_names() -> set[str]:
    return {
        f"base_model.model.model.layers.{i}.{m}.lora_{ab}.default.weight"
        for i in (0, 1)
        for m in LINEAR
        for ab in "AB"
    }


# case -> (spec fields, trainable parameter names, tensors that must change in the saved weights)
CASES = {
    "full": ({"strategy": "full"}, all_names, all_names),
    "lora": ({"strategy": "lora", "lora_r": 4}, lambda arch: lora_names(), lambda arch: linear_weights()),
    "freeze_layers": (
        {"strategy": "freeze", "freeze_layers": 1},
        lambda arch: layer_names(arch, 1),
        lambda arch: layer_names(arch, 1),
    ),
    "freeze_mlp": (
        {"strategy": "freeze", "freeze_modules": ["mlp"]},
        lambda arch: linear_weights(modules=["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
        lambda arch: linear_weights(modules=["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    ),
}


def make_spec(model_dir: Path, data: Path, out: Path, **fields) -> TrainSpec:
    base = dict(
        model=str(model_dir),
        data=str(data),
        output=str(out),
        epochs=1,
        batch_size=4,
        learning_rate=1e-3,
        packing=True,
        precision="fp32",
        replay_ratio=0.0,  # the strategies on the user's rows; replay and retention have tests of their own
        retention=False,
    )
    return TrainSpec(**{**base, **fields})


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_strategy_trains_exactly_its_parameters(
    request, tiny_chat_file, tmp_path, arch: str, case: str
) -> None:
    from lmtailor.models.loading import load_model
    from lmtailor.train.sft import run_sft
    from lmtailor.train.strategy import apply_strategy, trainable_summary

    model_dir = request.getfixturevalue(f"tiny_{arch}_dir")
    fields, trainable, changed = CASES[case]
    spec = make_spec(model_dir, tiny_chat_file, tmp_path / "out", **fields)

    model = apply_strategy(load_model(str(model_dir), dtype=torch.float32, device="cpu"), spec, spec.strategy)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == trainable(arch)
    n_trainable, n_total = trainable_summary(model)
    assert n_trainable == sum(p.numel() for n, p in model.named_parameters() if n in names)

    logs: list[str] = []
    out = run_sft(spec, home=tmp_path / "home", progress=False, log=logs.append)
    assert out == tmp_path / "out"
    assert any(f"strategy {spec.strategy}: {n_trainable / 1e6:.2f}M trainable" in line for line in logs)

    before = load_file(model_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert set(after) == set(before) == all_names(arch)
    assert all(after[k].dtype == torch.float32 and after[k].shape == before[k].shape for k in after)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == changed(arch)
    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    assert (card["strategy"], card["metrics"]["steps"]) == (spec.strategy, STEPS)
    assert not (out / "checkpoints").exists()  # removed after a finished run (keep_checkpoints: false)


def test_lora_output_adapter_merged_weights_and_card(tiny_llama_dir, tiny_chat_file, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmtailor.data.formats import load_records
    from lmtailor.data.tokenize import tokenize_records
    from lmtailor.models.loading import load_tokenizer
    from lmtailor.train.sft import run_sft

    spec = make_spec(tiny_llama_dir, tiny_chat_file, tmp_path / "tuned", strategy="lora", lora_r=4)
    out = run_sft(spec, home=tmp_path / "home", progress=False, log=lambda *_: None)

    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text(encoding="utf-8"))
    assert (adapter_config["r"], adapter_config["lora_alpha"], adapter_config["peft_type"]) == (4, 8, "LORA")
    # "all-linear" resolved to the 7 projections of both layers (never lm_head).
    assert {m.rsplit(".", 1)[-1] for m in adapter_config["target_modules"]} == {
        m.split(".")[1] for m in LINEAR
    }
    assert len(adapter_config["target_modules"]) in (7, 14)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()

    # Plain from_pretrained loads the merged model, and it computes what base + adapter computes.
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    ids = torch.tensor([load_tokenizer(str(out)).encode("What is the capital of France?")])
    with torch.no_grad():
        base_logits = base(ids).logits
        with_adapter = PeftModel.from_pretrained(base, out / "adapter").eval()
        merged_logits, adapter_logits = merged(ids).logits, with_adapter(ids).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=0)
    assert (merged_logits - base_logits).abs().max() > 1e-3  # the adapter learned something

    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    assert card["name"] == "tuned"
    assert card["base_model"] == str(tiny_llama_dir)
    assert card["base_path"] == str(tiny_llama_dir)
    assert card["parent"] is None
    assert (card["method"], card["strategy"], card["adapter"]) == ("sft", "lora", "adapter")
    hp = card["hyperparameters"]
    assert (hp["learning_rate"], hp["epochs"], hp["batch_size"], hp["lora_r"], hp["packing"]) == (
        1e-3,
        1.0,
        4,
        4,
        True,
    )
    assert hp["precision"] == "fp32" and hp["seed"] == 42
    train = card["data"]["train"]
    assert train["sha256"] == hashlib.sha256(tiny_chat_file.read_bytes()).hexdigest()
    assert (train["path"], train["rows"], card["data"]["val"]) == (str(tiny_chat_file), 12, None)
    records = load_records(tiny_chat_file).records
    _, stats = tokenize_records(load_tokenizer(str(tiny_llama_dir)), records, hp["max_length"])
    assert card["data"]["trained_tokens_per_epoch"] == stats.trained_tokens
    metrics = card["metrics"]
    assert metrics["steps"] == STEPS
    assert metrics["trained_tokens"] == stats.trained_tokens * 1.0
    assert (
        math.isfinite(metrics["train_loss"]) and 0 < metrics["train_loss"] < 12
    )  # ln(49152) = 10.8 at random init

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]
    assert (out / "loss.png").stat().st_size > 1000


def test_lora_bf16_keeps_untrained_weights_of_an_fp32_base_exact(
    tiny_llama_dir, tiny_chat_file, tmp_path
) -> None:
    from lmtailor.train.sft import run_sft

    spec = make_spec(
        tiny_llama_dir, tiny_chat_file, tmp_path / "out", strategy="lora", lora_r=4, precision="bf16"
    )
    out = run_sft(spec, home=tmp_path / "home", progress=False, log=lambda *_: None)
    before = load_file(tiny_llama_dir / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert after["model.embed_tokens.weight"].dtype == torch.float32
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])
