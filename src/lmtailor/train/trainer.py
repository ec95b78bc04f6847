"""transformers' Trainer, computing the vocabulary-wide logits only where the loss reads them.

A causal LM's head turns every position's hidden state into logits over the whole vocabulary (49,152 for
SmolLM2, 151,936 for Qwen2.5), forward and backward, and the loss then keeps the positions whose next token
is trained: the answers, often well under half of a chat sample's tokens (template, system prompt and
question are not trained). transformers' causal LMs take `logits_to_keep` (the positions to compute) and their
loss takes `shift_labels` (the targets of exactly those positions), so the head and the cross-entropy run on
the trained positions only. The loss and its gradient are the same; only the work skipped differs.
"""

from __future__ import annotations

import inspect

import torch
from transformers import Trainer

from lmtailor.train.collate import IGNORE


def trims_logits(model) -> bool:
    """Whether `model` (or the model a peft wrapper holds) takes `logits_to_keep` and the standard causal-LM
    loss that reads `shift_labels`; anything else (a remote-code model with its own loss) keeps the full path."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        takes = "logits_to_keep" in inspect.signature(base.forward).parameters
        return takes and getattr(base, "loss_function", None) is ForCausalLMLoss
    except (TypeError, ValueError, AttributeError, NotImplementedError):
        return False


def trained_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions whose next token is trained in any row of the batch, those next tokens per row)."""
    targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    keep = (targets != IGNORE).any(dim=0).nonzero().squeeze(-1)
    return keep, targets[:, keep]


class AnswerLogitsTrainer(Trainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trim_logits = trims_logits(self.model)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.get("labels")
        if self.trim_logits and not return_outputs and labels is not None:  # evaluation keeps whole logits
            keep, targets = trained_positions(labels)
            # A batch with no trained token at all keeps the ordinary path: there is no position to keep.
            if keep.numel():
                inputs = {**inputs, "logits_to_keep": keep, "shift_labels": targets}
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )
