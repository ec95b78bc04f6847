"""validate_record's rules, and validate_file with every error located by line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtailor.data.records import Message, Record, validate_record
from lmtailor.data.validate import token_length, validate_file
from lmtailor.errors import LmtailorError


def rec(*turns: tuple[str, str] | tuple[str, str, int]) -> Record:
    return Record(messages=[Message(*t) for t in turns])


class CharTokenizer:
    """A stand-in for a tokenizer, for the length function only: one token per character of content.

    `as_dict` makes it answer like transformers 5 (a mapping with input_ids) or like older versions (ids).
    """

    def __init__(self, as_dict: bool = True):
        self.as_dict = as_dict

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = True) -> object:
        assert tokenize
        ids = [ord(c) for m in messages for c in m["content"]]
        return {"input_ids": ids, "attention_mask": [1] * len(ids)} if self.as_dict else ids


def test_a_good_conversation_passes() -> None:
    assert validate_record(rec(("system", "S"), ("user", "q"), ("assistant", "a"))) is None
    assert (
        validate_record(rec(("user", "q"), ("assistant", "a", 0), ("user", "q2"), ("assistant", "a2")))
        is None
    )


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (rec(), "no messages"),
        (rec(("user", "  \n"), ("assistant", "a")), "empty content in the user message (messages[0])"),
        (rec(("user", "q"), ("assistant", "")), "empty content in the assistant message (messages[1])"),
        (
            rec(("user", "q"), ("system", "S"), ("assistant", "a")),
            "system message at messages[1]; only the first message may be a system message",
        ),
        (
            rec(("assistant", "a"), ("user", "q"), ("assistant", "a")),
            "messages[0] is 'assistant' where 'user' was expected (turns alternate user/assistant, starting with user)",
        ),
        (
            rec(("system", "S"), ("user", "q"), ("user", "q"), ("assistant", "a")),
            "messages[2] is 'user' where 'assistant' was expected (turns alternate user/assistant, starting with user)",
        ),
        (rec(("system", "S")), "only a system message; no user or assistant turns"),
        (
            rec(("user", "q"), ("assistant", "a"), ("user", "q2")),
            "last message is 'user'; a training row must end with an assistant message",
        ),
        (
            rec(("user", "q"), ("assistant", "a", 0)),
            "no assistant turn to learn from (every assistant message has weight 0)",
        ),
    ],
)
def test_each_rule_has_its_reason(record: Record, reason: str) -> None:
    assert validate_record(record) == reason


def test_validate_file_reports_every_bad_row_with_its_line(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},  # 1 ok
        {"messages": [{"role": "assistant", "content": "a"}]},  # 2 order
        {"instruction": "", "output": "x"},  # 3 empty instruction
        {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]
        },  # 4
        {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},  # 5 ok
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    result = validate_file(path)
    assert [r.line for r in result.records] == [1, 5]
    assert [(e.line, e.reason) for e in result.errors] == [
        (
            2,
            "messages[0] is 'assistant' where 'user' was expected (turns alternate user/assistant, starting with user)",
        ),
        (3, "empty content in the user message (messages[0])"),
        (4, "no assistant turn to learn from (every assistant message has weight 0)"),
    ]
    assert str(result.errors[0]).startswith(f"{path}:2: ")


@pytest.mark.parametrize("as_dict", [True, False])
def test_token_length_takes_a_mapping_or_a_list(as_dict: bool) -> None:
    assert token_length(CharTokenizer(as_dict), rec(("user", "abc"), ("assistant", "你好"))) == 5


def test_validate_file_flags_over_long_rows(tmp_path: Path) -> None:
    rows = [
        {"instruction": "hi", "output": "yo"},  # 4 characters
        {"instruction": "hello", "output": "there you go"},  # 17 characters
        {"instruction": "", "output": "x"},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    result = validate_file(path, tokenizer=CharTokenizer(), max_length=10)
    assert [r.line for r in result.records] == [1]
    assert [(e.line, e.reason) for e in result.errors] == [
        (2, "over-long: 17 tokens > max_length 10"),
        (3, "empty content in the user message (messages[0])"),
    ]


def test_max_length_without_tokenizer_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LmtailorError, match="max_length needs a tokenizer"):
        validate_file(tmp_path / "d.jsonl", max_length=10)
