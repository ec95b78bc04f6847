"""Chat-template tokenisation: loss only on weight-1 assistant turns (through <|im_end|>), truncation, dropping."""

from __future__ import annotations

from lmtailor.data.records import Message, Record
from lmtailor.data.tokenize import IGNORE, tokenize_record, tokenize_records


def multi_turn(first_weight: int = 0) -> Record:
    return Record(
        [
            Message("system", "Be brief."),
            Message("user", "Hi"),
            Message("assistant", "Hello there", weight=first_weight),
            Message("user", "2+2?"),
            Message("assistant", "It is 4."),
        ],
        source="f.jsonl",
        line=3,
    )


def trained_positions(example: dict) -> list[int]:
    return [i for i, label in enumerate(example["labels"]) if label != IGNORE]


def find(ids: list[int], sub: list[int]) -> int:
    """Start of the only occurrence of `sub` in `ids`."""
    hits = [i for i in range(len(ids) - len(sub) + 1) if ids[i : i + len(sub)] == sub]
    assert len(hits) == 1, hits
    return hits[0]


def test_only_final_weight_1_assistant_turn_is_trained(tokenizer) -> None:
    record = multi_turn(first_weight=0)
    ex, truncated = tokenize_record(tokenizer, record)
    ids, labels = ex["input_ids"], ex["labels"]

    assert truncated is False
    assert tokenizer.decode(ids) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello there<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\nIt is 4.<|im_end|>\n"
    )
    pos = trained_positions(ex)
    # One contiguous span: the answer's tokens and <|im_end|>, not the generation prompt, not the final "\n".
    assert pos == list(range(pos[0], pos[0] + len(pos)))
    assert tokenizer.decode([labels[i] for i in pos]) == "It is 4.<|im_end|>"
    assert [labels[i] for i in pos] == ids[pos[0] : pos[-1] + 1]
    assert ids[pos[-1]] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert pos[-1] == len(ids) - 2 and tokenizer.decode(ids[-1:]) == "\n"
    assert tokenizer.decode(ids[pos[0] - 4 : pos[0]]) == "<|im_start|>assistant\n"

    # The weight-0 turn is context only: none of its tokens is trained.
    context = tokenizer.encode("Hello there<|im_end|>", add_special_tokens=False)
    start = find(ids, context)
    assert labels[start : start + len(context)] == [IGNORE] * len(context)
    assert (
        sum(label != IGNORE for label in labels)
        == len(tokenizer.encode("It is 4.", add_special_tokens=False)) + 1
    )


def test_weight_1_on_both_turns_trains_both(tokenizer) -> None:
    ex, _ = tokenize_record(tokenizer, multi_turn(first_weight=1))
    trained = [label for label in ex["labels"] if label != IGNORE]
    assert tokenizer.decode(trained) == "Hello there<|im_end|>It is 4.<|im_end|>"


def test_default_system_prompt_and_user_turn_are_not_trained(tokenizer) -> None:
    record = Record([Message("user", "Capital of France?"), Message("assistant", "Paris.")])
    ex, _ = tokenize_record(tokenizer, record)
    text = tokenizer.decode(ex["input_ids"])
    assert text.startswith(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM"
    )  # the template's default
    assert tokenizer.decode([t for t in ex["labels"] if t != IGNORE]) == "Paris.<|im_end|>"


def test_chinese_content_is_trained_exactly(tokenizer) -> None:
    answer = "我很好，谢谢！北京是中国的首都。"
    record = Record([Message("user", "你好吗？"), Message("assistant", answer)])
    ex, _ = tokenize_record(tokenizer, record)
    pos = trained_positions(ex)
    assert pos == list(range(pos[0], pos[0] + len(pos)))  # byte-level pieces of a character are not split off
    assert tokenizer.decode([ex["labels"][i] for i in pos]) == answer + "<|im_end|>"
    question = tokenizer.encode("你好吗？", add_special_tokens=False)
    start = find(ex["input_ids"], question)
    assert ex["labels"][start : start + len(question)] == [IGNORE] * len(question)


def test_truncation_is_counted_and_keeps_the_trained_prefix(tokenizer) -> None:
    record = multi_turn()
    full, _ = tokenize_record(tokenizer, record)
    n = len(full["input_ids"])
    # Cut "\n", "<|im_end|>" and "." from the end: 4 of the 6 trained tokens remain.
    ex, truncated = tokenize_record(tokenizer, record, max_length=n - 3)
    assert truncated is True
    assert ex["input_ids"] == full["input_ids"][: n - 3]
    assert tokenizer.decode([t for t in ex["labels"] if t != IGNORE]) == "It is 4"

    examples, stats = tokenize_records(tokenizer, [record, record], max_length=n - 3)
    assert len(examples) == 2
    assert (stats.rows, stats.truncated, stats.tokens) == (2, 2, 2 * (n - 3))
    assert len(trained_positions(ex)) == 4
    assert stats.trained_tokens == 2 * 4
    assert stats.dropped == []

    examples, stats = tokenize_records(tokenizer, [record], max_length=n)
    assert (stats.rows, stats.truncated, stats.tokens, stats.trained_tokens) == (1, 0, n, 6)


def test_row_dropped_when_truncation_removes_every_trained_token(tokenizer) -> None:
    record = multi_turn()
    full, _ = tokenize_record(tokenizer, record)
    first_trained = trained_positions(full)[0]
    kept = Record([Message("user", "Hi"), Message("assistant", "Yes.")], source="f.jsonl", line=9)

    examples, stats = tokenize_records(tokenizer, [record, kept], max_length=first_trained)
    assert stats.truncated == 1  # the long row; the short one fits
    assert stats.rows == 1 and len(examples) == 1
    assert stats.dropped == [f"f.jsonl:3: no assistant tokens left within max_length {first_trained}"]
    assert tokenizer.decode([t for t in examples[0]["labels"] if t != IGNORE]) == "Yes.<|im_end|>"
    assert stats.tokens == len(examples[0]["input_ids"])

    # One more token and the row survives with exactly one trained token.
    examples, stats = tokenize_records(tokenizer, [record], max_length=first_trained + 1)
    assert (stats.rows, stats.trained_tokens, stats.dropped) == (1, 1, [])
