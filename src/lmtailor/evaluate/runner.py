"""`run_eval(spec, home)`: answer a test set with each model, score, compare with the baseline, write reports.

    rows      = load_rows(spec.data)                      prompt + reference per row
    answers   = answers.answer_prompts(model, prompts)    batched generation, cached on disk per prompt
    scores    = metrics.score(names, answers, refs)       per-example values kept
    judged    = judge.judge_runs(runs, rows, spec)        metric judge: a judge model scores each answer 1-5
    intervals = stats.bootstrap_ci / stats.compare        95% CIs, paired test against the first model
    outputs   = metrics.json, predictions.jsonl, report.md, report.html (+ judge_prompt.txt, judgements.jsonl)

A model reference is a catalog name, a folder, a tuned model in the home, or an OpenAI-compatible endpoint
written `openai:MODEL@BASE_URL` (e.g. `openai:my-model@http://127.0.0.1:8000/v1`); the key is read from the
environment variable named by `spec.api_key_env` (OPENAI_API_KEY by default; "EMPTY" when unset).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmtailor.errors import LmtailorError
from lmtailor.evaluate import metrics as M
from lmtailor.evaluate import stats
from lmtailor.evaluate.answers import (
    EvalRow,
    ModelRun,
    answer_prompts,
    file_sha,
    generation_params,
    load_rows,
)
from lmtailor.evaluate.spec import EvalSpec
from lmtailor.home import atomic_write_json, atomic_write_text, home_dir
from lmtailor.models.endpoint import parse_endpoint

if TYPE_CHECKING:
    from lmtailor.evaluate.judge import Judged

SCHEMA = "lmtailor.eval/1"
FIX_MARGIN = 0.25  # a continuous per-example score must move this much to count as fixed or broken


def run_model(
    ref: str, rows: list[EvalRow], names: list[str], spec: EvalSpec, home, labels, log: Callable[[str], None]
) -> ModelRun:
    """Answers for every row (cached ones reused, only the rest generated), then the scores (all but judge)."""
    endpoint = parse_endpoint(ref)
    prompts = [r.prompt for r in rows]
    got = answer_prompts(
        ref, prompts, generation_params(spec), spec, home, log, load=not endpoint and "perplexity" in names
    )
    if endpoint and "perplexity" in names:
        log(f"{ref}: perplexity needs a local model; skipped for this endpoint")
    scored = [n for n in names if n != M.JUDGE and not (endpoint and n == "perplexity")]
    scores = M.score(
        scored, got.texts, [r.reference for r in rows], labels, got.model, got.tokenizer, prompts
    )
    kind = "openai" if endpoint else "local"
    return ModelRun(
        ref, kind, got.fingerprint, got.texts, got.generated, got.cached, round(got.seconds, 2), scores
    )


# ---------------------------------------------------------------- the run


def run_eval(
    spec: EvalSpec, home: str | Path | None = None, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Evaluate every model of the spec on its test set; write the outputs; return metrics.json's content."""
    rows = load_rows(spec.data, spec.format, spec.on_error)
    refs = [r.reference for r in rows]
    names = spec.metrics or (list(M.CLASSIFICATION) if spec.labels else M.pick_metrics(refs))
    labels = M.label_set(refs, spec.labels) if any(n in M.CLASSIFICATION for n in names) else None
    out = Path(spec.output) if spec.output else _new_folder(home_dir(home) / "evals")
    log(
        f"{len(rows)} rows, metrics: {', '.join(names)}"
        + (" (picked from the references)" if not spec.metrics else "")
    )
    if (spec.judge_model or spec.judge_rubric) and M.JUDGE not in names:
        log("judge_model / judge_rubric are set but metric judge is not asked for: no judge runs")
    runs = [run_model(ref, rows, names, spec, home, labels, log) for ref in spec.models]
    judged = None
    if M.JUDGE in names:
        from lmtailor.evaluate.judge import judge_runs

        judged = judge_runs(runs, rows, spec, home, log)
        for run in runs:
            scores = {**run.scores, M.JUDGE: judged.scores[run.ref]}
            run.scores = {n: scores[n] for n in names if n in scores}
    result = _summary(spec, rows, names, labels, runs, judged)
    if spec.retention:
        for entry in result["models"]:
            entry["retention"] = model_retention(entry["name"], spec, home, log)
    result["output"] = str(out)
    write_outputs(out, result, rows, runs, judged)
    return result


def base_of(ref: str, home) -> str | None:
    """The base model a tuned (or merged) model's card names; None for an endpoint, a catalog model, a folder
    without a card, or a merge of models of different bases."""
    if parse_endpoint(ref):
        return None
    from lmtailor.models.catalog import resolve

    card = resolve(ref, home).card
    return card.get("base_model") if card else None


def model_retention(ref: str, spec: EvalSpec, home, log: Callable[[str], None]) -> dict[str, Any] | None:
    """Retention of a tuned model against the base its card names (evaluate/retention.py), or None when it has
    no base or its base cannot be asked (said in the log)."""
    from lmtailor.evaluate.retention import measure, summary_line

    try:
        base = base_of(ref, home)
        if base is None:
            return None
        report = measure(base, ref, home, log, batch_size=max(spec.batch_size, 64),
                         trust_remote_code=spec.trust_remote_code, judge_model=spec.judge_model,
                         api_key_env=spec.api_key_env, cache=spec.cache)  # fmt: skip
    except LmtailorError as e:
        log(f"{ref}: {e}")
        return None
    log(f"{ref}: {summary_line(report)}")
    return report


def _new_folder(parent: Path) -> Path:
    """<parent>/<date-time>, with -2, -3… when two runs start in the same second."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = parent / stamp, 1
    while out.exists():
        n += 1
        out = parent / f"{stamp}-{n}"
    return out


def _finite(value: float) -> float | None:
    """NaN (a judge mean with no parsed reply) as JSON null."""
    return value if math.isfinite(value) else None


def _summary(
    spec: EvalSpec, rows, names, labels, runs: list[ModelRun], judged: Judged | None = None
) -> dict[str, Any]:
    base = runs[0]
    models = []
    for run in runs:
        entry: dict[str, Any] = {
            "name": run.ref, "kind": run.kind, "fingerprint": run.fingerprint, "generated": run.generated,
            "cached": run.cached, "seconds": run.seconds, "scores": {}, "vs_baseline": {},
        }  # fmt: skip
        for name, s in run.scores.items():
            low, high = stats.bootstrap_ci(s, spec.bootstrap, spec.seed)
            entry["scores"][name] = {
                "value": _finite(s.value),
                "ci_low": _finite(low),
                "ci_high": _finite(high),
                "higher_is_better": s.higher_is_better,
            }
        cls = next((s.details for s in run.scores.values() if "confusion" in s.details), None)
        if cls:
            entry["classification"] = {k: v for k, v in cls.items() if k != "mapped"}
        if M.JUDGE in run.scores:
            entry["judge"] = run.scores[M.JUDGE].details
        if by_source := scores_by_source(rows, run):
            entry["by_source"] = by_source
        if run is not base:
            for name, s in run.scores.items():
                # a metric with no value (every judge reply unparsed) on either side is not compared
                if name in base.scores and math.isfinite(base.scores[name].value) and math.isfinite(s.value):
                    entry["vs_baseline"][name] = stats.compare(
                        base.scores[name], s, spec.bootstrap, spec.seed
                    )
            entry["examples"] = fixed_broken(base, run)
        models.append(entry)
    result = {
        "schema": SCHEMA,
        "created_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "data": {"path": str(spec.data), "rows": len(rows), "sha256": file_sha(Path(spec.data))},
        "metrics": names,
        "metrics_picked": spec.metrics is None,
        "labels": labels,
        "generation": generation_params(spec),
        "bootstrap": {"resamples": spec.bootstrap, "confidence": stats.CONFIDENCE, "seed": spec.seed},
        "baseline": base.ref,
        "models": models,
    }
    if judged is not None:
        result["judge"] = judged.summary()
    return result


def scores_by_source(rows: list[EvalRow], run: ModelRun) -> dict[str, Any] | None:
    """{source: {metric: {value, count}}} when the rows carry a `source` key with more than one value (rows
    without one are the source "-"); None otherwise. Each value is the metric over that source's rows only."""
    import numpy as np

    names = [r.source or "-" for r in rows]
    if len(set(names)) < 2 or all(r.source is None for r in rows):
        return None
    out: dict[str, Any] = {}
    for source in dict.fromkeys(names):
        idx = np.array([i for i, n in enumerate(names) if n == source])
        out[source] = {
            m: {"value": _finite(float(s.on(idx))), "count": len(idx)} for m, s in run.scores.items()
        }
    return out


def fixed_broken(base: ModelRun, run: ModelRun) -> dict[str, Any]:
    """Rows the model got right and the baseline wrong (fixed), and the reverse (broken), by the first 0/1
    metric scored, else by the first metric moving by FIX_MARGIN (or 1/4 of its range) per row."""
    names = [n for n in run.scores if n in base.scores]
    binary = [n for n in names if n in M.BINARY]
    if not names:
        return {"metric": None, "fixed": [], "broken": []}
    name = binary[0] if binary else names[0]
    a, b = base.scores[name].per_example, run.scores[name].per_example
    margin = 0.5 if binary else FIX_MARGIN * (100 if name in ("bleu", "chrf") else 1)
    sign = 1 if run.scores[name].higher_is_better else -1
    delta = (b - a) * sign
    return {
        "metric": name,
        "fixed": [int(i) for i in (delta >= margin).nonzero()[0]],
        "broken": [int(i) for i in (delta <= -margin).nonzero()[0]],
    }


def write_outputs(
    out: Path,
    result: dict[str, Any],
    rows: list[EvalRow],
    runs: list[ModelRun],
    judged: Judged | None = None,
) -> None:
    """metrics.json, predictions.jsonl (every row, every model), report.md and report.html, each atomically;
    with metric judge also judge_prompt.txt and judgements.jsonl."""
    from lmtailor.evaluate import report

    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(rows):
        item: dict[str, Any] = {"row": i, "line": row.line, "prompt": row.prompt, "reference": row.reference}
        item["predictions"] = {
            r.ref: {
                "answer": r.answers[i],
                "scores": {n: _finite(float(s.per_example[i])) for n, s in r.scores.items()},
            }
            for r in runs
        }
        lines.append(json.dumps(item, ensure_ascii=False))
    atomic_write_text(out / "predictions.jsonl", "\n".join(lines) + "\n")
    if judged is not None:
        atomic_write_text(out / "judge_prompt.txt", judged.template)
        judgements = [json.dumps(j, ensure_ascii=False) for j in judged.judgements]
        atomic_write_text(out / "judgements.jsonl", "\n".join(judgements) + "\n")
    atomic_write_json(out / "metrics.json", result)
    answers = {r.ref: r.answers for r in runs}
    atomic_write_text(out / "report.md", report.markdown(result, rows, answers))
    atomic_write_text(out / "report.html", report.html(result, rows, answers))


# ---------------------------------------------------------------- for the trainer


def evaluate_rows(
    model,
    tokenizer,
    rows: Sequence[EvalRow],
    metrics: Sequence[str],
    labels: Sequence[str] | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 16,
) -> dict[str, float]:
    """Greedy answers of an already loaded model on `rows`, scored: {metric: value}. No cache, no files: for a
    training callback that evaluates the validation set every N steps."""
    from lmtailor.evaluate.generate import generate

    if not rows:
        raise LmtailorError("no rows to evaluate")
    was_training = model.training
    model.eval()
    try:
        answers = generate(
            model, tokenizer, [r.prompt for r in rows], max_new_tokens=max_new_tokens, batch_size=batch_size
        )
        refs = [r.reference for r in rows]
        names = list(metrics) or M.pick_metrics(refs)
        scores = M.score(names, answers, refs, labels, model, tokenizer, [r.prompt for r in rows])
    finally:
        model.train(was_training)
    return {n: s.value for n, s in scores.items()}
