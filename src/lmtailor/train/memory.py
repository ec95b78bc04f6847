"""How much memory a training run needs, from the model's config and the plan, before anything loads.

Written here because the estimators that exist (accelerate's `estimate-memory`) read a model from the hub
and count weights and Adam states only: they know neither LoRA nor the MLP-only and freeze strategies nor
activations and logits, which decide whether a run fits on a small machine. Its per-token coefficients are
measured, not derived (see below). Against real runs of the model they were fitted on (docs/benchmarks.md)
it comes to 0.9-1.6x the peak: close for LoRA, on the high side for full and MLP-only runs on short rows,
whose saved activations are smaller than LoRA's.
"""

from __future__ import annotations

import json
from pathlib import Path

ADAM = 8  # two fp32 moments per trained parameter
# Fitted with bench/train_memory.py on SmolLM2-135M on a CPU (bf16 autocast; docs/benchmarks.md): what a
# step keeps per token and decoder layer is about 12 bytes per element of 16 hidden-size and 3
# intermediate-size vectors (autocast keeps many saved inputs in fp32), per token 16 bytes a vocabulary
# entry for the logits (fp32 logits, log-softmax and their gradients), and the runtime about 0.25 GiB.
ACTIVATION_BYTES = 12
LOGIT_BYTES = 16
RUNTIME = 2**28


def estimate(config_dir: str | Path, strategy: str, batch_size: int, max_length: int, lora_r: int = 32,
             dtype_bytes: int = 2, parameters: int | None = None) -> dict:  # fmt: skip
    """Bytes for weights, gradients, optimizer, activations and logits of one training step; and the total."""
    cfg = json.loads((Path(config_dir) / "config.json").read_text(encoding="utf-8"))
    h = int(cfg.get("hidden_size") or 0)
    layers = int(cfg.get("num_hidden_layers") or 0)
    inter = int(cfg.get("intermediate_size") or 4 * h)
    vocab = int(cfg.get("vocab_size") or 0)
    heads = int(cfg.get("num_attention_heads") or 1)
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = h // heads if heads else 0
    attn = h * h * 2 + 2 * h * kv * head_dim  # q, o and k, v projections
    mlp = 3 * h * inter  # gate, up, down
    embed = vocab * h * (1 if cfg.get("tie_word_embeddings", True) else 2)
    total = parameters or layers * (attn + mlp) + embed
    if strategy == "lora":
        per_layer = lora_r * (2 * (h + h) + 2 * (h + kv * head_dim) + 2 * (h + inter) + (inter + h))
        trained = layers * per_layer
        stored = total  # the frozen base, beside the adapters
    elif strategy in ("mlp", "auto"):  # auto on a small model is the MLP-only rule (train/defaults.py)
        trained = layers * mlp
        stored = total - trained
    elif strategy == "freeze":
        trained = max(1, layers // 4) * (attn + mlp)
        stored = total - trained
    else:  # full
        trained, stored = total, 0
    tokens = batch_size * max_length
    out = {
        "parameters": total,
        "trained_parameters": trained,
        "weights": stored * dtype_bytes + trained * 4,  # trained weights are fp32 masters
        "gradients": trained * 4,
        "optimizer": trained * ADAM,
        "activations": tokens * layers * (16 * h + 3 * inter) * ACTIVATION_BYTES,
        "logits": tokens * vocab * LOGIT_BYTES,
        "runtime": RUNTIME,
    }
    out["total"] = sum(v for k, v in out.items() if k not in ("parameters", "trained_parameters"))
    return out


def dry_run(spec, home=None) -> dict:
    """What `lmtailor train --dry-run` prints: the plan lmtailor would choose for this spec and data, and the
    memory it needs per device against the memory found. Reads the data and the model's config and
    tokenizer; loads no weights."""
    import psutil

    from lmtailor.data.tokenize import tokenize_record
    from lmtailor.models.catalog import resolve
    from lmtailor.models.loading import _count_parameters, best_device, load_tokenizer
    from lmtailor.train.defaults import choose
    from lmtailor.train.sft import _precision, load_train_val

    train, val = load_train_val(spec)
    base = resolve(spec.model, home)
    tok = load_tokenizer(base, trust_remote_code=spec.trust_remote_code)
    device = best_device()
    lengths = [len(tokenize_record(tok, r)[0]["input_ids"]) for r in train]
    params = _count_parameters(base.path) or 0
    plan = choose(spec, len(train), lengths, params, on_gpu=device == "cuda")
    kind = "mlp" if plan.strategy == "freeze" and plan.freeze_modules == ["mlp"] else plan.strategy
    precision = _precision(spec, device)
    need = estimate(base.path, kind, plan.batch_size, plan.max_length, spec.lora_r,
                    dtype_bytes=2 if precision in ("bf16", "fp16") else 4, parameters=params or None)  # fmt: skip
    if device == "cuda":
        import torch

        devices = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    else:
        devices = [psutil.virtual_memory().total]
    return {"model": spec.model, "device": device, "precision": precision, "rows": len(train),
            "val_rows": len(val), "plan": plan.as_dict(), "memory": need, "devices": devices,
            "fits": need["total"] <= 0.9 * max(devices)}  # fmt: skip
