"""Which parameters train: lora (peft adapters), full (all), freeze (only the last N layers or named modules)."""

from __future__ import annotations

import re

from lmtailor.errors import SpecError
from lmtailor.specs import TrainSpec


def apply_strategy(model, spec: TrainSpec, strategy: str, freeze_modules: list[str] | None = None):
    """Return the model with exactly the strategy's parameters trainable.

    `freeze_modules` overrides the spec's (the defaults rule picks ["mlp"] for small models and data)."""
    if strategy in ("lora", "qlora"):  # qlora: the same adapters over a 4-bit base (core.load_4bit)
        return _lora(model, spec)
    if strategy == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if strategy == "freeze":
        return _freeze(model, spec, freeze_modules or spec.freeze_modules)
    raise SpecError(f"unknown strategy {strategy!r}")


def _lora(model, spec: TrainSpec):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=spec.lora_r,
        lora_alpha=spec.lora_alpha or 2 * spec.lora_r,
        lora_dropout=spec.lora_dropout,
        target_modules=spec.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # peft names the module it could not find
        raise SpecError(f"lora_target_modules: {e}") from e


def _freeze(model, spec: TrainSpec, modules: list[str] | None):
    n_layers = model.config.num_hidden_layers
    if modules:
        wanted = modules
        keep = lambda name: any(m in name for m in wanted)  # noqa: E731
    else:
        n = spec.freeze_layers or max(1, n_layers // 4)
        if n > n_layers:
            raise SpecError(f"freeze_layers={n} but the model has {n_layers} layers")
        first = n_layers - n
        pattern = re.compile(r"\.layers\.(\d+)\.")
        keep = lambda name: bool((m := pattern.search(name)) and int(m.group(1)) >= first)  # noqa: E731
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(keep(name))
        count += p.requires_grad
    if count == 0:
        raise SpecError(f"freeze_modules {modules} match no parameter of the model")
    return model


def trainable_summary(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
