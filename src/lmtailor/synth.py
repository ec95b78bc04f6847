"""`lmtailor data synth`: documents in, a fine-tuning set of question–answer pairs out.

    documents ─ read, chunk (documents.py) ─► per chunk: QA pairs ─► paraphrases of each question
        ─► filters (length, grounded in the chunk, near-duplicates) ─► train.jsonl + eval split + report

The generator is a local model (catalog name or folder) or any OpenAI-compatible endpoint
(`openai:MODEL@BASE_URL`). Replies are parsed with json-repair (code fences, trailing commas, cut-off
lists) and, failing that, as "Q: … A: …" lines; a chunk whose reply gives no pair is asked again, a
little hotter, up to `retries` times, and never stops the run. Endpoint calls go several at a time
(`concurrency`); the openai client retries rate limits and server errors with exponential backoff.
Each finished chunk is saved under `<output>.parts/` before the next group starts, so a run that is
interrupted continues where it stopped: finished chunks are not generated again.
Every kept pair carries its provenance (document, chunk, heading, generator); every dropped one is
listed with its reason in `<output>.dropped.jsonl`, and `<output>.report.json` counts both.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmtailor.data.clean import _NearDupIndex, _shingles, normalize_text
from lmtailor.data.documents import Chunk, chunk_read, language, read_documents, token_counter
from lmtailor.errors import LmtailorError, ModelError
from lmtailor.home import atomic_write_json, atomic_write_text
from lmtailor.specs import SynthSpec

PROMPT_VERSION = 3  # part files made with other prompts are not reused

PROMPTS = {
    "en": {
        "system": "You write question-answer pairs that test a reader's knowledge of a text.",
        "pairs": (
            "Text:\n<<<\n{text}\n>>>\n\n"
            "Write {k} different questions that a reader could ask about this text, each with a short "
            "answer taken from the text. Each question must make sense without the text: name the subject "
            "instead of writing 'it' or 'the text'. Reply with JSON only, a list of objects with the keys "
            '"question" and "answer", for example:\n'
            '[{{"question": "When was the Brooklyn Bridge opened?", "answer": "In 1883."}}]'
        ),
        "pairs_lines": (
            "{text}\n\nWrite {k} questions about the text above, with their answers taken from the text. "
            "Use this format:\nQ: <question>\nA: <answer>"
        ),
        "paraphrase": (
            "Rewrite this question in {p} different ways. Keep its meaning, change the words and the "
            "sentence structure. Reply with JSON only, a list of {p} strings.\n\nQuestion: {question}"
        ),
        "judge": (
            "Text:\n<<<\n{text}\n>>>\n\nQuestion: {question}\nAnswer: {answer}\n\n"
            "Does the text support this answer to the question? Reply with one word: yes or no."
        ),
    },
    "zh": {
        "system": "你负责根据文本编写问答对，用来检验读者对文本的掌握。",
        "pairs": (
            "文本：\n<<<\n{text}\n>>>\n\n"
            "请就这段文本写出 {k} 个不同的问题，每个问题配一个取自文本的简短答案。每个问题脱离文本也要能看懂："
            '写明主语，不要写“它”或“本文”。只回复 JSON：一个对象列表，键为 "question" 和 "answer"，例如：\n'
            '[{{"question": "长江大桥是哪一年通车的？", "answer": "1968年。"}}]'
        ),
        "pairs_lines": (
            "{text}\n\n请就上面的文本写出 {k} 个问题，并给出取自文本的答案。格式如下：\n问：<问题>\n答：<答案>"
        ),
        "paraphrase": (
            "请把下面这个问题换 {p} 种说法，意思不变，用词和句式要不同。只回复 JSON：由 {p} 个字符串组成的列表。\n\n"
            "问题：{question}"
        ),
        "judge": (
            "文本：\n<<<\n{text}\n>>>\n\n问题：{question}\n答案：{answer}\n\n"
            "根据文本，这个答案对吗？只回答一个字：是 或 否。"
        ),
    },
}

_QUESTION_KEYS = ("question", "q", "query", "问题", "问")
_ANSWER_KEYS = ("answer", "a", "response", "答案", "答")
_LIST_KEYS = ("pairs", "questions", "qa", "qa_pairs", "items", "data", "paraphrases", "rewrites")
_QA_LINE = re.compile(
    r"(?:^|\n)\s*(?:\d+[.)]\s*)?(?:Q|Question|问题|问)\s*[:：]\s*(?P<q>[^\n]+?)\s*\n\s*(?:A|Answer|答案|答)\s*[:：]\s*(?P<a>.+?)(?=\n\s*(?:\d+[.)]\s*)?(?:Q|Question|问题|问)\s*[:：]|\n\s*\n|\Z)",
    re.S | re.I,
)
_STOP = frozenset(
    "a an the of in on at to for from by with and or is are was were be been it its this that these those "
    "as into than then there their they he she his her who what when where which why how do does did "
    "has have had not no yes".split()
)
_WORD = re.compile(r"[0-9]+(?:[.,][0-9]+)*|[^\W\d_]+", re.U)
_LABEL = re.compile(
    r"^\s*(?:\d+[.)、]\s+|(?:Q|Question|Paraphrase|Rewrite|问题|问|改写)\s*\d*\s*[:：]\s*)", re.I
)
_CJK_CHAR = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


# ------------------------------------------------------------------ parsing replies


def _loads(text: str) -> Any:
    """JSON from a model's reply: fences and chatter around it ignored, broken JSON repaired; None if none."""
    import json_repair

    text = re.sub(r"```(?:json|JSON)?", "\n", text)
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if not starts:
        return None
    try:
        value = json_repair.repair_json(text[min(starts) :], return_objects=True)
    except Exception:  # json-repair gives up on some inputs by raising: a reply we could not read
        return None
    return value if value not in ("", None) else None


def _items(value: Any) -> list:
    """The list inside a parsed reply: the reply itself, or the first list under a usual key of an object."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        for key, v in value.items():
            if str(key).lower() in _LIST_KEYS and isinstance(v, list):
                return v
        return [value]
    return []


def _pick(obj: dict, keys: tuple[str, ...]) -> str | None:
    lowered = {str(k).strip().lower(): v for k, v in obj.items()}
    for key in keys:
        v = lowered.get(key)
        if isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v).strip():
            return str(v).strip()
    return None


def parse_pairs(reply: str) -> list[tuple[str, str]]:
    """Question–answer pairs from a generator's reply (JSON, repaired JSON, or Q:/A: lines); [] if none."""
    pairs: list[tuple[str, str]] = []
    for item in _items(_loads(reply)):
        if isinstance(item, dict):
            q, a = _pick(item, _QUESTION_KEYS), _pick(item, _ANSWER_KEYS)
        elif isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item):
            q, a = item[0].strip(), item[1].strip()
        else:
            continue
        if q and a:
            pairs.append((_unlabel(q), a))
    if not pairs:
        pairs = [(_unlabel(m["q"]), m["a"].strip()) for m in _QA_LINE.finditer(reply)]
    return [(q, a) for q, a in pairs if q and a]


def parse_paraphrases(reply: str) -> list[str]:
    """Rewritten questions from a reply: a JSON list of strings (or objects), else numbered or bulleted lines."""
    out: list[str] = []
    for item in _items(_loads(reply)):
        if isinstance(item, str):
            out.append(item.strip())
        elif isinstance(item, dict):
            text = _pick(item, ("paraphrase", "rewrite", "question", "text", "改写", "问题"))
            if text:
                out.append(text)
    if not out:
        lines = [re.sub(r"^\s*(?:\d+[.)、]|[-*•])\s*", "", line).strip() for line in reply.splitlines()]
        out = [line for line in lines if line.endswith(("?", "？"))]
    return [q for q in (_unlabel(o) for o in out) if q]


def _unlabel(text: str) -> str:
    """A question without the "Question:" / "1." / quotes a model put around it."""
    while True:
        new = _LABEL.sub("", text, count=1).strip().strip('"“”').strip()
        if new == text:
            return new
        text = new


def parse_verdict(reply: str) -> bool | None:
    """A judge's yes / no (是 / 否); None when the reply says neither first."""
    m = re.search(r"\b(yes|no)\b|(不是|不对|否|错|是|对)", reply.strip().lower())  # 不是 before 是
    if not m:
        return None
    return m.group(0) in ("yes", "是", "对")


# ------------------------------------------------------------------ filters


def content_words(text: str) -> list[str]:
    """What an answer says: numbers, words minus stop words, and Chinese as character pairs (one character
    alone says little: 尔 is in 奎尔 and in 戴尔)."""
    out: list[str] = []
    for w in _WORD.findall(normalize_text(text)):
        if _CJK_CHAR.search(w):
            for run in re.findall(r"[\u3400-\u9fff\uf900-\ufaff]+", w):
                out.extend([run] if len(run) == 1 else [run[i : i + 2] for i in range(len(run) - 1)])
        elif w not in _STOP:
            out.append(w)
    return out


def grounding(answer: str, chunk_text: str) -> float:
    """The share of the answer's content words found in the chunk (1.0 for an answer copied from it)."""
    words = content_words(answer)
    if not words:
        return 0.0
    text = normalize_text(chunk_text)
    found = set(content_words(text))
    return sum(w in found for w in words) / len(words)


@dataclass
class Pair:
    question: str
    answer: str
    chunk: str  # chunk id
    paraphrases: list[str] = field(default_factory=list)


@dataclass
class Dropped:
    reason: str
    question: str
    answer: str = ""
    chunk: str = ""
    detail: str = ""


def filter_pairs(
    pairs: list[Pair],
    chunks: dict[str, Chunk],
    spec: SynthSpec,
    verdicts: dict[int, bool | None] | None = None,
) -> tuple[list[Pair], list[Dropped]]:
    """Pairs that pass the length, grounding and near-duplicate filters, and why each other one did not.

    `verdicts` (pair index -> the judge's yes / no / unclear) replaces the overlap test when grounding is judged."""
    kept: list[Pair] = []
    dropped: list[Dropped] = []
    seen = _NearDupIndex(spec.near_duplicate)
    for i, p in enumerate(pairs):
        text = chunks[p.chunk].text
        reason, detail = None, ""
        if len(p.question) < spec.min_question_chars:
            reason, detail = "question_too_short", f"{len(p.question)} < {spec.min_question_chars} characters"
        elif len(p.question) > spec.max_question_chars:
            reason, detail = "question_too_long", f"{len(p.question)} > {spec.max_question_chars} characters"
        elif len(p.answer) > spec.max_answer_chars:
            reason, detail = "answer_too_long", f"{len(p.answer)} > {spec.max_answer_chars} characters"
        elif not content_words(p.answer):
            reason, detail = "answer_empty", "no content words (a bare yes / no or punctuation)"
        elif set(content_words(p.answer)) <= set(content_words(p.question)):
            reason, detail = "answer_repeats_question", "the answer says nothing the question does not"
        elif spec.grounding == "overlap" and (g := grounding(p.answer, text)) < spec.min_overlap:
            reason, detail = (
                "not_grounded",
                f"{g:.0%} of the answer's words are in the chunk (< {spec.min_overlap:.0%})",
            )
        elif spec.grounding == "judge" and verdicts is not None and verdicts.get(i) is not True:
            reason = "not_grounded"
            detail = (
                "the judge said no"
                if verdicts.get(i) is False
                else "the judge's reply was neither yes nor no"
            )
        if reason is None:
            sh = _shingles(normalize_text(p.question))
            if seen.has_near_duplicate(sh):
                reason, detail = (
                    "near_duplicate",
                    f"question alike (≥ {spec.near_duplicate:.0%}) to a kept one",
                )
            else:
                seen.add(sh)
        if reason:
            dropped.append(Dropped(reason, p.question, p.answer, p.chunk, detail))
            continue
        paras, why = clean_paraphrases(p, spec)
        dropped.extend(Dropped(r, q, p.answer, p.chunk, f"paraphrase of: {p.question}") for q, r in why)
        kept.append(Pair(p.question, p.answer, p.chunk, paras))
    return kept, dropped


def clean_paraphrases(pair: Pair, spec: SynthSpec) -> tuple[list[str], list[tuple[str, str]]]:
    """The paraphrases worth keeping (new wording, a question, no answer given away) and the others' reasons."""
    kept: list[str] = []
    dropped: list[tuple[str, str]] = []
    index = _NearDupIndex(0.9)
    index.add(_shingles(normalize_text(pair.question)))
    answer = normalize_text(pair.answer).rstrip("。.!")
    for q in pair.paraphrases[: spec.paraphrases]:
        norm = normalize_text(_unlabel(q))
        sh = _shingles(norm)
        if not spec.min_question_chars <= len(q) <= spec.max_question_chars:
            dropped.append((q, "paraphrase_length"))
        elif len(answer) > 3 and answer in norm:
            dropped.append((q, "paraphrase_gives_answer"))
        elif index.has_near_duplicate(sh):
            dropped.append((q, "paraphrase_same_wording"))
        else:
            index.add(sh)
            kept.append(q)
    return kept, dropped


# ------------------------------------------------------------------ generators


class Generator:
    """A local model or an OpenAI-compatible endpoint; `ask` answers chat prompts, None where a request failed."""

    def __init__(self, ref: str, spec: SynthSpec, home, log: Callable[[str], None]):
        from lmtailor.models.endpoint import parse_endpoint

        self.ref, self.spec, self.home, self.log = ref, spec, home, log
        self.endpoint = parse_endpoint(ref)
        self.model = self.tokenizer = self.client = None
        self.errors: Counter[str] = Counter()

    def load(self) -> None:
        if self.endpoint:
            import os

            from openai import OpenAI

            key = os.environ.get(self.spec.api_key_env) or "EMPTY"
            self.client = OpenAI(
                base_url=self.endpoint.base_url, api_key=key, max_retries=self.spec.retries, timeout=600
            )
        else:
            from lmtailor.models.loading import load_model, load_tokenizer

            self.tokenizer = load_tokenizer(self.ref, self.home, self.spec.trust_remote_code)
            self.model = load_model(self.ref, self.home, trust_remote_code=self.spec.trust_remote_code)

    def ask(self, prompts: list[list[dict]], temperature: float, max_new_tokens: int) -> list[str | None]:
        if not prompts:
            return []
        return (
            self._ask_endpoint(prompts, temperature, max_new_tokens)
            if self.endpoint
            else self._ask_local(prompts, temperature, max_new_tokens)
        )

    def _ask_local(self, prompts, temperature: float, max_new_tokens: int) -> list[str | None]:
        import torch

        from lmtailor.evaluate.generate import generate

        torch.manual_seed(self.spec.seed)
        return list(
            generate(
                self.model,
                self.tokenizer,
                prompts,
                max_new_tokens=max_new_tokens,
                batch_size=self.spec.concurrency,
                do_sample=temperature > 0,
                temperature=temperature or 1.0,
            )  # fmt: skip
        )

    def _ask_endpoint(self, prompts, temperature: float, max_new_tokens: int) -> list[str | None]:
        from concurrent.futures import ThreadPoolExecutor

        from openai import APIConnectionError, AuthenticationError, NotFoundError, OpenAIError

        assert self.endpoint is not None and self.client is not None
        fatal: list[Exception] = []

        def one(messages: list[dict]) -> str | None:
            try:
                reply = self.client.chat.completions.create(
                    model=self.endpoint.model, messages=messages, max_tokens=max_new_tokens,
                    temperature=temperature, seed=self.spec.seed,
                )  # fmt: skip
                return reply.choices[0].message.content or ""
            except (AuthenticationError, NotFoundError, APIConnectionError) as e:
                fatal.append(e)
            except OpenAIError as e:  # after the client's own retries: this request fails, the run goes on
                self.errors[type(e).__name__] += 1
                self.log(f"generator request failed: {type(e).__name__}: {e}")
            return None

        with ThreadPoolExecutor(max_workers=self.spec.concurrency) as pool:
            replies = list(pool.map(one, prompts))
        if fatal and all(r is None for r in replies):
            e = fatal[0]
            raise ModelError(
                f"generator {self.endpoint.model}@{self.endpoint.base_url}: {type(e).__name__}: {e}"
            )
        self.errors.update(type(e).__name__ for e in fatal)
        return replies


# ------------------------------------------------------------------ the run


def settings_key(spec: SynthSpec, generator: str) -> str:
    """What a saved chunk depends on besides its text: a part made under other settings is not reused."""
    keys = {"v": PROMPT_VERSION, "generator": generator, "k": spec.pairs_per_chunk, "p": spec.paraphrases,
            "lang": spec.lang, "t": spec.temperature, "seed": spec.seed, "n": spec.max_new_tokens}  # fmt: skip
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


def _messages(lang: str, kind: str, **values: Any) -> list[dict[str, str]]:
    p = PROMPTS[lang]
    return [{"role": "system", "content": p["system"]}, {"role": "user", "content": p[kind].format(**values)}]


def output_paths(output: str | Path) -> dict[str, Path]:
    out = Path(output)
    stem = out.with_suffix("") if out.suffix else out
    return {
        "train": out if out.suffix else out.with_suffix(".jsonl"),
        "eval": Path(f"{stem}.eval.jsonl"),
        "report": Path(f"{stem}.report.json"),
        "dropped": Path(f"{stem}.dropped.jsonl"),
        "parts": Path(f"{stem}.parts"),
    }


def _chunk_lang(spec: SynthSpec, chunk: Chunk) -> str:
    return spec.lang if spec.lang != "auto" else language(chunk.text)


def _distinct(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The pairs without repeats (small models loop on one question)."""
    seen: set[str] = set()
    out = []
    for q, a in pairs:
        key = normalize_text(q)
        if key not in seen:
            seen.add(key)
            out.append((q, a))
    return out


def _grounded(pairs: list[tuple[str, str]], chunk: Chunk, spec: SynthSpec) -> bool:
    """Whether any answer passes the overlap test (always true unless grounding is by overlap)."""
    return spec.grounding != "overlap" or any(grounding(a, chunk.text) >= spec.min_overlap for _, a in pairs)


def generate_chunk_group(gen: Generator, chunks: list[Chunk], spec: SynthSpec) -> list[dict]:
    """Pairs then paraphrases for a group of chunks, asked together (one batch, or requests in parallel)."""
    langs = [_chunk_lang(spec, c) for c in chunks]
    pairs: list[list[tuple[str, str]]] = [[] for _ in chunks]
    attempts = [0] * len(chunks)
    failed = [0] * len(chunks)
    ungrounded = [0] * len(chunks)
    answered = [False] * len(chunks)
    todo = list(range(len(chunks)))
    for attempt in range(spec.retries + 1):
        if not todo:
            break
        # the first retry asks for plain "Q: / A:" lines rather than JSON (small models that cannot write JSON
        # often manage those); later ones a little hotter: the same prompt, same temperature, same reply
        kind = "pairs" if attempt == 0 else "pairs_lines"
        temp = spec.temperature if attempt < 2 else max(0.7, spec.temperature)
        prompts = [_messages(langs[i], kind, text=chunks[i].context, k=spec.pairs_per_chunk) for i in todo]
        replies = gen.ask(prompts, temp, spec.max_new_tokens)
        left = []
        for i, reply in zip(todo, replies, strict=True):
            attempts[i] += 1
            answered[i] = answered[i] or reply is not None
            got = _distinct(parse_pairs(reply) if reply is not None else [])[: spec.pairs_per_chunk]
            if not got:
                failed[i] += 1
                left.append(i)
                continue
            if not pairs[i] or _grounded(got, chunks[i], spec):
                pairs[i] = got
            if not _grounded(pairs[i], chunks[i], spec):  # every answer invented: worth another try
                ungrounded[i] += 1
                left.append(i)
        todo = left
    flat = [(i, j) for i, ps in enumerate(pairs) for j in range(len(ps))]
    paraphrases: dict[tuple[int, int], list[str]] = {}
    if spec.paraphrases and flat:
        prompts = [
            _messages(langs[i], "paraphrase", question=pairs[i][j][0], p=spec.paraphrases) for i, j in flat
        ]
        replies = gen.ask(prompts, max(0.7, spec.temperature), spec.max_new_tokens // 2)
        for key, reply in zip(flat, replies, strict=True):
            paraphrases[key] = parse_paraphrases(reply) if reply is not None else []
    return [
        {
            "chunk": c.id,
            "answered": answered[i],
            "lang": langs[i],
            "attempts": attempts[i],
            "unparsable_replies": failed[i],
            "ungrounded_replies": ungrounded[i],
            "pairs": [
                {"question": q, "answer": a, "paraphrases": paraphrases.get((i, j), [])}
                for j, (q, a) in enumerate(pairs[i])
            ],
        }
        for i, c in enumerate(chunks)
    ]


def judge_pairs(
    gen: Generator, pairs: list[Pair], chunks: dict[str, Chunk], spec: SynthSpec
) -> dict[int, bool | None]:
    prompts = [
        _messages(
            _chunk_lang(spec, chunks[p.chunk]),
            "judge",
            text=chunks[p.chunk].context,
            question=p.question,
            answer=p.answer,
        )  # fmt: skip
        for p in pairs
    ]
    verdicts: dict[int, bool | None] = {}
    for start in range(0, len(prompts), spec.concurrency * 4):
        replies = gen.ask(prompts[start : start + spec.concurrency * 4], 0.0, 8)
        for i, r in enumerate(replies, start):
            verdicts[i] = parse_verdict(r) if r is not None else None
    return verdicts


def run_synth(
    spec: SynthSpec,
    home=None,
    log: Callable[[str], None] = print,
    names: dict[str, str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The whole synthesis; returns the report (also written next to the output). `names` maps a document's
    path to the name its provenance shows (the API's uploaded files keep their own names; the generator's folder
    its served name)."""
    t0 = time.time()
    paths = output_paths(spec.output or "synth.jsonl")
    shown = (names or {}).get(spec.generator, spec.generator)  # the generator as the user named it
    documents = read_documents(spec.docs)  # bad files fail before a model loads
    gen = Generator(spec.generator, spec, home, log)
    gen.load()
    chunks = chunk_read(documents, _counter(spec, gen, home), spec.chunk_tokens, spec.chunk_overlap)
    if names:
        for c in chunks:
            c.document = names.get(c.document, c.document)
    by_id = {c.id: c for c in chunks}
    docs = sorted({c.document for c in chunks})
    log(f"{len(docs)} documents, {len(chunks)} chunks of up to {spec.chunk_tokens} tokens")

    parts = paths["parts"]
    parts.mkdir(parents=True, exist_ok=True)
    key = settings_key(spec, spec.generator)
    part_file = lambda c: parts / f"{key}-{c.id}.json"  # noqa: E731
    todo = [c for c in chunks if not part_file(c).exists()]
    unique_todo = list({c.id: c for c in todo}.values())
    if len(todo) < len(chunks):
        log(f"resuming: {len(chunks) - len(todo)} chunks already generated, {len(todo)} to go")
    done = len(chunks) - len(todo)
    group = max(1, spec.concurrency)
    for start in range(0, len(unique_todo), group):
        batch = unique_todo[start : start + group]
        for result in generate_chunk_group(gen, batch, spec):
            if result["answered"]:  # a chunk whose every request failed is asked again on the next run
                atomic_write_json(parts / f"{key}-{result['chunk']}.json", result)
        done += len(batch)
        log(f"chunks {done}/{len(chunks)}")
        if progress:
            progress(done, len(chunks))

    missing = [c for c in chunks if not part_file(c).exists()]
    if missing:
        raise LmtailorError(
            f"{len(missing)} of {len(chunks)} chunks got no reply from the generator (every request failed: "
            f"{', '.join(f'{k} x{n}' for k, n in gen.errors.items()) or 'see the log'}); run the same command "
            "again to ask for those only"
        )
    results = [json.loads(part_file(c).read_text(encoding="utf-8")) for c in chunks]
    raw = [
        Pair(p["question"], p["answer"], r["chunk"], p["paraphrases"]) for r in results for p in r["pairs"]
    ]
    verdicts = None
    if spec.grounding == "judge" and raw:
        log(f"asking the generator whether {len(raw)} answers are supported by their chunks")
        verdicts = judge_pairs(gen, raw, by_id, spec)
    kept, dropped = filter_pairs(raw, by_id, spec, verdicts)
    train, held = _rows(kept, by_id, shown, spec)
    for name, rows in (("train", train), ("eval", held)):
        atomic_write_text(paths[name], "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(
        paths["dropped"], "".join(json.dumps(asdict(d), ensure_ascii=False) + "\n" for d in dropped)
    )
    reasons = Counter(d.reason for d in dropped)
    report = {
        "generator": shown,
        "documents": docs,
        "chunks": len(chunks),
        "chunks_without_pairs": sum(not r["pairs"] for r in results),
        "unparsable_replies": sum(r["unparsable_replies"] for r in results),
        "replies_without_grounded_answer": sum(r.get("ungrounded_replies", 0) for r in results),
        "failed_requests": dict(gen.errors),
        "pairs_generated": len(raw),
        "pairs_kept": len(kept),
        "paraphrases_generated": sum(len(p.paraphrases[: spec.paraphrases]) for p in raw),
        "paraphrases_kept": sum(len(p.paraphrases) for p in kept),
        "dropped": dict(sorted(reasons.items())),
        "train_rows": len(train),
        "eval_rows": len(held),
        "files": {k: str(v) for k, v in paths.items() if k != "parts"},
        "seconds": round(time.time() - t0, 1),
        "spec": spec.model_dump(),
    }
    atomic_write_json(paths["report"], report)
    return report


def _counter(spec: SynthSpec, gen: Generator, home) -> Callable[[str], int]:
    """Chunks are measured with the tokenizer asked for, else a local generator's, else the embedded model's
    (an endpoint's tokenizer is not at hand; token counts of similar tokenizers differ by tens of percent)."""
    from lmtailor.models.catalog import EMBEDDED
    from lmtailor.models.loading import load_tokenizer

    if spec.tokenizer is None and gen.tokenizer is not None:
        return token_counter(gen.tokenizer)
    return token_counter(load_tokenizer(spec.tokenizer or EMBEDDED, home, spec.trust_remote_code))


def _rows(
    kept: list[Pair], chunks: dict[str, Chunk], generator: str, spec: SynthSpec
) -> tuple[list[dict], list[dict]]:
    """Training rows (each question and its kept paraphrases but the held-out ones) and the eval split (the
    last `eval_paraphrases` paraphrases of each pair, never trained on), each with its provenance."""
    train: list[dict] = []
    held: list[dict] = []
    for n, p in enumerate(kept):
        c = chunks[p.chunk]
        source = {"document": c.document, "chunk": c.index, "chunk_id": c.id, "heading": " > ".join(c.headings),
                  "where": c.where, "generator": generator, "pair": n}  # fmt: skip
        k = min(spec.eval_paraphrases, len(p.paraphrases))
        trained = [p.question, *p.paraphrases[: len(p.paraphrases) - k]]
        for i, q in enumerate(trained):
            train.append({
                "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": p.answer}],
                "source": {**source, "kind": "question" if i == 0 else "paraphrase"},
            })  # fmt: skip
        for q in p.paraphrases[len(p.paraphrases) - k :]:
            held.append({
                "messages": [{"role": "user", "content": q}], "reference": p.answer,
                "source": {**source, "kind": "held_out_paraphrase"},
            })  # fmt: skip
    return train, held
