"""The bundled retention probes and replay prompts are well formed, and no replay prompt is a near copy of a probe.

Replay answers are trained on; the probes measure what a tuned model kept on questions it never trained on, so a
replay prompt worded like a probe, or asking the same thing in other words, would inflate the retention it reports."""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache
from pathlib import Path

import pytest

from lmtailor.data.clean import jaccard
from lmtailor.evaluate.match import contains, normalize

SRC = Path(__file__).resolve().parents[2] / "src" / "lmtailor"
PROBES = SRC / "evaluate" / "probes" / "probes.jsonl"
REPLAY = SRC / "data" / "replay" / "prompts.jsonl"
PROBE_CATEGORIES = {"facts", "arithmetic", "instructions", "writing"}
REPLAY_CATEGORIES = {"explain", "howto", "facts", "writing", "math", "advice", "list", "rewrite", "summarise",
                     "translate", "classify"}  # fmt: skip
# Words that say nothing about what a question asks: articles, pronouns, question words, auxiliaries.
STOP = set("a about an and any are as at be by can could did do does for from give has have he her his how i if in "
           "into is it its many me much my of on one or our she some tell that the their them there these they this "
           "to was we were what when where which who why will with would you your".split())  # fmt: skip
# Chinese question scaffolding, as character pairs.
STOP_ZH = {"什么", "么是", "是什", "哪里", "哪个", "是哪", "多少", "是多", "几个", "一个", "一下", "请问", "是谁", "为什",
           "怎么", "怎样", "如何", "的是", "通常", "一般", "主要", "请用", "请把", "回答"}  # fmt: skip
CJK = re.compile("[\u3400-\u9fff]")
# The closest real pairs share 0.48 of their 5-grams (0.20 of 3-grams in Chinese), 0.50 of their content words
# and 0.43 of their character pairs. A one-word synonym in a short Chinese prompt removes two or three of its
# pairs, hence the lower bound there.
JACCARD_MAX, SHARED_MAX = 0.5, {"en": 0.6, "zh": 0.5}


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@cache
def grams(text: str, zh: bool) -> frozenset[str]:
    """Character 5-grams of the normalised text; 3-grams of a Chinese one, whose characters carry more."""
    n, text = (3, normalize(text).replace(" ", "")) if zh else (5, normalize(text))
    return frozenset(text[i : i + n] for i in range(max(1, len(text) - n + 1)))


@cache
def content(text: str, zh: bool) -> frozenset[str]:
    """Content words of an English text; for Chinese, character pairs of each run of characters or digits."""
    if not zh:
        return frozenset(w for w in normalize(text).split() if w not in STOP)
    runs = re.findall("[\u3400-\u9fff0-9]+", normalize(text))
    return frozenset(r[i : i + 2] for r in runs for i in range(len(r) - 1)) - STOP_ZH


def is_name(ref: str) -> bool:
    """An answer specific enough that mentioning it gives the probe away: a name or number of 3+ characters
    (a Chinese name of 2+), not a common word like "blue" or "ice"."""
    if CJK.search(ref):
        return len(ref) >= 2 and not ref.isdigit()
    return len(ref) >= 3 and (ref[0].isupper() or any(c.isdigit() for c in ref))


def near_copy(prompt: str, probe: dict) -> str | None:
    """Why a replay prompt is too close to a probe of its language, or None.

    (a) its character n-grams overlap the probe's (Jaccard); (b) it shares most content words (English) or
    character pairs (Chinese) of the shorter of the two; (c) it names the probe's answer and shares a content
    word with the probe (it teaches that answer in the probe's context)."""
    zh = probe["lang"] == "zh"
    similarity = jaccard(grams(prompt, zh), grams(probe["prompt"], zh))
    if similarity >= JACCARD_MAX:
        return f"character n-grams overlap {similarity:.2f}"
    mine, theirs = content(prompt, zh), content(probe["prompt"], zh)
    shared = mine & theirs
    smaller = min(len(mine), len(theirs))
    if smaller >= 2 and len(shared) / smaller >= SHARED_MAX[probe["lang"]]:
        return f"shares {sorted(shared)}"
    for ref in probe.get("accept", []):
        if is_name(ref) and contains(prompt, ref) and shared - content(ref, zh):
            return f"names the answer {ref!r} and shares {sorted(shared)}"
    return None


def contamination(replay: list[dict], probes: list[dict]) -> list[tuple[str, str, str]]:
    return [
        (r["id"], p["id"], why)
        for r in replay
        for p in probes
        if r["lang"] == p["lang"] and (why := near_copy(r["prompt"], p))
    ]


def test_probes_are_well_formed_and_sized() -> None:
    probes = rows(PROBES)
    assert len({p["id"] for p in probes}) == len(probes)
    for p in probes:
        assert set(p) <= {"id", "category", "lang", "prompt", "accept", "pattern"}, p["id"]
        assert p["category"] in PROBE_CATEGORIES and p["lang"] in {"en", "zh"}, p["id"]
        assert p["prompt"].strip() == p["prompt"] and p["prompt"], p["id"]
        assert bool(CJK.search(p["prompt"])) == (p["lang"] == "zh"), p["id"]
        assert all(isinstance(a, str) and a.strip() for a in p.get("accept", ["x"])), p["id"]
        re.compile(p.get("pattern", ""))
        checked = "accept" in p or "pattern" in p
        assert checked == (p["category"] != "writing"), p["id"]  # writing is judged against the base's answer
    sizes = Counter((p["category"], p["lang"]) for p in probes)
    assert len(probes) >= 250 and sum(n for (_, lang), n in sizes.items() if lang == "zh") >= 60
    minimum = {"facts": (70, 30), "arithmetic": (25, 10), "instructions": (40, 15), "writing": (40, 15)}
    for category, (en, zh) in minimum.items():
        assert sizes[category, "en"] >= en and sizes[category, "zh"] >= zh, category


def test_an_answer_that_repeats_the_question_passes_no_probe() -> None:
    """Small models often echo the prompt: an `accept` string or `pattern` already in it would pass them."""
    for p in rows(PROBES):
        prompt = normalize(p["prompt"]).replace(" ", "") if p["lang"] == "zh" else p["prompt"]
        assert not any(contains(p["prompt"], a) or normalize(a) in prompt for a in p.get("accept", [])), p[
            "id"
        ]
        assert "pattern" not in p or re.search(p["pattern"], p["prompt"], re.S) is None, p["id"]


def test_replay_prompts_are_well_formed_and_sized() -> None:
    replay = rows(REPLAY)
    assert len({r["id"] for r in replay}) == len(replay)
    assert len({normalize(r["prompt"]) for r in replay}) == len(replay)  # no prompt twice
    for r in replay:
        assert set(r) == {"id", "lang", "category", "prompt"}, r["id"]
        assert r["category"] in REPLAY_CATEGORIES and r["lang"] in {"en", "zh"}, r["id"]
        assert bool(CJK.search(r["prompt"])) == (r["lang"] == "zh"), r["id"]
    langs = Counter(r["lang"] for r in replay)
    assert len(replay) >= 350 and langs["zh"] >= 0.25 * len(replay) and langs["en"] >= 0.6 * len(replay)
    assert len({r["category"] for r in replay}) >= 8


def test_no_replay_prompt_is_a_near_copy_of_a_probe() -> None:
    assert contamination(rows(REPLAY), rows(PROBES)) == []


@pytest.mark.parametrize(
    ("copy", "probe_id", "caught_by"),
    [
        ("What is the capital city of France?", "facts-en-001", "character n-grams"),
        ("Which city serves as France's capital?", "facts-en-001", "shares"),
        ("Tell me three things about Paris as a capital.", "facts-en-001", "names the answer"),
        ("Name the author of Romeo and Juliet.", "facts-en-011", "shares"),
        ("What's 7 plus 5?", "arithmetic-en-001", "shares"),
        ("Reply using one word only: what is the colour of grass?", "instructions-en-014", "shares"),
        ("Write a single sentence about the sea.", "writing-en-001", "character n-grams"),
        ("中国的首都是哪里呀？", "facts-zh-001", "character n-grams"),
        ("法国首都是哪座城市？", "facts-zh-002", "shares"),
        ("巴黎是法国的首都吗？", "facts-zh-002", "shares"),
        ("李白写的《静夜思》讲了什么？", "facts-zh-019", "names the answer"),
        ("用一句话形容秋天。", "writing-zh-001", "shares"),
    ],
)
def test_the_check_flags_a_fabricated_near_copy(copy: str, probe_id: str, caught_by: str) -> None:
    probe = next(p for p in rows(PROBES) if p["id"] == probe_id)
    assert (near_copy(copy, probe) or "").startswith(caught_by), copy


def test_the_check_passes_a_different_question_on_a_nearby_topic() -> None:
    probes = {p["id"]: p for p in rows(PROBES)}
    assert (
        near_copy("Which language do most people in the Netherlands speak?", probes["facts-en-041"]) is None
    )
    assert near_copy("堪培拉是哪个国家的首都？", probes["facts-zh-001"]) is None
