"""Batches for training: padded, or packed rows whose samples cannot attend to each other.

TRL's padding-free packing relies on flash-attention kernels to keep samples apart; with PyTorch's SDPA (the
CPU path) the packed samples would see each other. So packed rows carry an explicit block-diagonal causal
mask (4-D), which every attention implementation honours, and position ids that restart at each sample. A batch
of one row can also carry the sample boundaries as transformers' varlen kwargs (`cu_seq_lens_q`...), from which
train/fastpath.py attends within each sample instead of masking a whole row's scores.
"""

from __future__ import annotations

from dataclasses import dataclass

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
class PackedCollator:
    """Rows made by `trl.pack_dataset` (with `seq_lengths`) → ids, labels, restarting positions, 4-D mask."""

    pad_token_id: int
    varlen: bool = False  # add the varlen kwargs: only for a model that reads them (train/fastpath.py)

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        b = len(examples)
        ids = torch.full((b, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((b, width), IGNORE, dtype=torch.long)
        positions = torch.zeros((b, width), dtype=torch.long)
        segment = torch.full((b, width), -1, dtype=torch.long)  # padding: a segment of its own per token
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            labels[i, :n] = torch.tensor(e["labels"])
            start = 0
            for s, length in enumerate(e["seq_lengths"]):
                positions[i, start : start + length] = torch.arange(length)
                segment[i, start : start + length] = s
                labels[i, start] = IGNORE  # never learn a sample's first token from the previous sample
                start += length
        causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
        same = segment[:, :, None] == segment[:, None, :]
        pad = segment < 0
        same &= ~(pad[:, :, None] | pad[:, None, :])
        same |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves: no all-masked row
        allowed = (same & causal)[:, None]
        # Additive, not boolean: eager attention adds a mask to the scores, so a 0/1 mask would hide nothing.
        additive = torch.zeros(allowed.shape).masked_fill_(~allowed, torch.finfo(torch.float32).min)
        batch = {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": additive}
        # The varlen kwargs describe one flat row; only on request, as a forward without **kwargs rejects them.
        if self.varlen and b == 1:
            lengths = examples[0]["seq_lengths"]
            cuts = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cuts
            batch["max_length_q"] = batch["max_length_k"] = max(lengths)
        return batch


def packed_segments(batch: dict) -> list[list[tuple[int, int]]]:
    """(start, end) of each sample in each packed row; used by tests to check samples stay apart."""
    out = []
    for row in batch["position_ids"]:
        starts = [i for i, p in enumerate(row.tolist()) if p == 0]
        ends = starts[1:] + [len(row)]
        out.append(list(zip(starts, ends, strict=False)))
    return out
