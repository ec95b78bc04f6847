"""Batches for training: padded, or packed rows whose samples cannot attend to each other.

TRL's padding-free packing relies on flash-attention kernels to keep samples apart; with PyTorch's SDPA (the
CPU path) the packed samples would see each other. So packed rows carry an explicit block-diagonal causal
mask (4-D), which every attention implementation honours, and position ids that restart at each sample. A batch
of one row can also carry the sample boundaries as transformers' varlen kwargs (`cu_seq_lens_q`...), from which
train/fastpath.py attends within each sample instead of masking a whole row's scores.

Shared prefix (`share_prefix`): the samples of a row usually begin with the same untrained tokens (the chat
template's default system prompt and the user turn's header: 24 of the quickstart's ~65 tokens a sample). A
causal model computes the same hidden states for them in every sample, so the row holds them once, at its
start, where each later sample's tokens (positions continuing after the prefix) may attend to them; the
gradients the samples send back through the prefix add up there, as they would over its copies. Same logits
at every kept position and the same loss; about a third fewer tokens a quickstart step. What differs: random
noise on the prefix (NEFTune, dropout) is drawn once per row instead of once per sample. The prefix stops
before any trained label (and the token after it), so every trained token keeps its context. Exact only where
positions come from the position ids and samples meet only through the mask: `can_share_prefix`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from transformers import Trainer

from lmtailor.train.fastpath import SHARED_PREFIX

IGNORE = -100


@dataclass
class PaddedCollator:
    pad_token_id: int

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


@dataclass
class PackedRow:
    """One packed row laid out for the model: samples after the first may start after a shared prefix."""

    ids: list[int]
    labels: list[int]
    positions: list[int]
    lengths: list[int]  # of the segments: the first sample whole, then each later sample without the prefix
    prefix: int  # tokens at the row's start that every sample attends to


def can_share_prefix(config, trust_remote_code: bool) -> bool:
    """Whether a model computes a shared prefix exactly as its copies: transformers' own rotary models, whose
    positions come from the position ids alone. Not ALiBi or other distance-from-the-row biases, not remote code
    (which may ignore position ids), not a mixture of experts whose auxiliary loss counts the row's tokens."""
    rotary = getattr(config, "rope_parameters", None) or getattr(config, "rope_theta", None)
    return bool(rotary) and not trust_remote_code and not getattr(config, "output_router_logits", False)


def shared_prefix(samples: list[list[int]], labels: list[list[int]]) -> int:
    """How many leading tokens all samples have in common, none of them (nor the token after) trained, and at
    least one token of each sample left after them; 0 for a single sample."""
    if len(samples) < 2:
        return 0
    limit = min(len(s) for s in samples) - 1
    for row in labels:  # the first trained label, skipping the sample's first token (never trained here)
        trained = next((k for k in range(1, len(row)) if row[k] != IGNORE), len(row))
        limit = min(limit, trained - 1)
    first = samples[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in samples[1:]):
        n += 1
    return n


def lay_out(example: dict, share: bool) -> PackedRow:
    """A `trl.pack_dataset` row (`seq_lengths`) → ids, labels (each sample's first token untrained), positions."""
    starts = [0]
    for length in example["seq_lengths"]:
        starts.append(starts[-1] + length)
    spans = list(zip(starts[:-1], starts[1:], strict=True))
    samples = [example["input_ids"][s:e] for s, e in spans]
    labels = [example["labels"][s:e] for s, e in spans]
    prefix = shared_prefix(samples, labels) if share else 0
    row = PackedRow([], [], [], [], prefix)
    for i, (ids, lab) in enumerate(zip(samples, labels, strict=True)):
        cut = prefix if i else 0  # the first sample keeps the prefix: it is the row's start
        row.ids += ids[cut:]
        row.labels += [IGNORE, *lab[cut + 1 :]]  # never learn a segment's first token from the previous one
        row.positions += range(cut, len(ids))
        row.lengths.append(len(ids) - cut)
    return row


@dataclass
class PackedCollator:
    """Rows made by `trl.pack_dataset` (with `seq_lengths`) → ids, labels, restarting positions, 4-D mask."""

    pad_token_id: int
    varlen: bool = False  # add the varlen kwargs: only for a model that reads them (train/fastpath.py)
    share_prefix: bool = False  # the samples' common untrained prefix once per row (module docstring)

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        rows = [lay_out(e, self.share_prefix) for e in examples]
        width = max(len(r.ids) for r in rows)
        b = len(rows)
        ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((b, width), IGNORE, dtype=torch.long)
        positions = torch.zeros((b, width), dtype=torch.long)
        segment = torch.full((b, width), -1, dtype=torch.long)  # padding: a segment of its own per token
        shared = torch.zeros((b, width), dtype=torch.bool)  # the keys every sample of the row may see
        for i, r in enumerate(rows):
            n = len(r.ids)
            ids[i, :n] = torch.tensor(r.ids)
            labels[i, :n] = torch.tensor(r.labels)
            positions[i, :n] = torch.tensor(r.positions)
            segment[i, :n] = torch.repeat_interleave(torch.arange(len(r.lengths)), torch.tensor(r.lengths))
            shared[i, : r.prefix] = True
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        pad = segment < 0
        same = segment[:, :, None] == segment[:, None, :]
        same |= shared[:, None, :]
        same &= ~(pad[:, :, None] | pad[:, None, :])
        same |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves: no all-masked row
        allowed = (same & causal)[:, None]
        # Additive, not boolean: eager attention adds a mask to the scores, so a 0/1 mask would hide nothing.
        additive = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
        batch = {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": additive}
        # The varlen kwargs describe one flat row; only on request, as a forward without **kwargs rejects them.
        if self.varlen and b == 1:
            lengths = rows[0].lengths
            cuts = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cuts
            batch["max_length_q"] = batch["max_length_k"] = max(lengths)
            if rows[0].prefix:
                batch[SHARED_PREFIX] = rows[0].prefix
        return batch


def computed_tokens(rows) -> tuple[int, int]:
    """(tokens the model computes, tokens of the samples) over packed rows that hold shared prefixes once."""
    computed = whole = 0
    for row in rows:
        computed += len(lay_out(row, share=True).ids)
        whole += len(row["input_ids"])
    return computed, whole


def unshared_lengths(position_ids) -> list[int]:
    """Each row's length with every sample whole (a shared prefix counted once per sample): the sum of the
    samples' lengths, read from the positions where a sample ends (the next position does not follow on).
    Padding counts a token a position, as transformers' "all" token count has it."""
    out = []
    for row in position_ids.tolist():
        ends = [p + 1 for p, q in zip(row, [*row[1:], -1], strict=True) if q != p + 1]
        out.append(sum(ends))
    return out


class PackedTrainer(Trainer):
    """transformers' Trainer over PackedCollator's rows: tokens seen, and NEFTune's noise, as on the rows with every
    sample whole, so that a shared prefix changes neither tokens/s nor the recipe's noise."""

    def _track_num_input_tokens(self, inputs) -> None:
        if self.args.include_num_input_tokens_seen == "no" or "position_ids" not in inputs:
            return super()._track_num_input_tokens(inputs)
        import torch

        tokens = torch.tensor(sum(unshared_lengths(inputs["position_ids"])), device=self.args.device)
        self.state.num_input_tokens_seen += self.accelerator.gather(tokens).sum().item()

    def compute_loss(self, model, inputs, *args, **kwargs):
        # NEFTune's noise is alpha / sqrt(row width x hidden size) a value: scaled to the unshared row's width.
        # Training batches are one row (a batch of several is padded differently shared and unshared: unscaled).
        if self.neftune_noise_alpha is not None and model.training:
            scale = 1.0
            if "position_ids" in inputs and inputs["input_ids"].shape[0] == 1:
                scale = math.sqrt(inputs["input_ids"].shape[1] / unshared_lengths(inputs["position_ids"])[0])
            embeddings = self.accelerator.unwrap_model(model).get_input_embeddings()
            embeddings.neftune_noise_alpha = self.neftune_noise_alpha * scale
        return super().compute_loss(model, inputs, *args, **kwargs)


def packed_segments(batch: dict) -> list[list[tuple[int, int]]]:
    """(start, end) of each sample in each packed row; used by tests to check samples stay apart."""
    out = []
    for row in batch["position_ids"]:
        starts = [i for i, p in enumerate(row.tolist()) if p == 0]
        ends = starts[1:] + [len(row)]
        out.append(list(zip(starts, ends, strict=False)))
    return out
