"""Metric `judge`: a judge model scores each answer 1-5 against the reference by a rubric.

    prompts  = [judge_prompt(rubric, row, answer)]       one user message per (model, row)
    replies  = answers.answer_prompts(judge_model, …)    greedy, JUDGE_MAX_TOKENS, cached like generations
    verdicts = [parse_reply(reply)]                      a score 1-5 (or None) and the judge's reason
    score    = judge_score(verdicts)                     mean of (s - 1) / 4 over the parsed replies

The judge is an OpenAI-compatible endpoint (`openai:MODEL@BASE_URL`) or a local model (catalog name, folder).
A reply with no score from 1 to 5 is `unparsed`: counted, left out of the mean, its interval and the comparison
with the baseline (its per-example value is NaN, which evaluate/stats skips), and kept in judgements.jsonl.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lmtailor.evaluate import metrics as M
from lmtailor.evaluate.answers import EvalRow, ModelRun, answer_prompts
from lmtailor.evaluate.spec import EvalSpec
from lmtailor.models.endpoint import parse_endpoint

SCALE = (1, 5)
JUDGE_MAX_TOKENS = 256  # a JSON score and one sentence of reason fit in a quarter of this
JUDGE_PARAMS = {"max_new_tokens": JUDGE_MAX_TOKENS, "temperature": 0.0}
DEFAULT_RUBRIC = """\
How correct and complete is the answer, compared with the reference? Judge the meaning, not wording, style or length.
5 = correct and complete: it says what the reference says
4 = correct, with a small omission or a harmless addition
3 = partly correct: part of the reference is missing or wrong
2 = mostly wrong, with a small correct part
1 = wrong, off the question, or no answer"""
# {rubric}, {question}, {reference} and {answer} are filled in one pass, so braces in them stay as they are.
# The format line is not valid JSON, so a judge that only repeats it is not read as a score.
TEMPLATE = """\
You are grading an answer to a question against a reference answer.

Rubric:
{rubric}

Question:
{question}

Reference answer:
{reference}

Answer to grade:
{answer}

Reply with one JSON object and nothing else: {"score": <a whole number from 1 to 5>, "reason": "<one sentence>"}"""
_SLOT = re.compile(r"\{(rubric|question|reference|answer)\}")


def fill(template: str, **values: str) -> str:
    """The template with its {slots} filled in one pass (a slot name inside a value is not filled again)."""
    return _SLOT.sub(lambda m: values.get(m[1], m[0]), template)


def judge_prompt(rubric: str, row: EvalRow, answer: str) -> list[dict[str, str]]:
    """The judge's chat: one user message with the rubric, the row's last user turn, its reference and the
    answer, filled into TEMPLATE in one pass."""
    question = row.prompt[-1]["content"]
    text = fill(TEMPLATE, rubric=rubric, question=question, reference=row.reference, answer=answer)
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- parsing a reply


@dataclass(frozen=True)
class Verdict:
    score: float | None  # on SCALE; None: no score in range found
    reason: str | None = None
    parsed_by: str | None = None  # json | keyword | fraction | bold | lone


_NUM = r"\d+(?:\.\d+)?"
# reasoning models' thoughts; an unclosed block (the reply ran out while thinking) to the end
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.S)
_KEYWORD = re.compile(
    r"(?:\b(?:score|scored|rating|rated|rate|grade|graded)\b|评分|得分|分数|打分)"
    rf"(?:[^\d\n]|\d+\s*(?:-|–|to)\s*\d+){{0,24}}?"  # ": ", " is ", " of ", "** ", " (1-5): ", "为"
    rf"(?<![\d.])({_NUM})(?!\s*(?:-|–|to)\s*\d)"
    r"(?:\s*(?:/|out of|分?\s*[（(]?\s*满分)\s*(\d+))?",
    re.I,
)
_POINTS = re.compile(rf"(?<!满分)(?<![\d.])({_NUM})\s*分(?:\s*[（(]?\s*满分\s*(\d+))?")  # "4分（满分5分）"
_FRACTION = re.compile(rf"(?<![\d.])({_NUM})\s*(?:/|out of)\s*(\d+)(?!\d|\.\d)", re.I)
_BOLD = re.compile(rf"\*\*\s*({_NUM})\s*(?:/\s*(\d+)\s*)?\*\*")
_LONE = re.compile(rf"(?<![A-Za-z0-9.])({_NUM})(?![A-Za-z0-9]|\.\d)")
_SCORE_KEYS = ("score", "rating", "评分", "得分")
_REASON_KEYS = ("reason", "reasoning", "explanation", "justification", "rationale", "理由")


def _in_scale(number: str | float, out_of: str | None = None, scale: tuple[int, int] = SCALE) -> float | None:
    lo, hi = scale
    if out_of is not None and int(out_of) != hi:  # "3/10" is not a score on 1-5
        return None
    value = float(number)
    return value if lo <= value <= hi else None


def _json_verdict(text: str, scale: tuple[int, int]) -> Verdict | None:
    """The first JSON object in the text (anywhere: prose, code fences, nested) that has a score key."""
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if not isinstance(obj, dict):
            continue
        keys = {str(k).strip().lower(): v for k, v in obj.items()}
        found = next((k for k in _SCORE_KEYS if k in keys), None)
        if found is None:
            continue
        raw = keys[found]
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            score = None
        elif isinstance(raw, str):
            m = re.fullmatch(rf"\s*({_NUM})\s*(?:/\s*(\d+))?\s*", raw)
            score = _in_scale(m[1], m[2], scale) if m else None
        else:
            score = _in_scale(raw, None, scale) if math.isfinite(raw) else None
        reason = next((keys[k] for k in _REASON_KEYS if isinstance(keys.get(k), str)), None)
        return Verdict(score, reason, "json")
    return None


def parse_reply(reply: str, scale: tuple[int, int] = SCALE) -> Verdict:
    """The score in a judge's reply, tried in this order; the first kind found decides (out of range: None):

    1. a JSON object with "score" (and "reason"), anywhere in the text: {"score": 4, "reason": "…"}
    2. a keyword and a number: "Score: 4", "**Rating:** 4/5", "a rating of 4", "评分：5", "得分为4分", "4分"
    3. a fraction with the scale's top: "4/5", "4 out of 5"
    4. a bold number: "**4**"
    5. the only number in the reply: "4", "I'd give it a 4."

    <think>…</think> blocks are dropped first. Denominators other than the top of the scale ("8/10") give None.
    """
    text = _THINK.sub("", reply)
    verdict = _json_verdict(text, scale)
    if verdict:
        return verdict
    if m := _KEYWORD.search(text) or _POINTS.search(text):
        return Verdict(_in_scale(m[1], m[2], scale), None, "keyword")
    for m in _FRACTION.finditer(text):
        if int(m[2]) == scale[1]:
            return Verdict(_in_scale(m[1], None, scale), None, "fraction")
    if m := _BOLD.search(text):
        return Verdict(_in_scale(m[1], m[2], scale), None, "bold")
    numbers = _LONE.findall(text)
    if len(numbers) == 1:
        return Verdict(_in_scale(numbers[0], None, scale), None, "lone")
    return Verdict(None)


# ---------------------------------------------------------------- the metric


def judge_score(scores: Sequence[float | None], scale: tuple[int, int] = SCALE) -> M.Score:
    """Metric judge over one model's rows: per row (s - lo) / (hi - lo) in [0, 1], NaN where unparsed; the value
    is the mean over parsed rows (NaN when none parsed), recomputed so on each bootstrap resample."""
    lo, hi = scale
    raw = np.array([np.nan if s is None else s for s in scores], dtype=float)
    norm = (raw - lo) / (hi - lo)
    parsed = ~np.isnan(norm)

    def mean_parsed(idx: np.ndarray) -> float:
        values = norm[idx]
        values = values[~np.isnan(values)]
        return float(values.mean()) if len(values) else float("nan")

    details = {
        "raw_mean": float(raw[parsed].mean()) if parsed.any() else None,
        "parsed": int(parsed.sum()),
        "unparsed": int((~parsed).sum()),
        "unparsed_rows": [int(i) for i in np.flatnonzero(~parsed)],
    }
    return M.Score(M.JUDGE, mean_parsed(np.arange(len(norm))), norm, resample=mean_parsed, details=details)


@dataclass
class Judged:
    """What the judge said about every model's answers in one run."""

    ref: str
    fingerprint: str
    template: str  # TEMPLATE with the rubric filled in, the row's slots left: judge_prompt.txt
    custom_rubric: bool
    scores: dict[str, M.Score]  # per evaluated model
    judgements: list[dict[str, Any]]  # judgements.jsonl
    asked: int
    cached: int
    seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.ref,
            "kind": "openai" if parse_endpoint(self.ref) else "local",
            "fingerprint": self.fingerprint,
            "rubric": "custom" if self.custom_rubric else "default",
            "scale": list(SCALE),
            "max_tokens": JUDGE_MAX_TOKENS,
            "temperature": 0.0,
            "asked": self.asked,
            "cached": self.cached,
            "seconds": round(self.seconds, 2),
            "prompt_file": "judge_prompt.txt",
            "judgements_file": "judgements.jsonl",
            "unparsed_excluded": "replies without a score from 1 to 5 are left out of the mean, its interval and "
            "the comparison with the baseline; each model's count is under models[].judge.unparsed",
        }


def judge_runs(
    runs: list[ModelRun], rows: list[EvalRow], spec: EvalSpec, home, log: Callable[[str], None]
) -> Judged:
    """Ask spec.judge_model about every model's answer to every row (identical prompts once; cached replies
    reused) and score each model."""
    assert spec.judge_model, "EvalSpec checks that metric judge has a judge model"
    rubric = spec.judge_rubric or DEFAULT_RUBRIC
    answers = {run.ref: run.answers for run in runs}
    asked = [(run.ref, i) for run in runs for i in range(len(rows))]
    prompts = [judge_prompt(rubric, rows[i], answers[ref][i]) for ref, i in asked]
    got = answer_prompts(spec.judge_model, prompts, JUDGE_PARAMS, spec, home, log, what="judgements")
    got.model = got.tokenizer = None  # a local judge is not needed any more
    verdicts = [parse_reply(reply) for reply in got.texts]
    judgements = [
        {"model": ref, "row": i, "prompt": p[0]["content"], "reply": reply, "score": v.score,
         "reason": v.reason, "parsed_by": v.parsed_by}
        for (ref, i), p, reply, v in zip(asked, prompts, got.texts, verdicts, strict=True)
    ]  # fmt: skip
    scores = {
        run.ref: judge_score([v.score for (ref, _), v in zip(asked, verdicts, strict=True) if ref == run.ref])
        for run in runs
    }
    unparsed = sum(s.details["unparsed"] for s in scores.values())
    if unparsed:
        log(
            f"judge {spec.judge_model}: {unparsed} of {len(prompts)} replies had no score (see judgements.jsonl)"
        )
    template = fill(TEMPLATE, rubric=rubric)
    return Judged(spec.judge_model, got.fingerprint, template, spec.judge_rubric is not None, scores,
                  judgements, got.generated, got.cached, got.seconds)  # fmt: skip
