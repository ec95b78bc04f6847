"""Retention: what tuning cost. Of the bundled general probes the base model answers acceptably, the share the
tuned model still answers acceptably.

    probes  = load_probes()                          evaluate/probes/probes.jsonl: facts, arithmetic,
                                                     instructions, short writing; English and Chinese
    base    = answer_prompts(base, probes)           greedy, cached per base model (eval's answer cache)
    tuned   = answer_prompts(tuned, probes)
    report  = retention(probes, base, tuned)         value, 95% bootstrap interval, per category and language,
                                                     the worst regressions (question, base answer, tuned answer)

A probe with `accept` strings is answered acceptably when the answer contains one of them (normalised, as the
`contains` metric); one with a `pattern` when the regex is found in it. A probe with neither (short writing) has
no single right answer: the base's own answer is the reference, and the tuned answer keeps it when it agrees
with it by sentence chrF of at least AGREE (a judge model, where one is given, decides instead).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from lmtailor.errors import LmtailorError
from lmtailor.evaluate.match import contains

# Sentence chrF (0-100) from which a tuned model's answer to an open probe still counts as the base's answer.
# Greedy answers drift in wording after any tuning; on the quickstart's models, English writing probes: at 25 one
# of 11 answers that drifted to the tuning data (they name the company) was kept, at 20 four; on-task answers
# in new words score 25-40 (docs/evaluation.md, "Retention").
AGREE = 25.0
# Answers up to 32 new tokens: cut there, the base's answers got the verdicts they get at 64 tokens on 202 of the
# 210 probes with a reference; writing probes are compared on their first 32 tokens.
MAX_NEW_TOKENS = 32
WORST = 10  # regressions kept in a report
PROBES_FILE = "probes.jsonl"
JUDGE_RUBRIC = """\
Does the answer do what the question asks as well as the reference answer does? The reference is one good answer,
not the only one: judge whether the answer is on the task, sensible and of similar quality, not its wording.
5 = as good as the reference
4 = on the task and sensible, a little weaker
3 = partly on the task
2 = mostly off the task
1 = off the task, nonsense, or no answer"""


@dataclass(frozen=True)
class Probe:
    id: str
    category: str
    lang: str
    prompt: str
    accept: tuple[str, ...] = ()
    pattern: str | None = None

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]

    @property
    def open(self) -> bool:
        """No reference: the base's own answer is the reference."""
        return not self.accept and self.pattern is None

    def acceptable(self, answer: str) -> bool:
        """The answer is right by the probe's own reference; an open probe's, when it is in the probe's language
        (a base that answers a Chinese request in English, or garbled, sets no standard to keep)."""
        if self.pattern is not None:
            return re.search(self.pattern, answer, re.S) is not None
        if self.accept:
            return any(contains(answer, a) for a in self.accept)
        letters = [c for c in answer if c.isalpha()]
        if not letters:
            return False
        chinese = sum("\u3400" <= c <= "\u9fff" for c in letters) / len(letters)
        return chinese >= 0.5 if self.lang == "zh" else chinese < 0.5


def load_probes(path: str | Path | None = None) -> list[Probe]:
    """The bundled probe set (or a file of the same shape: one JSON object a line)."""
    text = (
        Path(path).read_text(encoding="utf-8")
        if path
        else (resources.files("lmtailor.evaluate.probes") / PROBES_FILE).read_text(encoding="utf-8")
    )
    probes = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        item = json.loads(line)
        try:
            probes.append(Probe(item["id"], item["category"], item["lang"], item["prompt"],
                                tuple(item.get("accept") or ()), item.get("pattern")))  # fmt: skip
        except KeyError as e:
            raise LmtailorError(f"{path or PROBES_FILE}:{n}: a probe needs {e.args[0]!r}") from None
    return probes


def probes_version(probes: list[Probe]) -> str:
    """A short hash of the probe set: retention figures are comparable only over the same probes."""
    text = json.dumps([p.__dict__ for p in probes], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def agreement(answer: str, reference: str) -> float:
    """Sentence chrF (0-100) of an answer against the base's answer to the same open probe."""
    from sacrebleu.metrics import CHRF

    if not answer.strip() or not reference.strip():
        return 0.0
    return float(CHRF().sentence_score(answer, [reference]).score)


def retention(
    probes: list[Probe],
    base: list[str],
    tuned: list[str],
    kept_open: list[bool | None] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The retention report of `tuned` against `base` (answers in the probes' order). `kept_open`: a judge's
    verdict per probe on the open probes (None: chrF agreement with the base's answer decides; so does a None
    verdict, a judge reply without a score, which is counted in `judge_fallbacks`)."""
    from lmtailor.evaluate.metrics import Score
    from lmtailor.evaluate.stats import bootstrap_ci

    eligible, kept, agree, fallbacks = [], [], [], 0
    for i, probe in enumerate(probes):
        if not probe.acceptable(base[i]):
            continue
        eligible.append(i)
        score = agreement(tuned[i], base[i])
        agree.append(score)
        if probe.open:
            verdict = kept_open[i] if kept_open is not None else None
            fallbacks += kept_open is not None and verdict is None
            kept.append(verdict if verdict is not None else score >= AGREE)
        else:
            kept.append(probe.acceptable(tuned[i]))
    values = np.asarray(kept, dtype=float)
    value = low = high = None  # the base answered no probe acceptably: nothing to measure (JSON null)
    if len(values):
        value = float(values.mean())
        low, high = bootstrap_ci(Score("retention", value, values), resamples, seed)
    report: dict[str, Any] = {
        "value": value,
        "ci_low": low,
        "ci_high": high,
        "kept": int(values.sum()),
        "eligible": len(eligible),
        "probes": len(probes),
        "probes_version": probes_version(probes),
        "open_probes_by": "agreement" if kept_open is None else "judge",
        "judge_fallbacks": fallbacks,  # open probes the judge gave no score: chrF agreement decided them
        "agree_threshold": AGREE,
        "by_category": _groups(probes, eligible, kept, lambda p: p.category),
        "by_lang": _groups(probes, eligible, kept, lambda p: p.lang),
        "reference_accuracy": _reference_accuracy(probes, base),
    }
    lost = [(agree[j], i) for j, i in enumerate(eligible) if not kept[j]]
    report["regressions"] = [
        {"id": probes[i].id, "category": probes[i].category, "question": probes[i].prompt,
         "base": base[i], "tuned": tuned[i], "agreement": round(score, 1)}
        for score, i in sorted(lost)[:WORST]
    ]  # fmt: skip
    return report


def _groups(probes, eligible: list[int], kept: list[bool], key: Callable[[Probe], str]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for i, ok in zip(eligible, kept, strict=True):
        group = out.setdefault(key(probes[i]), {"kept": 0, "eligible": 0})
        group["eligible"] += 1
        group["kept"] += int(ok)
    for group in out.values():
        group["value"] = group["kept"] / group["eligible"]
    return dict(sorted(out.items()))


def _reference_accuracy(probes, base: list[str]) -> dict[str, Any]:
    """The base's share of right answers over the probes that have a reference: retention's denominator is what
    the base knew. (The tuned model is asked only those the base answered: what it might answer right that the
    base did not is not measured, which keeps a measurement under a minute on 2 cores.)"""
    scored = [i for i, p in enumerate(probes) if not p.open]
    return {
        "probes": len(scored),
        "base": sum(probes[i].acceptable(base[i]) for i in scored) / max(1, len(scored)),
    }


# ---------------------------------------------------------------- measuring


def has_chat_template(ref: str, home, trust_remote_code: bool = False) -> bool:
    """The model ships a chat template of its own (load_tokenizer fills in ChatML for one that has none: a base
    never trained on it answers chat prompts in it poorly, so its answers say little about what it knows)."""
    from lmtailor.models.loading import load_tokenizer

    return own_template(load_tokenizer(ref, home, trust_remote_code=trust_remote_code))


def own_template(tok) -> bool:
    """The tokenizer came with its chat template (not load_tokenizer's ChatML stand-in)."""
    return bool(tok.chat_template) and not getattr(tok, "lmtailor_template_fallback", False)


def measure(
    base: str,
    tuned: str,
    home=None,
    log: Callable[[str], None] = print,
    batch_size: int = 64,
    trust_remote_code: bool = False,
    judge_model: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    cache: bool = True,
) -> dict[str, Any]:
    """Retention of model `tuned` against model `base` over the bundled probes. Both answer greedily through
    eval's answer cache (the base's answers are generated once per base model and reused). A base without a
    chat template cannot be asked chat probes: LmtailorError, which callers report as a line and go on."""
    from lmtailor.evaluate.answers import answer_prompts
    from lmtailor.evaluate.spec import EvalSpec

    if not has_chat_template(base, home, trust_remote_code):
        raise LmtailorError(
            f"{base} has no chat template of its own, and the general probes are chat prompts: retention is "
            "measured for chat models only"
        )
    probes = load_probes()
    spec = EvalSpec(models=[tuned], data=PROBES_FILE, batch_size=batch_size, max_new_tokens=MAX_NEW_TOKENS,
                    trust_remote_code=trust_remote_code, api_key_env=api_key_env, cache=cache)  # fmt: skip
    params = {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0.0}
    got_base = answer_prompts(
        base, [p.messages for p in probes], params, spec, home, log, what="general probes"
    )
    got_base.model = got_base.tokenizer = None  # not held while the tuned model answers
    # the tuned model answers only what the base answered acceptably: retention looks at nothing else, and
    # it is about 40% of the probes for the 135M model
    asked = [i for i, p in enumerate(probes) if p.acceptable(got_base.texts[i])]
    got_tuned = answer_prompts(
        tuned, [probes[i].messages for i in asked], params, spec, home, log, what="general probes"
    )
    tuned_texts = [""] * len(probes)
    for i, text in zip(asked, got_tuned.texts, strict=True):
        tuned_texts[i] = text
    verdicts = None
    if judge_model:
        verdicts = judge_open(probes, got_base.texts, tuned_texts, judge_model, home, log, spec)
    report = retention(probes, got_base.texts, tuned_texts, verdicts)
    report.update(base=base, seconds=round(got_base.seconds + got_tuned.seconds, 1))
    return report


def judge_open(
    probes, base: list[str], tuned: list[str], judge_model: str, home, log, spec
) -> list[bool | None]:
    """A judge model's verdict on the open probes: does the tuned answer do the task as well as the base's (a
    score of 4 or 5 of 5, the base's answer as the reference)? Probes with a reference are not asked: True.
    A reply without a score is None: retention() decides that probe by agreement instead of counting it lost."""
    from lmtailor.evaluate.answers import EvalRow, answer_prompts
    from lmtailor.evaluate.judge import JUDGE_PARAMS, judge_prompt, parse_reply

    idx = [i for i, p in enumerate(probes) if p.open and p.acceptable(base[i])]
    prompts = [judge_prompt(JUDGE_RUBRIC, EvalRow(probes[i].messages, base[i]), tuned[i]) for i in idx]
    got = answer_prompts(
        judge_model, prompts, JUDGE_PARAMS, spec, home, log, what="judgements of open probes"
    )
    verdicts: list[bool | None] = [True] * len(probes)
    for i, reply in zip(idx, got.texts, strict=True):
        score = parse_reply(reply).score
        verdicts[i] = None if score is None else score >= 4
    unscored = sum(verdicts[i] is None for i in idx)
    if unscored:
        log(
            f"{judge_model}: no score in {unscored} of {len(idx)} judgements of open probes; agreement decides them"
        )
    return verdicts


def summary_line(report: dict[str, Any]) -> str:
    """One line for a log or a table: retention 87% (95% CI 82-91%; 120 of 138 probes the base answered)."""
    if not report.get("eligible"):
        return "retention: the base answered no probe acceptably; nothing to measure"
    cats = ", ".join(f"{k} {v['value']:.0%}" for k, v in report["by_category"].items())
    return (
        f"retention {report['value']:.0%} (95% CI {report['ci_low']:.0%}-{report['ci_high']:.0%}; "
        f"{report['kept']} of the {report['eligible']} general probes the base answered; {cats})"
    )


def card_entry(report: dict[str, Any]) -> dict[str, Any]:
    """What a model card keeps of a report (retention.json beside it keeps the whole)."""
    keys = (
        "value",
        "ci_low",
        "ci_high",
        "kept",
        "eligible",
        "probes_version",
        "base",
        "by_category",
        "by_lang",
    )
    return {k: report.get(k) for k in keys}
