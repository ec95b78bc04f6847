"""Record the embedded model's real replies to synth's prompts into tests/unit/data/synth_replies_smollm2.json.

The parser tests read these: loops, copies of the prompt's example, half-JSON, Q/A lines, mixed languages.
Replies recorded under other prompt versions (older prompt variants) are kept; the current ones are made anew.
Run: .venv/bin/python scripts/record_synth_replies.py   (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from lmtailor.data.documents import chunk_documents, token_counter
from lmtailor.specs import SynthSpec
from lmtailor.synth import PROMPT_VERSION, Generator, _messages

OUT = Path(__file__).resolve().parents[1] / "tests" / "unit" / "data" / "synth_replies_smollm2.json"
DOC_EN = """# The Lighthouse of Brackenholt

## History
The lighthouse of Brackenholt was built in 1871 by the engineer Martha Quill. It stands 42 metres tall on the northern cliff. The light was first lit on 3 May 1872.

## Operation
The lamp was powered by paraffin until 1936, when it was converted to electricity. The last keeper, Owen Dale, left in 1989, when the light became automatic.
"""
DOC_ZH = "布拉肯霍尔特灯塔建于1871年，由工程师玛莎·奎尔设计。灯塔高42米，位于北部悬崖上。1936年，灯塔由煤油照明改为电力照明。最后一位守塔人欧文·戴尔于1989年离开。\n"
QUESTIONS = [("en", "When was the lighthouse of Brackenholt built?"), ("en", "Who was the last keeper of the lighthouse?"),
             ("zh", "布拉肯霍尔特灯塔是哪一年建成的？")]  # fmt: skip


def main() -> None:
    folder = Path(tempfile.mkdtemp())
    (folder / "doc_en.md").write_text(DOC_EN, encoding="utf-8")
    (folder / "doc_zh.txt").write_text(DOC_ZH, encoding="utf-8")
    spec = SynthSpec(docs=[str(folder)], generator="smollm2-135m-instruct")
    gen = Generator(spec.generator, spec, None, print)
    gen.load()
    chunks = chunk_documents(spec.docs, token_counter(gen.tokenizer), 300, 40)
    kept = json.loads(OUT.read_text(encoding="utf-8"))["replies"] if OUT.exists() else []
    replies = [r for r in kept if r["prompt_version"] != PROMPT_VERSION]
    langs = ["zh" if c.document.endswith(".txt") else "en" for c in chunks]
    for kind in ("pairs", "pairs_lines"):
        for temp in (0.0, 0.7):
            prompts = [
                _messages(lang, kind, text=c.context, k=3) for lang, c in zip(langs, chunks, strict=True)
            ]
            for lang, c, r in zip(langs, chunks, gen.ask(prompts, temp, 400), strict=True):
                replies.append({"prompt": kind, "prompt_version": PROMPT_VERSION, "lang": lang, "temperature": temp,
                                "chunk": c.text, "reply": r})  # fmt: skip
    for temp in (0.0, 0.7):
        prompts = [_messages(lang, "paraphrase", question=q, p=3) for lang, q in QUESTIONS]
        for (lang, q), r in zip(QUESTIONS, gen.ask(prompts, temp, 200), strict=True):
            replies.append({"prompt": "paraphrase", "prompt_version": PROMPT_VERSION, "lang": lang,
                            "temperature": temp, "question": q, "reply": r})  # fmt: skip
    model = "SmolLM2-135M-Instruct (Q4_1 GGUF, embedded), max 400 new tokens, seed 0"
    OUT.write_text(
        json.dumps({"model": model, "replies": replies}, ensure_ascii=False, indent=1), encoding="utf-8"
    )
    print(f"{len(replies)} replies -> {OUT}")


if __name__ == "__main__":
    main()
