"""Two shortcuts for SFT, each the same arithmetic as the path it replaces, minus wasted work.

Attention: a packed row of ~8 samples under a block-diagonal mask makes SDPA score every token against every
other (a 520-token row: 520² scores per head, ~7/8 of them masked away), and the masked kernel is slow on CPUs.
`packed_sdpa` runs causal SDPA on each sample alone, from the sample boundaries the collator passes as the
flash-attention varlen kwargs (`cu_seq_lens_q`: transformers' own names for them). Outputs agree with the
masked path to float rounding (tests/unit/test_packing.py). Used in fp32 only. One SmolLM2-135M layer's
attention forward and backward over a 520-token row of 8 samples:
on an AMD EPYC (fp32, no bf16 there) 24 ms masked against 5.9 ms per sample; on a Sapphire Rapids CPU in bf16
(2026-11-29) 11.8 ms masked against 16.6 ms per sample, where the small bf16 calls cost more than the scores
they save. bf16 and fp16 runs keep the masked kernel. A row that holds its samples' shared prefix once
(train/collate.py) passes its length too: each later sample attends causally over the prefix and itself.

Loss: transformers' causal-LM loss takes the log-softmax over all 49k vocabulary entries at every position,
prompts included, then ignores the untrained ones. `trained_positions_loss` drops them first: the same values
at the trained positions, so the same loss and gradients (about a third of the quickstart's positions train).
"""

from __future__ import annotations

PACKED_SDPA = "lmtailor_packed_sdpa"
# The varlen kwarg with the length of a row's shared prefix (train/collate.py).
SHARED_PREFIX = "lmtailor_shared_prefix"
# Per-sample causal SDPA would ignore these: a call that sets one goes through transformers' SDPA and the mask.
_FALLBACK_KWARGS = ("sliding_window", "softcap", "s_aux", "position_bias")


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """An AttentionInterface function: per-sample causal attention for one packed row; else transformers' SDPA."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or any(kwargs.get(k) is not None for k in _FALLBACK_KWARGS):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)  # fmt: skip
    lengths = bounds.diff().tolist()
    # The tokens at the row's start that every sample sees (train/collate.py: shared prefix).
    prefix = kwargs.get(SHARED_PREFIX) or 0
    gqa = key.shape[1] != query.shape[1]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    outs = []
    for i, (q, k, v) in enumerate(zip(*(t.split(lengths, dim=2) for t in (query, key, value)), strict=True)):
        later = bool(i and prefix)  # a later sample continues the prefix: causal over both, the prefix's rows
        if later:  # dropped after (the first sample computed them)
            q, k, v = (torch.cat((whole[:, :, :prefix], part), dim=2) for whole, part in
                       ((query, q), (key, k), (value, v)))  # fmt: skip
        out = sdpa(q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa)
        outs.append(out[:, :, prefix:] if later else out)
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


def trained_positions_loss(logits, labels, vocab_size: int, num_items_in_batch=None, ignore_index: int = -100,
                           shift_labels=None, **kwargs):  # fmt: skip
    """transformers' ForCausalLMLoss over the positions that have a label: same loss, no vocab-wide softmax on the
    prompt tokens."""
    import torch
    from transformers.loss.loss_utils import fixed_cross_entropy

    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    shift_labels = shift_labels.reshape(-1).to(logits.device)
    keep = (shift_labels != ignore_index).nonzero().squeeze(1)  # index_select: its backward beats a mask's
    source = logits.reshape(-1, vocab_size).index_select(0, keep).float()
    return fixed_cross_entropy(source, shift_labels[keep], num_items_in_batch, ignore_index, **kwargs)


def use_fast_path(model, attention: bool) -> str | None:
    """Put the loss, and with `attention` the per-sample attention, on `model` (a transformers model, or peft's
    wrapper of one); return the attention implementation `packed_sdpa` replaced (only "sdpa"), else None."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    inner = _inner(model)
    inner.loss_function = trained_positions_loss
    if not attention or getattr(inner.config, "_attn_implementation", None) != "sdpa":
        return None  # every other implementation keeps the collator's 4-D mask
    AttentionInterface.register(PACKED_SDPA, packed_sdpa)
    # Padded batches (generation in eval-metric callbacks) get SDPA's mask; an unknown name would get none.
    AttentionMaskInterface.register(PACKED_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    inner.set_attn_implementation(PACKED_SDPA)
    return "sdpa"


def restore_attention(model, previous: str | None) -> None:
    """Back to the implementation `use_fast_path` replaced, so the saved config and later use see the usual one."""
    if previous:
        _inner(model).set_attn_implementation(previous)


def _inner(model):
    """The transformers model itself: peft's wrapper hands it over, a plain model is it."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model
