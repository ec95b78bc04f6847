"""Metrics over (prediction, reference) pairs, each kept per example so bootstrap intervals can be drawn.

Every metric returns a Score: the corpus value, one number per row, and `resample(indices)` that recomputes the
corpus value over a resample of the rows (a mean for most; pooled statistics for BLEU, chrF, F1, perplexity).

    score(["accuracy", "f1"], predictions, references)  -> {"accuracy": Score, "f1": Score}
    pick_metrics(references)                            -> classification or free-text metrics
    map_label("The answer is Positive.", labels)        -> "positive"

Heavy libraries (scikit-learn, sacrebleu, rouge-score, torch) are imported inside the functions that use them.
Chinese (any CJK text) is scored by characters: BLEU with sacrebleu's "zh" tokenizer, ROUGE-L on one token per
character, chrF is character-based already.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lmtailor.errors import LmtailorError
from lmtailor.evaluate import match
from lmtailor.evaluate.match import normalize
from lmtailor.specs import CLASSIFICATION as CLASSIFICATION  # the names are the specs' (the layer below)
from lmtailor.specs import EVAL_METRIC_NAMES as EVAL_METRIC_NAMES
from lmtailor.specs import JUDGE as JUDGE
from lmtailor.specs import METRIC_NAMES as METRIC_NAMES
from lmtailor.specs import check_names as check_names

UNMATCHED = "<unmatched>"
FREE_TEXT = ("contains", "rouge_l", "chrf")
# Metrics whose per-example values are 0/1 (McNemar applies to them).
BINARY = ("exact_match", "contains", "accuracy")
LOWER_IS_BETTER = ("perplexity",)
# A reference set reads as labels when it has at most this many distinct short values, each repeated.
MAX_LABELS = 20
MAX_LABEL_WORDS = 4


@dataclass
class Score:
    """A metric's corpus value, its per-example values, and how to recompute it on a resample of rows."""

    name: str
    value: float
    per_example: np.ndarray
    resample: Callable[[np.ndarray], float] | None = None  # None: the mean of per_example
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def higher_is_better(self) -> bool:
        return self.name not in LOWER_IS_BETTER

    def on(self, idx: np.ndarray) -> float:
        """The corpus value over the rows `idx` (with repeats: a bootstrap resample)."""
        if self.resample is None:
            return float(self.per_example[idx].mean())
        return self.resample(idx)


def _mean_score(name: str, values: Sequence[float]) -> Score:
    arr = np.asarray(values, dtype=float)
    return Score(name, float(arr.mean()) if len(arr) else 0.0, arr)


# ---------------------------------------------------------------- matching


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> Score:
    """1 where the normalised prediction equals the normalised reference (case, width, punctuation folded)."""
    return _mean_score(
        "exact_match", [normalize(p) == normalize(r) for p, r in zip(predictions, references, strict=True)]
    )


def contains(predictions: Sequence[str], references: Sequence[str]) -> Score:
    """1 where the reference appears in the prediction on word boundaries (Chinese: as characters)."""
    return _mean_score(
        "contains", [match.contains(p, r) for p, r in zip(predictions, references, strict=True)]
    )


# ---------------------------------------------------------------- classification


def map_label(prediction: str, labels: Sequence[str]) -> str:
    """The one label a prediction names (labels normalised), else UNMATCHED (no label, or several).

    "The answer is Positive." -> "positive"; a label inside a longer one ("positive" in "very positive") only
    counts when the longer one is not named too.
    """
    pred = normalize(prediction)
    if pred in labels:
        return pred
    named = [label for label in labels if label and match.contains(pred, label)]
    named = [a for a in named if not any(a != b and match.contains(b, a) for b in named)]
    return named[0] if len(named) == 1 else UNMATCHED


def label_set(references: Sequence[str], labels: Sequence[str] | None = None) -> list[str]:
    """The labels, normalised: the given ones in their order, else the distinct references sorted."""
    if labels:
        out = list(dict.fromkeys(normalize(label) for label in labels))
        missing = sorted({normalize(r) for r in references} - set(out))
        if missing:
            raise LmtailorError(f"references that are not among the labels {out}: {missing[:5]}")
        return out
    return sorted({normalize(r) for r in references})


def classification(
    predictions: Sequence[str], references: Sequence[str], labels: Sequence[str] | None = None
) -> dict[str, Score]:
    """accuracy, macro precision / recall / f1 with per-label values and a confusion matrix (scikit-learn).

    Predictions are mapped to the label they name; UNMATCHED ones are wrong for every label (a false negative
    of the true label) and form their own column of the confusion matrix, not a class of the macro average.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = label_set(references, labels)
    y_true = [normalize(r) for r in references]
    y_pred = [map_label(p, labels) for p in predictions]
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    matrix = confusion_matrix(y_true, y_pred, labels=[*labels, UNMATCHED])[: len(labels)]
    details = {
        "labels": labels,
        "per_label": {
            label: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(labels)
        },
        "confusion": {"rows": labels, "columns": [*labels, UNMATCHED], "matrix": matrix.tolist()},
        "unmatched": sum(1 for y in y_pred if y == UNMATCHED),
        "mapped": y_pred,
    }
    codes = {label: i for i, label in enumerate([*labels, UNMATCHED])}
    t = np.array([codes[y] for y in y_true], dtype=int)
    q = np.array([codes[y] for y in y_pred], dtype=int)
    correct = (t == q).astype(float)
    out = {"accuracy": Score("accuracy", float(correct.mean()), correct, details=details)}
    for k, (name, values) in enumerate((("precision", p), ("recall", r), ("f1", f))):
        out[name] = Score(
            name,
            float(np.mean(values)),
            correct,  # per row: right or wrong; the macro value itself needs the pooled counts below
            resample=lambda idx, k=k: float(macro_prf(t[idx], q[idx], len(labels))[k]),
            details=details,
        )
    return out


def macro_prf(y_true: np.ndarray, y_pred: np.ndarray, n_labels: int) -> tuple[float, float, float]:
    """Macro precision, recall, F1 over label codes 0..n_labels-1 (code n_labels = unmatched), as scikit-learn
    computes them with zero_division=0; numpy only, fast enough for a thousand bootstrap resamples."""
    m = np.bincount(y_true * (n_labels + 1) + y_pred, minlength=(n_labels + 1) ** 2).reshape(n_labels + 1, -1)
    tp = np.diag(m)[:n_labels].astype(float)
    pred_n = m[:, :n_labels].sum(0).astype(float)
    true_n = m[:n_labels].sum(1).astype(float)
    p = np.divide(tp, pred_n, out=np.zeros_like(tp), where=pred_n > 0)
    r = np.divide(tp, true_n, out=np.zeros_like(tp), where=true_n > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
    return float(p.mean()), float(r.mean()), float(f.mean())


# ---------------------------------------------------------------- overlap


def is_cjk(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" or "\uf900" <= ch <= "\ufaff" for ch in text)


class _CharTokenizer:
    """rouge-score's tokenizer keeps only [a-z0-9], so Chinese text scores 0 against anything. This one
    normalises like `match.normalize` and makes each CJK character a token; other text splits on spaces."""

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        for word in normalize(text).split():
            if is_cjk(word):
                run = ""
                for ch in word:
                    if is_cjk(ch):
                        tokens += [run] if run else []
                        tokens.append(ch)
                        run = ""
                    else:
                        run += ch
                tokens += [run] if run else []
            else:
                tokens.append(word)
        return tokens


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> Score:
    """ROUGE-L F-measure per row (rouge-score's LCS, our tokenizer: Chinese by characters); corpus = mean."""
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], tokenizer=_CharTokenizer())
    values = [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references, strict=True)]
    return _mean_score("rouge_l", values)


def _sacrebleu_score(name: str, metric, predictions: Sequence[str], references: Sequence[str]) -> Score:
    """Corpus BLEU / chrF (0-100) from per-row sufficient statistics, which a resample adds up again."""
    preds, refs = list(predictions), list(references)
    stats = np.array(metric._extract_corpus_statistics(preds, [refs]), dtype=float)

    def resample(idx: np.ndarray) -> float:
        return float(metric._compute_score_from_stats(list(stats[idx].sum(0))).score)

    per_row = [metric.sentence_score(p, [r]).score for p, r in zip(preds, refs, strict=True)]
    value = float(metric.corpus_score(preds, [refs]).score)
    return Score(name, value, np.asarray(per_row, dtype=float), resample=resample)


def bleu(predictions: Sequence[str], references: Sequence[str]) -> Score:
    """sacrebleu corpus BLEU (0-100); tokenize="zh" (characters) when any reference is Chinese, else 13a."""
    from sacrebleu.metrics import BLEU

    tokenize = "zh" if any(is_cjk(r) for r in references) else "13a"
    return _sacrebleu_score("bleu", BLEU(tokenize=tokenize, effective_order=True), predictions, references)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> Score:
    """sacrebleu corpus chrF (0-100): character n-grams, so Chinese needs no word segmentation."""
    from sacrebleu.metrics import CHRF

    return _sacrebleu_score("chrf", CHRF(), predictions, references)


# ---------------------------------------------------------------- perplexity


def perplexity(
    model, tokenizer, prompts: Sequence[list[dict]], references: Sequence[str], batch_size: int = 8
) -> Score:
    """Perplexity of each reference as the model's answer to its prompt (chat template applied; only the
    reference tokens scored). Corpus value: exp(total NLL / total reference tokens)."""
    nll, counts = reference_nll(model, tokenizer, prompts, references, batch_size)
    per_row = np.exp(np.divide(nll, np.maximum(counts, 1)))

    def resample(idx: np.ndarray) -> float:
        return float(np.exp(nll[idx].sum() / max(counts[idx].sum(), 1)))

    return Score("perplexity", resample(np.arange(len(nll))), per_row, resample=resample)


def reference_nll(
    model, tokenizer, prompts: Sequence[list[dict]], references: Sequence[str], batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Summed negative log-likelihood and token count of each reference after its templated prompt."""
    import torch

    rows = []
    for prompt, ref in zip(prompts, references, strict=True):
        text = tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
        head = tokenizer(text, add_special_tokens=False)["input_ids"]
        tail = tokenizer(ref, add_special_tokens=False)["input_ids"]
        rows.append((head, tail))
    nll, counts = np.zeros(len(rows)), np.zeros(len(rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        width = max(len(h) + len(t) for h, t in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (h, t) in enumerate(batch):
            ids[i, : len(h) + len(t)] = torch.tensor(h + t)
            mask[i, : len(h) + len(t)] = 1
            labels[i, len(h) : len(h) + len(t)] = torch.tensor(t)
        with torch.inference_mode():
            logits = model(
                input_ids=ids.to(model.device), attention_mask=mask.to(model.device)
            ).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = labels[:, 1:].to(logits.device)
        keep = target != -100
        token_nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
        nll[start : start + len(batch)] = token_nll.sum(1).cpu().numpy()
        counts[start : start + len(batch)] = keep.sum(1).cpu().numpy()
    return nll, counts


# ---------------------------------------------------------------- picking and scoring


def pick_metrics(references: Sequence[str]) -> list[str]:
    """Classification metrics when the references come from a small set of short labels, each seen more than
    once on average; otherwise contains / rouge_l / chrf for free text."""
    norm = [normalize(r) for r in references]
    distinct = set(norm)
    short = all(0 < len(r.split()) <= MAX_LABEL_WORDS and len(r) <= 40 for r in distinct)
    if short and 2 <= len(distinct) <= MAX_LABELS and len(distinct) * 2 <= len(norm):
        return list(CLASSIFICATION)
    return list(FREE_TEXT)


def score(
    names: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str] | None = None,
    model=None,
    tokenizer=None,
    prompts: Sequence[list[dict]] | None = None,
) -> dict[str, Score]:
    """The named metrics over one model's predictions. perplexity needs the model, tokenizer and prompts."""
    names = check_names(names)
    simple = {
        "exact_match": exact_match,
        "contains": contains,
        "rouge_l": rouge_l,
        "bleu": bleu,
        "chrf": chrf,
    }
    out: dict[str, Score] = {}
    if any(n in CLASSIFICATION for n in names):
        out.update(classification(predictions, references, labels))
    for name in names:
        if name in simple:
            out[name] = simple[name](predictions, references)
        elif name == "perplexity":
            if model is None or tokenizer is None or prompts is None:
                raise LmtailorError("perplexity needs a local model (not an endpoint)")
            out[name] = perplexity(model, tokenizer, prompts, references)
    return {n: out[n] for n in names}
