"""AnswerLogitsTrainer: the head runs on the trained positions only, and the loss and gradients stay the same."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmtailor.train.collate import IGNORE, PackedCollator, PaddedCollator
from lmtailor.train.trainer import AnswerLogitsTrainer, trained_positions, trims_logits


def _batches(tokenizer, examples, packed) -> dict[str, dict]:
    return {
        "packed": PackedCollator(tokenizer.pad_token_id)(packed),
        "padded": PaddedCollator(tokenizer.pad_token_id)(examples),
    }


def _trainer(model, tmp_path: Path) -> AnswerLogitsTrainer:
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    return AnswerLogitsTrainer(model=model, args=args)


def _loss_and_grads(trainer, batch, trim: bool) -> tuple[torch.Tensor, dict, list[int]]:
    model = trainer.model
    model.zero_grad()
    widths: list[int] = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda mod, inp, out: widths.append(inp[0].shape[1]))
    trainer.trim_logits = trim
    n = (torch.nn.functional.pad(batch["labels"], (0, 1), value=IGNORE)[:, 1:] != IGNORE).sum()
    loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n)
    hook.remove()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, widths


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_trimmed_head_gives_the_same_loss_and_gradients(
    kind, layout, tokenizer, examples, packed, tiny_llama_dir, tiny_qwen2_dir, tmp_path
) -> None:
    from transformers import AutoModelForCausalLM

    folder = {"llama": tiny_llama_dir, "qwen2": tiny_qwen2_dir}[kind]
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    trainer = _trainer(model, tmp_path)
    assert trainer.trim_logits
    batch = _batches(tokenizer, examples, packed)[layout]
    full_loss, full_grads, full_widths = _loss_and_grads(trainer, batch, trim=False)
    loss, grads, widths = _loss_and_grads(trainer, batch, trim=True)
    keep, _ = trained_positions(batch["labels"])
    width = batch["input_ids"].shape[1]
    assert full_widths == [width]
    assert widths == [len(keep)] and len(keep) < width / 2  # the head ran on under half of the positions
    torch.testing.assert_close(loss, full_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == full_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_trained_positions_are_those_whose_next_token_has_a_label() -> None:
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8, IGNORE], [IGNORE, 5, IGNORE, IGNORE, IGNORE]])
    keep, targets = trained_positions(labels)
    assert keep.tolist() == [0, 1, 2]  # position 0 predicts row 2's label 5, 1 predicts 7, 2 predicts 8
    assert targets.tolist() == [[IGNORE, 7, 8], [5, IGNORE, IGNORE]]


def test_a_peft_model_trims_and_a_model_without_logits_to_keep_does_not(tiny_llama_dir) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    assert trims_logits(get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"])))

    class Plain(torch.nn.Module):
        def forward(self, input_ids, labels=None):
            return None

    assert not trims_logits(Plain())
