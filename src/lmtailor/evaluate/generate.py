"""Batched generation through the model's chat template (greedy unless told otherwise)."""

from __future__ import annotations

from collections.abc import Callable


def generate(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Answers for each prompt (a list of chat messages ending in a user turn), in order.

    Prompts are sorted by length so each batch pads little, then put back in their order."""
    import torch

    rendered = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
    answers: list[str] = [""] * len(rendered)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right end
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [rendered[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            )
            enc = {k: v.to(model.device) for k, v in enc.items()}
            kwargs = {"do_sample": do_sample}
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p)
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **kwargs,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            for i, row in zip(idx, new, strict=False):
                answers[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
            if on_batch:
                on_batch(len(idx))
    finally:
        tokenizer.padding_side = side
    return answers
