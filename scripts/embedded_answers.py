"""Make src/lmtailor/models/embedded_answers.json: the embedded model's greedy answers to the bundled general
probes (evaluate/probes), replay prompts (data/replay) and the quickstart's held-out questions, shipped so that a
fresh machine's first training run (and the quickstart's first asking) reads them instead of generating them
(minutes on 2 cores: evaluate/answers.shipped_answers).

The answers go through eval's answer cache (answer_prompts), so those already in HOME's cache are reused and
only the missing are generated. fp32 only: the shipped answers are what the weights say at full precision,
the same on every machine that uses them (a CPU with bf16 would generate its own in bf16 otherwise).

    python scripts/embedded_answers.py [--home DIR]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "src" / "lmtailor" / "models" / "embedded_answers.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", default=None, help="lmtailor home whose answer cache to reuse")
    args = ap.parse_args()

    from importlib import resources

    import torch

    from lmtailor.evaluate import retention
    from lmtailor.evaluate.answers import (
        answer_prompts,
        load_rows,
        model_fingerprint,
        params_key,
        prompt_hash,
    )
    from lmtailor.evaluate.spec import EvalSpec
    from lmtailor.home import atomic_write_text
    from lmtailor.models.catalog import EMBEDDED
    from lmtailor.models.loading import best_dtype
    from lmtailor.train import replay

    if best_dtype() != torch.float32:
        raise SystemExit("run this on a CPU without bf16: the shipped answers are the fp32 model's")
    sets = {
        "general probes": (
            [p.messages for p in retention.load_probes()],
            {"max_new_tokens": retention.MAX_NEW_TOKENS, "temperature": 0.0},
            32,
        ),
        "replay answers": (
            [[{"role": "user", "content": p["prompt"]}] for p in replay.load_pool()],
            {"max_new_tokens": replay.REPLAY_MAX_TOKENS, "temperature": 0.0},
            32,
        ),
        "quickstart questions": (  # as quickstart/run.ask asks them: eval's default temperature and batch size
            [
                r.prompt
                for r in load_rows(str(resources.files("lmtailor.quickstart") / "data" / "test.jsonl"))
            ],
            {"max_new_tokens": 96, "temperature": 0.0},
            EvalSpec.model_fields["batch_size"].default,
        ),
    }
    answers: dict[str, dict[str, str]] = {}
    for what, (prompts, params, batch_size) in sets.items():
        spec = EvalSpec(models=[EMBEDDED], data=what, batch_size=batch_size)
        got = answer_prompts(EMBEDDED, prompts, params, spec, args.home, print, what=what)
        answers.setdefault(params_key(params), {}).update(
            {prompt_hash(p): t for p, t in zip(prompts, got.texts, strict=True)}
        )
    doc = {
        "model": EMBEDDED,
        "fingerprint": model_fingerprint(EMBEDDED, args.home),
        "dtype": "float32",
        "torch": torch.__version__,
        "answers": answers,
    }
    atomic_write_text(OUT, json.dumps(doc, ensure_ascii=False, indent=0, sort_keys=True) + "\n")
    print(f"{OUT}: {sum(len(a) for a in answers.values())} answers")


if __name__ == "__main__":
    main()
