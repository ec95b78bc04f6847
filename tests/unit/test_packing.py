"""PackedCollator over trl.pack_dataset rows: positions restart per sample, and samples never attend to each other."""

from __future__ import annotations

import json
import re

import pytest
import torch
from datasets import Dataset
from trl import pack_dataset

from lmtailor.data.records import Message, Record
from lmtailor.data.tokenize import IGNORE, tokenize_records
from lmtailor.train.collate import (
    SHARED_PREFIX,
    PackedCollator,
    PackedTrainer,
    can_share_prefix,
    lay_out,
    packed_segments,
    shared_prefix,
    unshared_lengths,
)
from lmtailor.train.fastpath import PACKED_SDPA, restore_attention, trained_positions_loss, use_fast_path

QA = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("2+2?", "4."),
    ("Name three primary colours.", "Red, yellow and blue."),
    ("中国的首都是哪里？", "北京。"),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
]


@pytest.fixture(scope="module")
def examples(tokenizer) -> list[dict]:
    records = [Record([Message("user", q), Message("assistant", a)]) for q, a in QA]
    examples, stats = tokenize_records(tokenizer, records)
    assert stats.rows == 5
    return examples


@pytest.fixture(scope="module")
def packed(examples) -> list[dict]:
    """Two packed rows of different length (the second gets padding in a batch)."""
    longest = max(len(e["input_ids"]) for e in examples)
    rows = pack_dataset(Dataset.from_list(examples), 3 * longest, "bfd").to_list()
    assert [len(r["seq_lengths"]) for r in rows] == [3, 2]
    return rows


def by_ids(examples: list[dict]) -> dict[tuple, dict]:
    return {tuple(e["input_ids"]): e for e in examples}


def test_positions_restart_and_each_sample_start_is_not_trained(tokenizer, examples, packed) -> None:
    batch = PackedCollator(tokenizer.pad_token_id)(packed)
    width = max(len(r["input_ids"]) for r in packed)
    assert batch["input_ids"].shape == (2, width)
    assert batch["attention_mask"].shape == (2, 1, width, width)
    assert batch["attention_mask"].dtype == torch.float32  # additive: 0 where allowed, finfo.min elsewhere
    originals = by_ids(examples)
    seen = 0
    for b, row in enumerate(packed):
        ids, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
        positions = batch["position_ids"][b].tolist()
        start = 0
        for length in row["seq_lengths"]:
            assert positions[start : start + length] == list(range(length))
            original = originals[tuple(ids[start : start + length])]  # the sample is intact and findable
            assert labels[start] == IGNORE
            assert labels[start + 1 : start + length] == original["labels"][1:]
            start += length
            seen += 1
        n = len(row["input_ids"])
        assert start == n
        assert ids[n:] == [tokenizer.pad_token_id] * (width - n)
        assert labels[n:] == [IGNORE] * (width - n)
    assert seen == len(examples)
    assert sum(sum(r["seq_lengths"]) for r in packed) == sum(len(e["input_ids"]) for e in examples)


def test_mask_is_block_diagonal_causal(tokenizer, packed) -> None:
    batch = PackedCollator(tokenizer.pad_token_id)(packed)
    mask = batch["attention_mask"][:, 0] == 0  # the allowed positions of the additive mask
    assert set(batch["attention_mask"].unique().tolist()) == {0.0, torch.finfo(torch.float32).min}
    width = mask.shape[-1]
    for b, segments in enumerate(packed_segments(batch)):
        n = len(packed[b]["input_ids"])
        expected = torch.zeros(width, width, dtype=torch.bool)
        real = [(s, e) for s, e in segments if s < n]
        assert [e - s for s, e in real[:-1]] == packed[b]["seq_lengths"][:-1]
        for length, start in zip(packed[b]["seq_lengths"], [s for s, _ in real], strict=True):
            expected[start : start + length, start : start + length] = torch.tril(
                torch.ones(length, length, dtype=torch.bool)
            )
        expected[range(n, width), range(n, width)] = True  # padding attends to itself only
        assert torch.equal(mask[b], expected)


def load_tiny(folder, attn: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=attn)
    return model.eval()


def alone_logits(model, packed_row: dict) -> list[torch.Tensor]:
    out, start = [], 0
    for length in packed_row["seq_lengths"]:
        ids = torch.tensor([packed_row["input_ids"][start : start + length]])
        out.append(model(input_ids=ids).logits[0])
        start += length
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])  # eager adds the mask to the scores: it must be additive
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_packed_logits_equal_each_sample_alone(request, tokenizer, packed, arch: str, attn: str) -> None:
    """The proof that packing is exact: no sample sees another, positions restart, padding changes nothing."""
    model = load_tiny(request.getfixturevalue(f"tiny_{arch}_dir"), attn)
    batch = PackedCollator(tokenizer.pad_token_id)(packed)
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            attention_mask=batch["attention_mask"],
        ).logits
        for b, row in enumerate(packed):
            start = 0
            for alone, length in zip(alone_logits(model, row), row["seq_lengths"], strict=True):
                torch.testing.assert_close(logits[b, start : start + length], alone, atol=1e-4, rtol=0)
                start += length


def test_negative_control_without_the_mask_samples_leak(tokenizer, tiny_llama_dir, packed) -> None:
    """Restarting positions alone do not keep samples apart under SDPA: the test above can fail."""
    model = load_tiny(tiny_llama_dir, "sdpa")
    row = packed[0]
    batch = PackedCollator(tokenizer.pad_token_id)([row])
    with torch.no_grad():
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = alone_logits(model, row)
    first = row["seq_lengths"][0]
    torch.testing.assert_close(
        leaky[:first], alone[0], atol=1e-4, rtol=0
    )  # the first sample has nothing before it
    start = first
    for later, length in zip(alone[1:], row["seq_lengths"][1:], strict=True):
        assert (leaky[start : start + length] - later).abs().max() > 1e-3
        start += length


def test_packed_loss_equals_padded_loss(tokenizer, tiny_llama_dir, examples, packed) -> None:
    """Same samples, same loss: the boundary token never predicts the next sample's first token."""
    from lmtailor.train.collate import PaddedCollator

    model = load_tiny(tiny_llama_dir, "sdpa")
    packed_batch = PackedCollator(tokenizer.pad_token_id)(packed)
    padded_batch = PaddedCollator(tokenizer.pad_token_id)(examples)
    assert int((packed_batch["labels"] != IGNORE).sum()) == int((padded_batch["labels"] != IGNORE).sum())
    with torch.no_grad():
        packed_loss = model(**packed_batch).loss
        padded_loss = model(**padded_batch).loss
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=0)


def forward_backward(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    out = model(**batch)
    out.loss.backward()
    return out.logits.detach(), out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fast_path_equals_the_masked_path(request, tokenizer, packed, arch: str, tmp_path) -> None:
    """Per-sample attention from the varlen bounds, and the loss over trained positions only: the logits, loss
    and gradients of SDPA under the block-diagonal mask with transformers' own loss."""
    folder = request.getfixturevalue(f"tiny_{arch}_dir")
    masked, fast = load_tiny(folder, "sdpa").train(), load_tiny(folder, "sdpa").train()
    assert use_fast_path(fast, attention=True) == "sdpa"
    assert fast.config._attn_implementation == PACKED_SDPA
    row = packed[0]
    # The bounds go only to a model that reads them.
    assert "cu_seq_lens_q" not in PackedCollator(tokenizer.pad_token_id)([row])
    batch = PackedCollator(tokenizer.pad_token_id, varlen=True)([row])
    ends = torch.tensor(row["seq_lengths"]).cumsum(0).tolist()
    assert batch["cu_seq_lens_q"].tolist() == [0, *ends]
    assert batch["max_length_q"] == max(row["seq_lengths"])
    logits, loss, grads = forward_backward(masked, batch)
    fast_logits, fast_loss, fast_grads = forward_backward(fast, batch)
    torch.testing.assert_close(fast_logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast_loss, loss, atol=1e-6, rtol=0)
    assert grads.keys() == fast_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(fast_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)

    one = dict(batch, cu_seq_lens_q=torch.tensor([0, ends[-1]], dtype=torch.int32))  # bounds say: one sample
    with torch.no_grad():
        leaky = fast(**one).logits
    assert (leaky - logits).abs().max() > 1e-3  # the fast path attends by the bounds, not by the mask

    restore_attention(fast, "sdpa")
    assert fast.config._attn_implementation == "sdpa"
    fast.save_pretrained(tmp_path / "saved")
    assert "lmtailor" not in (tmp_path / "saved" / "config.json").read_text()


def test_two_rows_fall_back_to_the_mask(tokenizer, tiny_llama_dir, packed) -> None:
    """A batch of several rows carries no varlen bounds: the fast model attends through the mask, as exactly."""
    masked, fast = load_tiny(tiny_llama_dir, "sdpa"), load_tiny(tiny_llama_dir, "sdpa")
    use_fast_path(fast, attention=True)
    batch = PackedCollator(tokenizer.pad_token_id, varlen=True)(packed)
    assert "cu_seq_lens_q" not in batch
    with torch.no_grad():
        torch.testing.assert_close(fast(**batch).logits, masked(**batch).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_items", [None, 37])
def test_trained_positions_loss_is_transformers_loss(dtype, num_items) -> None:
    """The same loss and bit-identical gradients, with the untrained positions left out of the softmax."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 60, 500, dtype=dtype)
    labels = torch.randint(0, 500, (2, 60))
    labels[0, :20], labels[1, 35:50] = IGNORE, IGNORE
    n = None if num_items is None else torch.tensor(num_items)
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = trained_positions_loss(ours, labels, 500, num_items_in_batch=n)
    expected = ForCausalLMLoss(theirs, labels, 500, num_items_in_batch=n)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=0)
    loss.backward()
    expected.backward()
    assert torch.equal(ours.grad, theirs.grad)
    assert ours.grad[0, :19].abs().sum() == 0 and ours.grad[0, 20:].abs().sum() > 0


def test_bf16_keeps_the_masked_attention(tiny_llama_dir) -> None:
    """Without `attention` (bf16 and fp16 runs: train/fastpath.py) only the loss changes."""
    model = load_tiny(tiny_llama_dir, "sdpa")
    assert use_fast_path(model, attention=False) is None
    assert model.config._attn_implementation == "sdpa"
    assert model.loss_function is trained_positions_loss


@pytest.mark.parametrize(
    "strategy, precision, expected",
    [("freeze", "fp32", PACKED_SDPA), ("lora", "fp32", PACKED_SDPA), ("full", "bf16", "sdpa")],
)
def test_run_sft_attends_per_sample_in_fp32_only(
    tiny_llama_dir, tiny_chat_file, tmp_path, strategy: str, precision: str, expected: str
) -> None:
    """What run_sft trains with, seen from a callback at every step, and what it saves afterwards."""
    from transformers import TrainerCallback

    from lmtailor.specs import TrainSpec
    from lmtailor.train.callbacks import read_metrics
    from lmtailor.train.sft import run_sft

    seen = []

    class Seen(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            inner = model.get_base_model() if hasattr(model, "get_base_model") else model
            seen.append(inner.config._attn_implementation)

    spec = TrainSpec(model=str(tiny_llama_dir), data=str(tiny_chat_file), output=str(tmp_path / "out"),
                     strategy=strategy, precision=precision, epochs=1, batch_size=4)  # fmt: skip
    logged: list[str] = []
    out = run_sft(spec, home=tmp_path / "home", progress=False, log=logged.append, callbacks=[Seen()])
    assert seen and set(seen) == {expected}
    saved = out / "merged" if (out / "merged").exists() else out
    assert "lmtailor" not in (saved / "config.json").read_text(encoding="utf-8")
    # Shared prefixes: the model computes fewer tokens than the samples hold; tokens seen are the samples'.
    line = next(m for m in logged if "tokens are computed" in m)
    computed, whole = (int(w) for w in re.findall(r"(\d+) of the (\d+) tokens", line)[0])
    assert 0 < computed < whole
    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    assert card["metrics"]["computed_tokens"] == computed
    assert read_metrics(out / "metrics.jsonl")[-1]["tokens_seen"] == whole


def test_padded_batches_keep_their_mask_on_the_fast_path(tokenizer, lively_llama_dir) -> None:
    """Generation during training (eval metrics) goes through the same model: a left-padded batch must still
    see its padding mask, as under plain SDPA."""
    plain, fast = load_tiny(lively_llama_dir, "sdpa"), load_tiny(lively_llama_dir, "sdpa")
    use_fast_path(fast, attention=True)
    batch = tokenizer(["Hi", "What is the capital of France, and why?"], padding=True, padding_side="left",
                      return_tensors="pt")  # fmt: skip
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        real = batch["attention_mask"].bool()
        torch.testing.assert_close(fast(**batch).logits[real], plain(**batch).logits[real], atol=1e-5, rtol=0)
        generated = [m.generate(**batch, max_new_tokens=6, do_sample=False) for m in (plain, fast)]
    assert torch.equal(generated[0], generated[1])


def test_shared_prefix_stops_before_anything_trained() -> None:
    """The prefix: common to all samples, untrained, the token after it untrained too, a token of each left."""
    same = [1, 2, 3, 4, 5, 6]
    untrained = [IGNORE] * 6
    assert shared_prefix([same, same[:4] + [9, 9]], [untrained, untrained]) == 4
    assert shared_prefix([same, same], [untrained, untrained]) == 5  # each sample keeps its last token
    trained_at_3 = [IGNORE, IGNORE, IGNORE, 4, 5, 6]
    assert shared_prefix([same, same], [untrained, trained_at_3]) == 2  # tokens 0-2 untrained, 2 is the last
    assert shared_prefix([same], [untrained]) == 0
    assert shared_prefix([same, [7, *same[1:]]], [untrained, untrained]) == 0


def test_shared_prefix_layout(tokenizer, examples, packed) -> None:
    """Each row holds its samples' common prefix once; every sample is the prefix plus its segment, at the
    positions it would have alone, with its own labels."""
    plain = PackedCollator(tokenizer.pad_token_id)(packed)
    batch = PackedCollator(tokenizer.pad_token_id, share_prefix=True)(packed)
    system = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False).split("x")[0]
    prefix = len(tokenizer(system)["input_ids"])  # the default system prompt and the user turn's header
    assert prefix > 10
    originals = by_ids(examples)
    for b, row in enumerate(packed):
        n = len(row["seq_lengths"])
        layout = lay_out(row, share=True)
        assert layout.prefix == prefix
        assert len(layout.ids) == len(row["input_ids"]) - (n - 1) * prefix
        ids, labels = batch["input_ids"][b].tolist(), batch["labels"][b].tolist()
        positions = batch["position_ids"][b].tolist()
        start = 0
        for i, length in enumerate(layout.lengths):
            cut = prefix if i else 0
            sample = ids[:prefix] + ids[start : start + length] if i else ids[start : start + length]
            original = originals[tuple(sample)]
            assert positions[start : start + length] == list(range(cut, len(sample)))
            assert labels[start] == IGNORE
            assert labels[start + 1 : start + length] == original["labels"][cut + 1 :]
            start += length
        assert unshared_lengths(batch["position_ids"][b : b + 1]) == [len(row["input_ids"]) + (
            batch["input_ids"].shape[1] - len(layout.ids))]  # fmt: skip
    assert unshared_lengths(plain["position_ids"]) == [plain["input_ids"].shape[1]] * 2
    assert int((batch["labels"] != IGNORE).sum()) == int((plain["labels"] != IGNORE).sum())


def sample_logits(logits: torch.Tensor, row: dict, share: bool) -> list[torch.Tensor]:
    """Each sample's logits from a row's output, the shared prefix's taken from the row's start."""
    layout = lay_out(row, share)
    out, start = [], 0
    for i, length in enumerate(layout.lengths):
        own = logits[start : start + length]
        out.append(torch.cat((logits[: layout.prefix], own)) if i and layout.prefix else own)
        start += length
    return out


@pytest.mark.parametrize("path", ["sdpa", "eager", "fast"])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_shared_prefix_computes_what_the_unshared_row_does(
    request, tokenizer, packed, arch: str, path: str
) -> None:
    """The same logits at every sample's tokens, the same loss, the same gradient of every parameter as the row
    with every sample whole, through the mask (SDPA, eager) and through the per-sample attention."""
    folder = request.getfixturevalue(f"tiny_{arch}_dir")
    reference = load_tiny(folder, "sdpa").train()
    model = load_tiny(folder, "eager" if path == "eager" else "sdpa").train()
    if path == "fast":
        use_fast_path(model, attention=True)
    row = packed[0]
    plain = PackedCollator(tokenizer.pad_token_id)([row])
    shared = PackedCollator(tokenizer.pad_token_id, varlen=path == "fast", share_prefix=True)([row])
    assert shared["input_ids"].shape[1] < plain["input_ids"].shape[1]
    assert (SHARED_PREFIX in shared) == (path == "fast")
    logits, loss, grads = forward_backward(reference, plain)
    shared_logits, shared_loss, shared_grads = forward_backward(model, shared)
    for ours, theirs in zip(sample_logits(shared_logits[0], row, True), sample_logits(logits[0], row, False),
                            strict=True):  # fmt: skip
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(shared_loss, loss, atol=1e-6, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)
    if path == "fast":  # negative control: without the prefix's length the later samples lose their start
        blind = {k: v for k, v in shared.items() if k != SHARED_PREFIX}
        with torch.no_grad():
            assert (model(**blind).logits - shared_logits).abs().max() > 1e-3


def test_packed_trainer_counts_and_noises_the_unshared_row(
    tokenizer, tiny_llama_dir, packed, tmp_path
) -> None:
    """Tokens seen are the samples' own, and NEFTune's noise is as small as on the row with every sample whole
    (alpha / sqrt(width x hidden)), not as large as the shorter shared row would make it."""
    import math

    from transformers import TrainingArguments
    from transformers.integrations.neftune import activate_neftune

    model = load_tiny(tiny_llama_dir, "sdpa").train()
    args = TrainingArguments(output_dir=str(tmp_path), neftune_noise_alpha=5.0, use_cpu=True, report_to="none",
                             include_num_input_tokens_seen="all")  # fmt: skip
    trainer = PackedTrainer(model=model, args=args)
    activate_neftune(model, 5.0)
    row = packed[0]
    batch = PackedCollator(tokenizer.pad_token_id, share_prefix=True)([row])
    assert batch["input_ids"].shape[1] < len(row["input_ids"])
    noised = []
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: noised.append(out.detach()))
    trainer.compute_loss(model, batch)
    noise = (noised[0] - model.get_input_embeddings().weight[batch["input_ids"]].detach()).abs().max()
    magnitude = 5.0 / math.sqrt(len(row["input_ids"]) * model.config.hidden_size)
    assert 0.9 * magnitude < noise <= magnitude
    trainer._track_num_input_tokens(batch)
    trainer._track_num_input_tokens(PackedCollator(tokenizer.pad_token_id)([row]))
    assert trainer.state.num_input_tokens_seen == 2 * len(row["input_ids"])


def test_rows_with_different_prefixes_and_padding_through_the_mask(
    tokenizer, tiny_qwen2_dir, examples
) -> None:
    """Rows in one batch: one whose samples share the default system prompt, one whose samples share another
    (shorter) one, and a one-sample row (no prefix): the same logits at every sample's tokens as unshared."""
    custom = [Record([Message("system", "You answer in one short sentence."), Message("user", q),
                      Message("assistant", a)]) for q, a in QA[:2]]  # fmt: skip
    custom_examples, _ = tokenize_records(tokenizer, custom)

    def row(samples: list[dict]) -> dict:
        return {"input_ids": sum((s["input_ids"] for s in samples), []),
                "labels": sum((s["labels"] for s in samples), []),
                "seq_lengths": [len(s["input_ids"]) for s in samples]}  # fmt: skip

    rows = [row(examples[:3]), row(custom_examples), row(examples[3:4])]
    prefixes = [lay_out(r, share=True).prefix for r in rows]
    assert prefixes[0] != prefixes[1] and min(prefixes[:2]) > 0 == prefixes[2]
    model = load_tiny(tiny_qwen2_dir, "sdpa")
    plain = PackedCollator(tokenizer.pad_token_id)(rows)
    shared = PackedCollator(tokenizer.pad_token_id, share_prefix=True)(rows)
    assert shared["input_ids"].shape[1] < plain["input_ids"].shape[1]
    with torch.no_grad():
        ours, theirs = model(**shared).logits, model(**plain).logits
    for b, r in enumerate(rows):
        for mine, reference in zip(
            sample_logits(ours[b], r, True), sample_logits(theirs[b], r, False), strict=True
        ):
            torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)
    one = PackedCollator(tokenizer.pad_token_id, varlen=True, share_prefix=True)([rows[2]])
    assert SHARED_PREFIX not in one and one["cu_seq_lens_q"].tolist() == [0, len(rows[2]["input_ids"])]


def test_only_models_that_compute_a_prefix_alike_share_it(tiny_llama_dir, tiny_qwen2_dir) -> None:
    from transformers import AutoConfig, BloomConfig, GPT2Config, MixtralConfig

    for folder in (tiny_llama_dir, tiny_qwen2_dir):
        config = AutoConfig.from_pretrained(folder)
        assert can_share_prefix(config, trust_remote_code=False)
        assert not can_share_prefix(config, trust_remote_code=True)  # its code may ignore the position ids
    assert not can_share_prefix(BloomConfig(), False)  # ALiBi: distances along the row
    assert not can_share_prefix(GPT2Config(), False)  # not rotary: not checked, so not shared
    assert can_share_prefix(MixtralConfig(), False)
    assert not can_share_prefix(MixtralConfig(output_router_logits=True), False)  # its aux loss counts tokens
