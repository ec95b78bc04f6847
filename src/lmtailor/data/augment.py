"""Noisy copies of the user turns: what makes a model answer new phrasings, not only the trained ones.

A model fine-tuned on a few phrasings of each question learns to echo the question's wording and then
continue the memorised answer; a new phrasing sends the echo elsewhere. Copies whose questions lose a
few words (or characters, in Chinese) and swap neighbours, with the answers untouched, teach it to
answer from the question's key words instead. No library does this for chat rows (nlpaug wants
models or word lists for most of its methods), so it is done here, seeded and deterministic.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from lmtailor.data.records import Message, Record

_CJK = re.compile(r"[\u3400-\u9fff]")


def noisy_text(text: str, rng: random.Random, drop: float = 0.15) -> str:
    """Drop about `drop` of the words (CJK: characters) and swap one neighbouring pair."""
    if _CJK.search(text):
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
