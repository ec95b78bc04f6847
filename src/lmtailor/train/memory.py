"""How much memory a training run needs, from the model's config and the plan, before anything loads.

Written here because the estimators that exist (accelerate's `estimate-memory`) read a model from the hub
and count weights and Adam states only: they know neither LoRA nor the MLP-only and freeze strategies nor
activations and logits, which decide whether a run fits on a small machine. Its per-token coefficients are
measured, not derived (see below): against real runs of the model they were fitted on it comes to
0.85-1.12x the peak for LoRA, MLP-only and full runs of 256 to 1,024 tokens a step (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from pathlib import Path

ADAM = 8  # two fp32 moments per trained parameter
# Fitted by least squares with bench/train_memory.py on SmolLM2-135M on a CPU (bf16 autocast, 3 real steps
# each, rows of 128 to 1,024 tokens; docs/benchmarks.md): a step keeps per token and decoder layer about
# 3.9 bytes per element of 16 hidden-size and 3 intermediate-size vectors, per token 0.5 bytes a vocabulary
# entry (logits), per row 1.3 bytes an attention score (heads x row length^2 x layers: what makes long
# packed rows expensive), and the runtime about 0.25 GiB.
ACTIVATION_BYTES = 3.9
LOGIT_BYTES = 0.5
ATTENTION_BYTES = 1.3
RUNTIME = 2**28
QLORA_BYTES = 0.56  # NF4: 4 bits a weight, plus one fp32 scale a 64-block (double quantised: ~0.1 bit)


def estimate(config_dir: str | Path, strategy: str, batch_size: int, max_length: int, lora_r: int = 32,
             dtype_bytes: int = 2, parameters: int | None = None, processes: int = 1,
             distributed: str = "ddp", offload: bool = False, checkpointing: bool = False,
             row_length: int | None = None, step_tokens: int | None = None) -> dict:  # fmt: skip
    """Bytes per device for weights, gradients, optimizer, activations and logits of one training step; and
    the total. `processes` share the batch (each takes batch_size / processes rows); DDP keeps a full copy of
    everything per device, ZeRO-2 shards gradients and optimizer states, FSDP and ZeRO-3 weights too (ZeRO-3
    `offload`: weights and optimizer in CPU memory). Gradient checkpointing keeps each layer's input only and
    recomputes the rest, one layer at a time. `row_length`: tokens per row of a step (packing puts a process's
    whole share of the batch in one row; default max_length, one sample a row); `step_tokens`: tokens a process
    takes a step when known (packed rows hold samples of their real length; default its share x max_length)."""
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
    # "auto": the rule with its default replay, LoRA on small data and on large models alike (train/defaults.py)
    if strategy == "auto":
        strategy = "lora"
    if strategy in ("lora", "qlora"):
        per_layer = lora_r * (2 * (h + h) + 2 * (h + kv * head_dim) + 2 * (h + inter) + (inter + h))
        trained = layers * per_layer
        stored = total  # the frozen base, beside the adapters
    elif strategy == "mlp":
        trained = layers * mlp
        stored = total - trained
    elif strategy == "freeze":
        trained = max(1, layers // 4) * (attn + mlp)
        stored = total - trained
    else:  # full
        trained, stored = total, 0
    tokens = (
        step_tokens or max(1, batch_size // max(1, processes)) * max_length
    )  # a process's share of a batch
    row = max(1, min(row_length or max_length, tokens))
    rows = max(1, -(-tokens // row))
    stored_bytes = QLORA_BYTES if strategy == "qlora" else dtype_bytes  # 4-bit NF4 and its scales
    per_layer_act = (
        tokens * (16 * h + 3 * inter) * ACTIVATION_BYTES + rows * heads * row * row * ATTENTION_BYTES
    )
    activations = (
        tokens * layers * h * dtype_bytes + per_layer_act if checkpointing else per_layer_act * layers
    )
    shard = max(1, processes)
    weight_share = shard if distributed in ("fsdp", "deepspeed-zero3") else 1
    state_share = shard if distributed != "ddp" else 1
    weights = (stored * stored_bytes + trained * 4) / weight_share  # trained weights are fp32 masters
    optimizer = trained * ADAM / state_share
    if offload:  # ZeRO-3 offload: parameters and Adam states live in CPU memory; a layer at a time on device
        weights = (attn + mlp) * dtype_bytes * 2
        optimizer = 0
    out = {
        "parameters": total,
        "trained_parameters": trained,
        "weights": int(weights),
        "gradients": int(trained * 4 / state_share),
        "optimizer": int(optimizer),
        "activations": int(activations),
        "logits": int(tokens * vocab * LOGIT_BYTES),
        "runtime": RUNTIME,
    }
    out["total"] = sum(v for k, v in out.items() if k not in ("parameters", "trained_parameters"))
    return out


def dry_run(spec, home=None) -> dict:
    """What `lmtailor train --dry-run` prints: the plan lmtailor would choose for this spec and data, and the
    memory it needs per device against the memory found. Reads the data and the model's config and
    tokenizer; loads no weights."""
    import psutil

    from lmtailor.data.augment import single_answers
    from lmtailor.data.tokenize import tokenize_record
    from lmtailor.models.catalog import resolve
    from lmtailor.models.loading import _count_parameters, best_device, load_tokenizer
    from lmtailor.train.core import compute_precision
    from lmtailor.train.defaults import choose
    from lmtailor.train.supervised import load_train_val, packed_row_length

    train, val = load_train_val(spec)
    base = resolve(spec.model, home)
    tok = load_tokenizer(base, trust_remote_code=spec.trust_remote_code)
    device = best_device()
    lengths = [len(tokenize_record(tok, r)[0]["input_ids"]) for r in train]
    params = _count_parameters(base.path) or 0
    plan = choose(spec, len(train), lengths, params, on_gpu=device == "cuda", answers=single_answers(train))
    kind = "mlp" if plan.strategy == "freeze" and plan.freeze_modules == ["mlp"] else plan.strategy
    precision = compute_precision(spec, device)
    processes = spec.devices * spec.nodes
    per_rank = max(1, plan.batch_size // processes)
    row = packed_row_length(plan.max_length, per_rank, lengths) if spec.packing else plan.max_length
    need = estimate(base.path, kind, plan.batch_size, plan.max_length, spec.lora_r,
                    dtype_bytes=2 if precision in ("bf16", "fp16") else 4, parameters=params or None,
                    processes=processes, distributed=spec.distributed, offload=spec.offload,
                    checkpointing=spec.gradient_checkpointing, row_length=row,
                    step_tokens=row if spec.packing else None)  # fmt: skip
    if device == "cuda":
        import torch

        devices = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
        usable = sorted(devices)[: spec.devices] if len(devices) >= spec.devices else []
    else:  # processes on one CPU machine share its memory
        devices = [psutil.virtual_memory().total]
        usable = [devices[0] // spec.devices]
    return {"model": spec.model, "device": device, "precision": precision, "rows": len(train),
            "val_rows": len(val), "plan": plan.as_dict(), "memory": need, "devices": devices,
            "processes": processes, "distributed": spec.distributed if processes > 1 else None,
            "fits": bool(usable) and need["total"] <= 0.9 * min(usable) and (kind != "qlora" or device == "cuda"),
            "qlora_needs_gpu": kind == "qlora" and device != "cuda",
            "enough_devices": len(devices) >= spec.devices or device == "cpu"}  # fmt: skip
