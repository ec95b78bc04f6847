"""Replay: keep what the base model knew by training on its own answers to general prompts (self-distillation).

    pool    = load_pool()                            data/replay/prompts.jsonl: varied general prompts (English and
                                                     Chinese), none of them a probe of evaluate/retention.py, nor a
                                                     near copy of one (tests/unit/test_probe_sets.py)
    picked  = a seeded draw of as many as the ratio asks for
    answers = answer_prompts(base, picked)           greedy, through eval's answer cache: each prompt is answered
                                                     once per base model, and a later run reuses it
    rows    = [user prompt -> base answer]           answers cut at the token limit, or empty, are left out

The rows are the base's own words, so training on them pulls the tuned model back towards what the base did on
general prompts (as in "Self-Distillation Bridges Distribution Gap in Language Model Fine-Tuning", Yang et al.
2024, and plain replay of general data) without downloading anything. The retention probes never appear here, so
retention measures what replay kept on prompts it never trained.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from importlib import resources

from lmtailor.data.records import Message, Record
from lmtailor.errors import LmtailorError

REPLAY_MAX_TOKENS = 96  # longer answers are left out rather than trained cut off
SOURCE = "replay"


def load_pool() -> list[dict]:
    text = (resources.files("lmtailor.data.replay") / "prompts.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def replay_count(ratio: float, user_rows: int) -> int:
    """Replay rows that make `ratio` of the mixture with `user_rows` rows of the user's: r / (1 - r) of them."""
    if ratio <= 0:
        return 0
    return max(1, round(user_rows * ratio / (1 - ratio)))


def replay_rows(
    base: str,
    n: int,
    seed: int,
    home=None,
    log: Callable[[str], None] = print,
    trust_remote_code: bool = False,
) -> list[Record]:
    """`n` replay rows: pool prompts drawn with `seed` (the pool again, reshuffled, when n exceeds it), each with
    the base model's own greedy answer. Raises LmtailorError for a base without a chat template."""
    from lmtailor.evaluate.answers import answer_prompts
    from lmtailor.evaluate.retention import own_template
    from lmtailor.evaluate.spec import EvalSpec
    from lmtailor.models.loading import load_tokenizer

    if n <= 0:
        return []
    tok = load_tokenizer(base, home, trust_remote_code=trust_remote_code)  # the check's, and the lengths'
    if not own_template(tok):
        raise LmtailorError(
            f"replay: {base} has no chat template, so it cannot answer the replay prompts as a chat model; "
            "train with --replay-ratio 0 (or give it a tokenizer with a chat template)"
        )
    pool = load_pool()
    order = random.Random(seed).sample(range(len(pool)), len(pool))
    spec = EvalSpec(models=[base], data="replay", batch_size=32, trust_remote_code=trust_remote_code)
    params = {"max_new_tokens": REPLAY_MAX_TOKENS, "temperature": 0.0}
    texts: dict[int, str] = {}
    usable: list[int] = []
    # only as many prompts as needed, a quarter more for misses; a base whose answers mostly run past the limit
    # is not asked the whole pool: after four times what was needed, what it gave is used (each row repeated)
    budget = min(len(pool), 4 * n + 32)
    while len(usable) < n and len(texts) < budget:
        more = order[len(texts) : len(texts) + max(8, round((n - len(usable)) * 1.25))]
        got = answer_prompts(base, [[{"role": "user", "content": pool[i]["prompt"]}] for i in more], params, spec,
                             home, log, what="replay answers (cached for later runs)")  # fmt: skip
        texts.update(zip(more, got.texts, strict=True))
        usable += [i for i in more if _finished(texts[i], tok)]
    if not usable:
        raise LmtailorError(
            f"replay: {base} gave no usable answer to the replay prompts (all empty or cut off)"
        )
    picked = [usable[k % len(usable)] for k in range(n)]
    if n > len(usable):
        log(
            f"replay: {n} rows from {len(usable)} usable answers (each used up to {-(-n // len(usable))} times)"
        )
    return [
        Record([Message("user", pool[i]["prompt"]), Message("assistant", texts[i])], source=SOURCE,
               extra={"source": SOURCE, "replay_id": pool[i]["id"]})
        for i in picked
    ]  # fmt: skip


def _finished(answer: str, tok) -> bool:
    """Not empty, and ended before the token limit (a cut-off answer would teach stopping mid-sentence)."""
    if not answer.strip():
        return False
    return len(tok(answer, add_special_tokens=False)["input_ids"]) < REPLAY_MAX_TOKENS - 1
