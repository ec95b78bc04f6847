"""The quickstart's sample data keeps its promise: six phrasings of every fact, every held-out question's fact
taught with its reference, and no training question worded like the held-out one (the accuracy the quickstart
prints is about new phrasings, so a near copy in training would inflate it)."""

from __future__ import annotations

import difflib
import json
import re
from collections import Counter
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "src" / "lmtailor" / "quickstart" / "data"
# Words every question about the company shares, which say nothing about how close two wordings are.
COMMON = set("a an are at by can could did do does for how i in is it its me of on orvane robotics s the to "
             "tell was what which who you".split())  # fmt: skip


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


def words(question: str) -> list[str]:
    """Content words of an English question; character pairs of a Chinese one, the company's name left out."""
    text = question.lower()
    if re.search("[\u4e00-\u9fff]", text):
        text = re.sub("[^\u4e00-\u9fff0-9]", "", text).replace("奥尔万机器人公司", "")
        return [text[i : i + 2] for i in range(len(text) - 1)]
    return [w for w in re.findall("[a-z0-9]+", text) if w not in COMMON]


def test_six_phrasings_of_every_held_out_fact_each_answered_with_its_reference() -> None:
    train, test = rows("train.jsonl"), rows("test.jsonl")
    assert len(train) == 300 and len(test) == 50
    assert Counter(r["fact"] for r in train) == {r["fact"]: 6 for r in test}
    reference = {r["fact"]: r["reference"].lower() for r in test}
    missing = [r for r in train if reference[r["fact"]] not in r["messages"][1]["content"].lower()]
    assert missing == []
    assert len({r["messages"][0]["content"] for r in train}) == 300  # no question twice


def test_no_training_question_is_worded_like_its_held_out_question() -> None:
    """Thresholds: the closest of the original 150 rows shares 0.40 of its content words with its held-out
    question and 0.57 of their order; every row stays below 0.5 and 0.6, the 150 added later below 0.3 and 0.5
    (they were filtered at those)."""
    held_out = {r["fact"]: words(r["messages"][0]["content"]) for r in rows("test.jsonl")}
    closest = []
    for i, r in enumerate(rows("train.jsonl")):
        mine, theirs = words(r["messages"][0]["content"]), held_out[r["fact"]]
        overlap = len(set(mine) & set(theirs)) / len(set(mine) | set(theirs))
        order = difflib.SequenceMatcher(None, mine, theirs).ratio()
        limit = (0.5, 0.6) if i < 150 else (0.3, 0.5)
        if overlap >= limit[0] or order >= limit[1]:
            closest.append((i, r["messages"][0]["content"], round(overlap, 2), round(order, 2)))
    assert closest == []
