"""Chat-template tokenisation with loss only on assistant turns of weight 1, and length accounting."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmtailor.data.records import Record
from lmtailor.errors import DataError

IGNORE = -100


@dataclass
class TokenizeStats:
    rows: int = 0
    tokens: int = 0
    trained_tokens: int = 0
    truncated: int = 0
    dropped: list[str] = field(default_factory=list)  # "file:line: reason" of rows left with nothing to learn


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_spans(tokenizer, record: Record) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans the model learns: each weight-1 assistant turn,
    from the end of its generation prompt through its end-of-turn marker."""
    msgs = record.as_dicts()
    text = _render(tokenizer, msgs, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(record.messages):
        if m.role != "assistant":
            continue
        prefix = _render(tokenizer, msgs[:i], add_generation_prompt=True)
        upto = _render(tokenizer, msgs[: i + 1], add_generation_prompt=False)
        if text.startswith(upto) and upto.startswith(prefix):
            start, end = len(prefix), len(upto)
        else:  # templates that rewrite earlier turns: fall back to finding the content itself
            start = text.find(m.content, cursor)
            if start < 0:
                raise DataError(record.source, record.line, "chat template drops an assistant turn's content")
            end = start + len(m.content)
            eos = tokenizer.eos_token or ""
            if eos and text.startswith(eos, end):
                end += len(eos)
        # Keep the trailing newline after the end-of-turn marker out of the loss: it is template padding.
        while end > start and text[end - 1] in "\n ":
            end -= 1
        cursor = end
        if m.weight:
            spans.append((start, end))
    return text, spans


def tokenize_record(tokenizer, record: Record, max_length: int | None = None) -> tuple[dict, bool]:
    """input_ids and labels (IGNORE outside trained spans); returns (example, truncated)."""
    text, spans = assistant_spans(tokenizer, record)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for t, (a, b) in enumerate(offsets):
        if b > a and any(a < e and b > s for s, e in spans):  # overlapping: a token may start in the template
            labels[t] = ids[t]
    return truncate({"input_ids": ids, "labels": labels}, max_length)


def truncate(example: dict, max_length: int | None) -> tuple[dict, bool]:
    """The example cut to `max_length` tokens; returns (example, truncated)."""
    if max_length is None or len(example["input_ids"]) <= max_length:
        return example, False
    return {k: v[:max_length] for k, v in example.items()}, True


def tokenize_records(
    tokenizer, records: list[Record], max_length: int | None = None, full: list[dict] | None = None
):
    """Tokenise every record; rows whose trained tokens were all truncated away are dropped and reported.

    `full`: the records already tokenised without a limit (one per record), so they are not tokenised again."""
    examples, stats = [], TokenizeStats()
    for i, rec in enumerate(records):
        if full is None:
            ex, truncated = tokenize_record(tokenizer, rec, max_length)
        else:
            ex, truncated = truncate(full[i], max_length)
        n_train = sum(1 for x in ex["labels"] if x != IGNORE)
        stats.truncated += truncated
        if n_train == 0:
            stats.dropped.append(
                f"{rec.source}:{rec.line}: no assistant tokens left within max_length {max_length}"
            )
            continue
        stats.rows += 1
        stats.tokens += len(ex["input_ids"])
        stats.trained_tokens += n_train
        examples.append(ex)
    return examples, stats
