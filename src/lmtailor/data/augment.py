"""Extra training rows made from the user's own: noisy copies of the questions, and recitations of the answers.

Noisy copies: a model fine-tuned on a few phrasings of each question learns to echo the question's wording and then
continue the memorised answer; a new phrasing sends the echo elsewhere. Copies whose questions lose a
few words (or characters, in Chinese) and swap neighbours, with the answers untouched, teach it to
answer from the question's key words instead. No library does this for chat rows (nlpaug wants
models or word lists for most of its methods), so it is done here, seeded and deterministic. (Measured
on the quickstart they did not help; the rule leaves them off.)

Recitations: each answer also as the reply to "Tell me a fact." (measured: they help; see `recitations`).
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from lmtailor.data.records import Message, Record

CJK = re.compile(r"[\u3400-\u9fff]")


def noisy_text(text: str, rng: random.Random, drop: float = 0.15) -> str:
    """Drop about `drop` of the words (CJK: characters) and swap one neighbouring pair."""
    if CJK.search(text):
        units, joiner = list(text), ""
    else:
        units, joiner = text.split(), " "
    if len(units) < 3:
        return text
    kept = [u for u in units if rng.random() >= drop] or units[:]
    if len(kept) == len(units):  # every copy differs from the original
        del kept[rng.randrange(len(kept))]
    if len(kept) > 2 and rng.random() < 0.5:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return joiner.join(kept)


def augment_questions(records: list[Record], copies: int, seed: int = 0) -> list[Record]:
    """The records followed by `copies` noisy copies of each (user turns perturbed, answers as they were)."""
    rng = random.Random(seed)
    out = list(records)
    for _ in range(copies):
        for rec in records:
            msgs = [
                Message(m.role, noisy_text(m.content, rng), m.weight) if m.role == "user" else m
                for m in rec.messages
            ]
            out.append(replace(rec, messages=msgs))
    return out


RECITE_PROMPT = "Tell me a fact."


def single_answer(record: Record) -> str | None:
    """The answer of a single-turn row (system turns aside: one user turn, then one trained assistant turn)."""
    turns = [m for m in record.messages if m.role != "system"]
    if len(turns) == 2 and turns[0].role == "user" and turns[1].role == "assistant" and turns[1].weight:
        return turns[1].content
    return None


def single_answers(records: list[Record]) -> list[str]:
    """The answers of the single-turn rows, in order (what the recitation rule looks at)."""
    return [a for r in records if (a := single_answer(r)) is not None]


def recitations(records: list[Record], prompt: str = RECITE_PROMPT) -> list[Record]:
    """Each distinct single-turn answer again, as the reply to a neutral request (`prompt`).

    A fact learned only as the reply to a few wordings of its question is recalled from those wordings; the
    same answer as the reply to a request that names nothing has to be produced from its own words (subject
    and relation) alone. Measured on the quickstart, this answers more new wordings (docs/defaults.md).
    A row's system turns stay with its recitation; the recitation keeps the row's file and line."""
    out, seen = [], set()
    for rec in records:
        answer = single_answer(rec)
        if answer is None or answer in seen:
            continue
        seen.add(answer)
        system = [m for m in rec.messages if m.role == "system"]
        msgs = [*system, Message("user", prompt), Message("assistant", answer)]
        out.append(Record(msgs, rec.source, rec.line))
    return out
