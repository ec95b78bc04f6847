"""The answers of one model (a local one or an OpenAI-compatible endpoint) to a list of prompts, cached on disk per
prompt under the model's fingerprint and the generation parameters; and the test rows they answer.

evaluate/runner.py scores them; the judge (evaluate/judge.py), retention (evaluate/retention.py) and replay
(train/replay.py) ask through answer_prompts too. Nothing here imports those: they all import this module.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmtailor.errors import DataError, ModelError
from lmtailor.evaluate import metrics as M
from lmtailor.evaluate.spec import EvalSpec
from lmtailor.home import atomic_write_json, home_dir
from lmtailor.models.endpoint import Endpoint, parse_endpoint

WEIGHT_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt", ".tiktoken")
# written beside the weights after training (the card's metrics, retention.json, the quickstart's summary):
# they must not invalidate the cache
NOT_WEIGHTS = ("lmtailor.json", "retention.json", "quickstart.json")
EMBEDDED_ANSWERS = "embedded_answers.json"


@dataclass
class EvalRow:
    prompt: list[dict[str, str]]
    reference: str
    line: int | None = None
    source: str | None = None  # the row's `source` key (the data set it is from): scores per source


# ---------------------------------------------------------------- rows


def eval_row(rec) -> EvalRow | str:
    """A record as a test row (prompt ending in a user turn; reference: `reference`, else the final
    assistant turn), or the reason it cannot be one."""
    messages = rec.as_dicts()
    ref = rec.extra.get("reference")
    if messages and messages[-1]["role"] == "assistant":
        if ref is None:
            ref = messages[-1]["content"]
        messages = messages[:-1]
    if ref is None or isinstance(ref, dict | list):
        return "no reference: add a `reference` field or an assistant turn"
    if not messages or messages[-1]["role"] != "user":
        return "the prompt must end in a user turn"
    source = rec.extra.get("source")
    return EvalRow(messages, str(ref), rec.line, str(source) if isinstance(source, str | int) else None)


def load_rows(path: str | Path, fmt: str = "auto", on_error: str = "fail") -> list[EvalRow]:
    """Test rows: a prompt ending in a user turn and its reference (`reference`, else the final assistant turn)."""
    from lmtailor.data.formats import BadRowsError, load_records

    result = load_records(path, fmt, on_error, check=None)  # type: ignore[arg-type]
    rows, errors = [], list(result.errors)
    for rec in result.records:
        row = eval_row(rec)
        if isinstance(row, str):
            errors.append(DataError(str(path), rec.line, row))
        else:
            rows.append(row)
    if errors and on_error == "fail":
        raise BadRowsError(path, errors)
    if not rows:
        raise DataError(str(path), None, "no usable test rows")
    return rows


# ---------------------------------------------------------------- models and the cache


def model_fingerprint(ref: str, home: str | Path | None = None) -> str:
    """A hash of what decides a model's answers: its weights, config and tokenizer files (an endpoint: its name
    and URL). File hashes are kept under <home>/cache/fingerprints.json by (path, size, mtime)."""
    endpoint = parse_endpoint(ref)
    if endpoint:
        return _sha(f"openai|{endpoint.model}|{endpoint.base_url}")
    from lmtailor.models.catalog import resolve

    folder = resolve(ref, home).path
    index_file = home_dir(home) / "cache" / "fingerprints.json"
    index = json.loads(index_file.read_text(encoding="utf-8")) if index_file.exists() else {}
    parts = []
    for f in sorted(folder.iterdir()):
        if not f.is_file() or not f.name.endswith(WEIGHT_SUFFIXES) or f.name in NOT_WEIGHTS:
            continue
        st = f.stat()
        key = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in index:
            index[key] = file_sha(f)
        parts.append(f"{f.name}:{index[key]}")
    atomic_write_json(index_file, index)
    return _sha("\n".join(parts))


def shipped_answers(fingerprint: str, params: dict[str, Any]) -> dict[str, str]:
    """Answers that came with the package for this model and these parameters ({prompt hash: answer}): the
    embedded model's greedy fp32 answers to the general probes and the replay prompts (models/
    embedded_answers.json, made by scripts/embedded_answers.py), so a fresh machine's first training run does
    not spend minutes generating what every machine would generate alike. Only for the same weights, config
    and tokenizer (the fingerprint); any other model generates its own."""
    data = _shipped()
    if data.get("fingerprint") != fingerprint:
        return {}
    return data["answers"].get(params_key(params), {})


@functools.cache
def _shipped() -> dict[str, Any]:
    """The package's answers file, read once per process (every asking of every model looks at it)."""
    from importlib import resources

    shipped = resources.files("lmtailor.models") / EMBEDDED_ANSWERS
    return json.loads(shipped.read_text(encoding="utf-8")) if shipped.is_file() else {}


def params_key(params: dict[str, Any]) -> str:
    return _sha(json.dumps(params, sort_keys=True))[:16]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prompt_hash(prompt: list[dict[str, str]]) -> str:
    return _sha(json.dumps(prompt, ensure_ascii=False, sort_keys=True))


def generation_params(spec: EvalSpec) -> dict[str, Any]:
    """The parameters that change an answer (batch size does not; the seed only when sampling)."""
    params: dict[str, Any] = {"max_new_tokens": spec.max_new_tokens, "temperature": spec.temperature}
    if spec.temperature > 0:
        params.update(top_p=spec.top_p, seed=spec.seed)
    return params


def cache_file(home: str | Path | None, fingerprint: str, params: dict[str, Any]) -> Path:
    """<home>/cache/generations/<model fingerprint>/<parameters hash>.json: {prompt hash: answer}."""
    return home_dir(home) / "cache" / "generations" / fingerprint[:32] / f"{params_key(params)}.json"


# ---------------------------------------------------------------- generation


@dataclass
class ModelRun:
    """One model's answers and what it took to get them."""

    ref: str
    kind: str  # local | openai
    fingerprint: str
    answers: list[str]
    generated: int
    cached: int
    seconds: float
    scores: dict[str, M.Score]


@dataclass
class Answers:
    """A model's answers to a list of prompts: from the cache where it had them, the rest generated."""

    texts: list[str]
    fingerprint: str
    generated: int  # distinct prompts answered now
    cached: int  # prompts answered from the cache
    seconds: float
    model: Any = None  # a local model, loaded when something had to be generated or `load` asked for it
    tokenizer: Any = None


def answer_prompts(
    ref: str,
    prompts: list[list[dict[str, str]]],
    params: dict[str, Any],
    spec: EvalSpec,
    home,
    log: Callable[[str], None],
    load: bool = False,
    what: str = "answers",
) -> Answers:
    """Answers of model `ref` to chat prompts under generation `params` (see generation_params), cached per
    (model fingerprint, params, prompt): only prompts missing from the cache are generated, each once."""
    endpoint = parse_endpoint(ref)
    fp = model_fingerprint(ref, home)
    cfile = cache_file(home, fp, params)
    cache: dict[str, str] = {}
    if spec.cache:
        cache.update(shipped_answers(fp, params))
        if cfile.exists():
            cache.update(json.loads(cfile.read_text(encoding="utf-8")))
    keys = [prompt_hash(p) for p in prompts]
    todo: dict[str, int] = {}  # prompt hash -> first prompt with it
    for i, k in enumerate(keys):
        if k not in cache:
            todo.setdefault(k, i)
    cached = sum(k in cache for k in keys)
    model = tok = None
    t0 = time.time()
    if not endpoint and (todo or load):
        from lmtailor.models.loading import load_model, load_tokenizer

        tok = load_tokenizer(ref, home, trust_remote_code=spec.trust_remote_code)
        model = load_model(ref, home, trust_remote_code=spec.trust_remote_code)
    if todo:
        log(f"{ref}: generating {len(todo)} {what} ({cached} cached)")
        todo_prompts = [prompts[i] for i in todo.values()]
        new = (
            _endpoint_answers(endpoint, todo_prompts, params, spec)
            if endpoint
            else _local_answers(model, tok, todo_prompts, params, spec.batch_size)
        )
        fresh = dict(zip(todo, new, strict=True))
        cache.update(fresh)
        # --no-cache regenerates, and still refreshes the cache (the shipped answers stay in the package)
        on_disk = json.loads(cfile.read_text(encoding="utf-8")) if cfile.exists() else {}
        atomic_write_json(cfile, {**on_disk, **fresh})
    texts = [cache[k] for k in keys]
    return Answers(texts, fp, len(todo), cached, time.time() - t0, model, tok)


def _local_answers(
    model, tok, prompts: list[list[dict]], params: dict[str, Any], batch_size: int
) -> list[str]:
    from lmtailor.evaluate.generate import generate

    sampling = params["temperature"] > 0
    if sampling:
        import torch

        torch.manual_seed(params["seed"])
    return generate(
        model,
        tok,
        prompts,
        max_new_tokens=params["max_new_tokens"],
        batch_size=batch_size,
        do_sample=sampling,
        temperature=params["temperature"] or 1.0,
        top_p=params.get("top_p", 1.0),
    )


def _endpoint_answers(
    endpoint: Endpoint, prompts: list[list[dict]], params: dict[str, Any], spec: EvalSpec
) -> list[str]:
    """Chat completions from an OpenAI-compatible server, a few requests in flight at once."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI, OpenAIError

    client = OpenAI(
        base_url=endpoint.base_url, api_key=os.environ.get(spec.api_key_env) or "EMPTY", max_retries=2
    )
    extra = {"top_p": params["top_p"], "seed": params["seed"]} if params["temperature"] > 0 else {}

    def ask(messages: list[dict]) -> str:
        reply = client.chat.completions.create(
            model=endpoint.model,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=params["max_new_tokens"],
            temperature=params["temperature"],
            **extra,
        )
        return (reply.choices[0].message.content or "").strip()

    try:
        with ThreadPoolExecutor(max_workers=min(8, spec.batch_size)) as pool:
            return list(pool.map(ask, prompts))
    except OpenAIError as e:
        raise ModelError(f"endpoint {endpoint.model}@{endpoint.base_url}: {e}") from e
