"""OpenAI's grader objects, with OpenAI's semantics, for reinforcement fine-tuning and the graders endpoints.

    check(grader)                       the reason a grader object is unusable, or None (graders/validate)
    grade(grader, sample, item, ask)    a Result: the reward, which error flags are set, sub-rewards (graders/run)

Graders: string_check (eq, ne, like, ilike), text_similarity (fuzzy_match, bleu, gleu, meteor, rouge_1..5,
rouge_l; cosine needs an embedding model and says so), python (graders/python_runner.py), score_model and
label_model (any OpenAI-compatible endpoint through `ask`), multi (graders/formula.py). Templates:
{{ item.key }}, {{ item.a.b }}, {{ sample.output_text }}, {{ sample.output_json.key }}.

Errors do not raise: a grader that fails gives reward 0 and names the reason in its flags, so a training run
goes on (OpenAI does the same); `check` is where a bad grader object is refused up front.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from difflib import SequenceMatcher

TYPES = ("string_check", "text_similarity", "python", "score_model", "label_model", "multi")
OPERATIONS = ("eq", "ne", "like", "ilike")
METRICS = ("cosine", "fuzzy_match", "bleu", "gleu", "meteor", "rouge_1", "rouge_2", "rouge_3", "rouge_4",
           "rouge_5", "rouge_l")  # fmt: skip
TEMPLATE = re.compile(r"\{\{\s*(item|sample)((?:\.[A-Za-z0-9_\-]+)*)\s*\}\}")
FLAGS = ("formula_parse_error", "invalid_variable_error", "model_grader_parse_error", "model_grader_refusal_error",
         "model_grader_server_error", "other_error", "python_grader_runtime_error", "python_grader_server_error",
         "sample_parse_error", "truncated_observation_error", "unresponsive_reward_error")  # fmt: skip

# ask(model, messages, sampling_params) -> (reply text, tokens used): a chat call to an OpenAI-compatible server
Ask = Callable[[str, list[dict], dict], tuple[str, int]]


@dataclass
class Result:
    reward: float
    name: str
    type: str
    errors: dict = field(default_factory=dict)  # flag -> True, plus *_details strings
    sub_rewards: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    tokens: int = 0
    seconds: float = 0.0

    def response(self) -> dict:
        """OpenAI's /fine_tuning/alpha/graders/run response."""
        errors = {flag: bool(self.errors.get(flag)) for flag in FLAGS}
        errors["model_grader_server_error_details"] = self.errors.get("model_grader_server_error_details")
        errors["python_grader_runtime_error_details"] = self.errors.get("python_grader_runtime_error_details")
        errors["python_grader_server_error_type"] = self.errors.get("python_grader_server_error_type")
        errors["other_error_details"] = self.errors.get("other_error_details")  # lmtailor's: the reason
        return {"reward": self.reward, "sub_rewards": self.sub_rewards,
                "model_grader_token_usage_per_model": {},
                "metadata": {"name": self.name, "type": self.type, "errors": errors, "execution_time": self.seconds,
                             "scores": self.scores, "sampled_model_name": None, "token_usage": self.tokens or None}}  # fmt: skip


# ---- checking a grader object ----------------------------------------------------------------------------


def check(grader, where: str = "grader", server: bool = False) -> str | None:
    """Why `grader` cannot be used, naming the key, or None. `server`: asked of a server, which runs python
    graders only in a sandbox unless its operator trusts them (graders/sandbox.py)."""
    if not isinstance(grader, dict):
        return f"{where}: a grader object"
    kind = grader.get("type")
    if kind not in TYPES:
        return f"{where}.type: one of {', '.join(TYPES)}, not {kind!r}"
    if not isinstance(grader.get("name"), str) or not grader["name"]:
        return f"{where}.name: a non-empty string"
    need = {"string_check": ("input", "reference", "operation"), "text_similarity": ("input", "reference",
            "evaluation_metric"), "python": ("source",), "score_model": ("model", "input"),
            "label_model": ("model", "input", "labels", "passing_labels"), "multi": ("graders", "calculate_output")}  # fmt: skip
    for key in need[kind]:
        if key not in grader:
            return f"{where}.{key}: required for a {kind} grader"
    if kind == "string_check" and grader["operation"] not in OPERATIONS:
        return f"{where}.operation: one of {', '.join(OPERATIONS)}"
    if kind == "text_similarity" and grader["evaluation_metric"] not in METRICS:
        return f"{where}.evaluation_metric: one of {', '.join(METRICS)}"
    if kind == "python":
        from lmtailor.graders import sandbox
        from lmtailor.graders.python_runner import check_source

        if sandbox.unavailable() and not sandbox.trusted(server):
            return f"{where}: {sandbox.refusal()}"
        why = check_source(str(grader["source"]))
        return f"{where}.source: {why}" if why else None
    if kind in ("score_model", "label_model"):
        if (
            not isinstance(grader["input"], list)
            or not grader["input"]
            or not all(isinstance(m, dict) for m in grader["input"])
        ):
            return f'{where}.input: a list of messages ({{"role": …, "content": …}})'
        if kind == "score_model":
            rng = grader.get("range", [0, 1])
            if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int | float) for x in rng)
                    and rng[0] < rng[1]):  # fmt: skip
                return f"{where}.range: two numbers, low < high"
        else:
            labels, passing = grader["labels"], grader["passing_labels"]
            for key, value in (("labels", labels), ("passing_labels", passing)):
                if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                    return f"{where}.{key}: a list of strings"
            if not labels or not set(passing) <= set(labels):
                return f"{where}.passing_labels: a subset of labels"
    if kind == "multi":
        subs = grader["graders"]
        if not isinstance(subs, dict) or not subs:
            return f"{where}.graders: an object of named graders"
        for name, sub in subs.items():
            if why := check(sub, f"{where}.graders.{name}", server):
                return why
        from lmtailor.graders.formula import FormulaError, parse

        try:
            parse(str(grader["calculate_output"]), set(subs))
        except FormulaError as e:
            return f"{where}.calculate_output: {e}"
    return None


# ---- templates ------------------------------------------------------------------------------------------------


def sample_namespace(model_sample: str) -> dict:
    """`sample`: output_text, and output_json when the sample parses as JSON."""
    try:
        parsed = json.loads(model_sample)
    except (json.JSONDecodeError, TypeError):
        parsed = None
    return {"output_text": model_sample, "output_json": parsed}


def render(template, sample: dict, item) -> str:
    """{{ item.x.y }} and {{ sample.output_text }} / {{ sample.output_json.k }} filled in; a missing key is
    an empty string, as in OpenAI's templates."""
    if not isinstance(template, str):
        return "" if template is None else str(template)

    def value(match: re.Match) -> str:
        current = item if match.group(1) == "item" else sample
        for key in filter(None, match.group(2).split(".")):
            if isinstance(current, dict):
                current = current.get(key)
            elif isinstance(current, list) and key.isdigit() and int(key) < len(current):
                current = current[int(key)]
            else:
                current = None
        if current is None:
            return ""
        return current if isinstance(current, str) else json.dumps(current, ensure_ascii=False)

    return TEMPLATE.sub(value, template)


# ---- grading ----------------------------------------------------------------------------------------------------


def grade(grader: dict, sample: dict, item, ask: Ask | None = None) -> Result:
    start = time.monotonic()
    kind = grader["type"]
    result = Result(0.0, grader.get("name", kind), kind)
    try:
        if kind == "string_check":
            result.reward = _string_check(grader, sample, item)
        elif kind == "text_similarity":
            result.reward = _similarity(grader["evaluation_metric"], render(grader["input"], sample, item),
                                        render(grader["reference"], sample, item))  # fmt: skip
        elif kind == "python":
            _python(grader, sample, item, result)
        elif kind in ("score_model", "label_model"):
            _model(grader, sample, item, ask, result)
        else:
            _multi(grader, sample, item, ask, result)
        if not math.isfinite(result.reward):
            raise GraderFailure(f"the grader gave {result.reward}, not a finite number")
    except GraderFailure as e:
        result.reward = 0.0
        result.errors[e.flag] = True
        if e.detail_key:
            result.errors[e.detail_key] = str(e)
    except Exception as e:  # a shape check() let through: still a reward of 0 and a reason, never a crash
        result.reward = 0.0
        result.errors["other_error"] = True
        result.errors["other_error_details"] = f"{type(e).__name__}: {e}"
    result.seconds = time.monotonic() - start
    return result


class GraderFailure(Exception):
    def __init__(self, message: str, flag: str = "other_error", detail_key: str | None = None):
        super().__init__(message)
        self.flag, self.detail_key = flag, detail_key


def _string_check(grader: dict, sample: dict, item) -> float:
    a, b = render(grader["input"], sample, item), render(grader["reference"], sample, item)
    op = grader["operation"]
    ok = {"eq": a == b, "ne": a != b, "like": b in a, "ilike": b.lower() in a.lower()}[op]
    return 1.0 if ok else 0.0


def _similarity(metric: str, hypothesis: str, reference: str) -> float:
    if metric == "fuzzy_match":  # difflib's ratio: 2 x matching characters / total characters
        return SequenceMatcher(None, hypothesis, reference).ratio()
    if metric == "bleu":
        import sacrebleu

        return sacrebleu.sentence_bleu(hypothesis, [reference]).score / 100
    if metric == "gleu":
        return _gleu(hypothesis.split(), reference.split())
    if metric == "meteor":
        return _meteor(hypothesis, reference)
    if metric.startswith("rouge_"):
        from rouge_score import rouge_scorer

        name = "rougeL" if metric == "rouge_l" else "rouge" + metric[-1]
        return rouge_scorer.RougeScorer([name], use_stemmer=True).score(reference, hypothesis)[name].fmeasure
    raise GraderFailure("text_similarity cosine needs an embedding model, and lmtailor has none configured; "
                        "use fuzzy_match, bleu, gleu, meteor or rouge_*")  # fmt: skip


def _gleu(hyp: list[str], ref: list[str], max_n: int = 4) -> float:
    """Google's sentence GLEU: n-grams (1..4) in common over the larger of the two n-gram counts. Written
    out because it is these eight lines, where nltk would be a dependency for one function."""
    from collections import Counter

    grams = lambda words: Counter(tuple(words[i : i + n]) for n in range(1, max_n + 1)  # noqa: E731
                                  for i in range(len(words) - n + 1))  # fmt: skip
    h, r = grams(hyp), grams(ref)
    total = max(sum(h.values()), sum(r.values()))
    return sum((h & r).values()) / total if total else 0.0


def _meteor(hypothesis: str, reference: str) -> float:
    """METEOR with exact and stem matches (nltk's implementation); its WordNet synonym stage needs a corpus
    download, which lmtailor never makes, so synonyms do not match."""
    from nltk.translate.meteor_score import meteor_score

    class NoSynonyms:
        @staticmethod
        def synsets(*args, **kwargs):
            return []

    return float(meteor_score([reference.split()], hypothesis.split(), wordnet=NoSynonyms()))


def _python(grader: dict, sample: dict, item, result: Result) -> None:
    from lmtailor.graders.python_runner import run_python

    got = run_python(grader["source"], sample, item)
    if got.kind == "runtime":
        raise GraderFailure(got.error, "python_grader_runtime_error", "python_grader_runtime_error_details")
    if got.kind == "timeout":
        result.errors["python_grader_server_error_type"] = "timeout"
        raise GraderFailure(got.error, "python_grader_server_error", "python_grader_runtime_error_details")
    if got.kind == "server":
        result.errors["python_grader_server_error_type"] = "process"
        raise GraderFailure(got.error, "python_grader_server_error", "python_grader_runtime_error_details")
    result.reward = got.value


def _messages(grader: dict, sample: dict, item) -> list[dict]:
    out = []
    for m in grader["input"]:
        content = m.get("content")
        if isinstance(content, dict):  # {"type": "input_text", "text": ...}
            content = content.get("text")
        elif isinstance(content, list):
            content = "".join(c.get("text", "") for c in content if isinstance(c, dict))
        out.append({"role": m.get("role", "user"), "content": render(content, sample, item)})
    return out


def _model(grader: dict, sample: dict, item, ask: Ask | None, result: Result) -> None:
    if ask is None:
        raise GraderFailure("model graders need an OpenAI-compatible endpoint", "model_grader_server_error",
                            "model_grader_server_error_details")  # fmt: skip
    try:
        reply, tokens = ask(
            grader["model"], _messages(grader, sample, item), grader.get("sampling_params") or {}
        )
    except Exception as e:  # the endpoint's error, in words
        raise GraderFailure(f"{grader['model']}: {e}", "model_grader_server_error",
                            "model_grader_server_error_details") from e  # fmt: skip
    result.tokens += tokens
    if grader["type"] == "score_model":
        low, high = grader.get("range", [0, 1])
        number = re.search(r"-?\d+(?:\.\d+)?", reply or "")
        if not number or not low <= float(number.group()) <= high:
            raise GraderFailure(f"the grader model's reply {reply!r} holds no score in [{low}, {high}]",
                                "model_grader_parse_error")  # fmt: skip
        result.reward = float(number.group())
    else:
        said = (reply or "").strip().strip(".").strip()
        label = next((x for x in grader["labels"] if x.lower() == said.lower()), None)
        label = label or next(
            (x for x in grader["labels"] if re.search(rf"\b{re.escape(x)}\b", said, re.I)), None
        )
        if label is None:
            raise GraderFailure(f"the grader model's reply {reply!r} is none of {grader['labels']}",
                                "model_grader_parse_error")  # fmt: skip
        result.scores["label"] = label
        result.reward = 1.0 if label in grader["passing_labels"] else 0.0


def _multi(grader: dict, sample: dict, item, ask: Ask | None, result: Result) -> None:
    from lmtailor.graders.formula import FormulaError, evaluate

    for name, sub in grader["graders"].items():
        got = grade(sub, sample, item, ask)
        result.sub_rewards[name] = got.reward
        result.tokens += got.tokens
        for flag, value in got.errors.items():
            result.errors.setdefault(flag, value)
    try:
        result.reward = evaluate(str(grader["calculate_output"]), result.sub_rewards)
    except FormulaError as e:
        raise GraderFailure(str(e), "invalid_variable_error" if e.variable else "formula_parse_error") from e
