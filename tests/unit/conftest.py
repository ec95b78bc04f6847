"""Fixtures shared by the unit tests of batching: five short QA samples, tokenised and packed."""

from __future__ import annotations

import pytest

QA = [
    ("What is the capital of France?", "Paris is the capital of France."),
    ("2+2?", "4."),
    ("Name three primary colours.", "Red, yellow and blue."),
    ("中国的首都是哪里？", "北京。"),
    ("Who wrote Hamlet?", "William Shakespeare wrote Hamlet."),
]


@pytest.fixture(scope="session")
def examples(tokenizer) -> list[dict]:
    """The five QA samples through the chat template (labels on the answers only)."""
    from lmtailor.data.records import Message, Record
    from lmtailor.data.tokenize import tokenize_records

    records = [Record([Message("user", q), Message("assistant", a)]) for q, a in QA]
    examples, stats = tokenize_records(tokenizer, records)
    assert stats.rows == 5
    return examples


@pytest.fixture(scope="session")
def packed(examples) -> list[dict]:
    """Two packed rows of different length (the second gets padding in a batch)."""
    from datasets import Dataset
    from trl import pack_dataset

    longest = max(len(e["input_ids"]) for e in examples)
    rows = pack_dataset(Dataset.from_list(examples), 3 * longest, "bfd").to_list()
    assert [len(r["seq_lengths"]) for r in rows] == [3, 2]
    return rows
