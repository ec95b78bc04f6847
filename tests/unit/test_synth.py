"""Synthesis: parsing generator replies (recorded real ones and broken JSON), the filters, the splits, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmtailor.data.documents import Chunk
from lmtailor.specs import SynthSpec
from lmtailor.synth import (
    Pair,
    filter_pairs,
    grounding,
    parse_pairs,
    parse_paraphrases,
    parse_verdict,
    run_synth,
)

RECORDED = json.loads(
    (Path(__file__).parent / "data" / "synth_replies_smollm2.json").read_text(encoding="utf-8")
)


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    "reply, expected",
    [
        ('[{"question": "Who built it?", "answer": "Martha Quill."}]', [("Who built it?", "Martha Quill.")]),
        # chatter and a code fence around the JSON, a trailing comma
        ('Sure! Here you go:\n```json\n[{"question": "When?", "answer": "1871",},]\n```\nHope it helps.',
         [("When?", "1871")]),
        # cut off mid-list (max tokens): the whole pairs before the cut are kept
        ('[{"question": "Who?", "answer": "Owen Dale"}, {"question": "When did he le', [("Who?", "Owen Dale")]),
        # an object holding the list, other key names, a number as answer
        ('{"pairs": [{"Q": "How tall is it?", "A": 42}]}', [("How tall is it?", "42")]),
        # single quotes, unquoted keys
        ("[{question: 'Who lit it?', answer: 'The keeper'}]", [("Who lit it?", "The keeper")]),
        # lists of two strings
        ('[["灯塔有多高？", "42米。"]]', [("灯塔有多高？", "42米。")]),
        # Chinese keys
        ('[{"问题": "灯塔建于哪一年？", "答案": "1871年"}]', [("灯塔建于哪一年？", "1871年")]),
        # no JSON: Q/A lines, numbered, labels in English and Chinese
        ("1. Q: Who built it?\nA: Martha Quill.\n2. Q: When?\nA: In 1871.", [("Who built it?", "Martha Quill."),
                                                                            ("When?", "In 1871.")]),
        ("问：灯塔有多高？\n答：42米。", [("灯塔有多高？", "42米。")]),
        # nothing usable
        ("I cannot help with that.", []),
        ('[{"question": "", "answer": "x"}, {"question": "y"}, "z", 3]', []),
        ("", []),
        ("{{{{[[[[", []),
    ],
)  # fmt: skip
def test_parse_pairs(reply, expected):
    assert parse_pairs(reply) == expected


def test_parse_paraphrases_and_verdicts():
    assert parse_paraphrases('["Who constructed it?", "Question: Whose work is it?"]') == [
        "Who constructed it?",
        "Whose work is it?",
    ]
    assert parse_paraphrases("1. Who made it?\n2. Who built the tower?\nThat is all.") == [
        "Who made it?",
        "Who built the tower?",
    ]
    assert parse_paraphrases('{"paraphrases": [{"question": "谁建造了它？"}]}') == ["谁建造了它？"]
    assert parse_paraphrases("no questions here") == []
    assert [parse_verdict(r) for r in ("Yes.", "no, it is not", "是", "否。", "不是。", "不对", "对。", "maybe")] == [
        True, False, True, False, False, False, True, None,
    ]  # fmt: skip


def test_recorded_replies_of_the_embedded_model_never_break_the_parser():
    """Real replies of SmolLM2-135M to synth's prompts (recorded by scripts/record_synth_replies.py): loops,
    copies of the prompt's example, half-JSON, Q/A lines, mixed languages."""
    replies = RECORDED["replies"]
    assert len(replies) >= 20
    parsed = {}
    for r in replies:
        parse = parse_paraphrases if r["prompt"] == "paraphrase" else parse_pairs
        out = parse(r["reply"])
        assert isinstance(out, list)
        assert all(
            isinstance(x, str) and x for pair in out for x in (pair if isinstance(pair, tuple) else [pair])
        )
        parsed.setdefault(r["prompt"], []).append(out)
    # what the recordings hold: some replies give pairs, some give none, and Q/A lines are read
    pairs = [p for out in parsed["pairs"] + parsed["pairs_lines"] for p in out]
    assert pairs and any(out == [] for out in parsed["pairs"] + parsed["pairs_lines"])
    lines = [p for out in parsed["lines_no_system"] for p in out]
    assert ("What was the purpose of the last keeper of the lamp?",
            "The last keeper of the lamp was Owen Dale, who left in 1989.") in lines  # fmt: skip
    # a reply that loops on one question without answers gives nothing
    loop = next(r for r in replies if r["prompt"] == "json_no_example" and r["lang"] == "zh")
    assert parse_pairs(loop["reply"]) == []


# ------------------------------------------------------------------ filters


def _spec(**kw) -> SynthSpec:
    return SynthSpec(docs=["x.txt"], generator="g", **kw)


CHUNK = Chunk(
    "manual.txt", 0, ["Manual"], "The lighthouse was built in 1871 by Martha Quill. It is 42 metres tall.", 20
)
ZH_CHUNK = Chunk("手册.txt", 1, [], "灯塔建于1871年，由玛莎·奎尔设计，高42米。", 20)


def test_grounding_counts_the_answers_words_in_the_chunk():
    assert grounding("Martha Quill", CHUNK.text) == 1.0
    assert grounding("It was built in 1871.", CHUNK.text) == 1.0  # stop words do not count
    assert grounding("Built by Owen Dale in 1989.", CHUNK.text) == pytest.approx(
        1 / 4
    )  # built, owen, dale, 1989: "built" is in it
    assert grounding("玛莎·奎尔", ZH_CHUNK.text) == 1.0
    assert grounding("欧文·戴尔", ZH_CHUNK.text) == 0.0
    assert grounding("...", CHUNK.text) == 0.0


def test_filters_on_crafted_pairs():
    chunks = {CHUNK.id: CHUNK, ZH_CHUNK.id: ZH_CHUNK}
    pairs = [
        Pair("Who built the lighthouse?", "Martha Quill.", CHUNK.id,
             ["Who was the builder of the lighthouse?", "Question: who built the lighthouse?", "Martha Quill?",
              "Which engineer designed the lighthouse?", "Who built the lighthouse, Martha Quill?"]),
        Pair("Who built the lighthouse ?", "Martha Quill", CHUNK.id),  # near duplicate of the first
        Pair("Who keeps it?", "Owen Dale keeps it since 1871.", CHUNK.id),  # not in the chunk
        Pair("Hi?", "42 metres", CHUNK.id),  # question too short
        Pair("How tall is it?", "x" * 600, CHUNK.id),  # answer too long
        Pair("Is it tall?", "Yes.", CHUNK.id),  # no content words
        Pair("How tall is the lighthouse?", "The lighthouse is tall.", CHUNK.id),  # says nothing new
        Pair("灯塔是谁设计的？", "玛莎·奎尔。", ZH_CHUNK.id, ["谁设计了这座灯塔？"]),
    ]  # fmt: skip
    kept, dropped = filter_pairs(pairs, chunks, _spec(paraphrases=5))
    assert [(p.question, p.paraphrases) for p in kept] == [
        ("Who built the lighthouse?", ["Who was the builder of the lighthouse?",
                                       "Which engineer designed the lighthouse?"]),
        ("灯塔是谁设计的？", ["谁设计了这座灯塔？"]),
    ]  # fmt: skip
    reasons = {(d.reason, d.question) for d in dropped}
    assert reasons == {
        ("paraphrase_same_wording", "Question: who built the lighthouse?"),
        ("paraphrase_gives_answer", "Martha Quill?"),
        ("paraphrase_gives_answer", "Who built the lighthouse, Martha Quill?"),
        ("near_duplicate", "Who built the lighthouse ?"),
        ("not_grounded", "Who keeps it?"),
        ("question_too_short", "Hi?"),
        ("answer_too_long", "How tall is it?"),
        ("answer_empty", "Is it tall?"),
        ("answer_repeats_question", "How tall is the lighthouse?"),
    }
    # the reasons say why in numbers
    detail = next(d.detail for d in dropped if d.reason == "not_grounded")
    assert detail.startswith("20% of the answer's words are in the chunk")
    # grounding off keeps the invented answer; a judge's verdicts decide instead when asked for
    kept_off, _ = filter_pairs(pairs, chunks, _spec(grounding="off"))
    assert "Who keeps it?" in [p.question for p in kept_off]
    verdicts = dict.fromkeys(range(len(pairs)), True) | {0: False, 7: None}
    kept_judged, dropped_judged = filter_pairs(pairs, chunks, _spec(grounding="judge"), verdicts)
    assert [p.question for p in kept_judged] == ["Who built the lighthouse ?", "Who keeps it?"]
    assert {d.detail for d in dropped_judged if d.reason == "not_grounded"} == {
        "the judge said no", "the judge's reply was neither yes nor no",
    }  # fmt: skip


# ------------------------------------------------------------------ a whole run on a tiny model


def test_run_writes_valid_files_and_resumes(tmp_path, tiny_llama_dir, monkeypatch):
    """A tiny random model writes nothing useful: the run still ends with valid (empty) files and a report
    that counts the unreadable replies; a second run reuses every saved chunk and asks the model nothing."""
    from lmtailor import synth
    from lmtailor.data.formats import load_records

    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Tower\n\n" + " ".join(f"Fact {i}: door {i} is blue." for i in range(30)), encoding="utf-8"
    )
    spec = SynthSpec(docs=[str(doc)], generator=str(tiny_llama_dir), output=str(tmp_path / "out" / "qa.jsonl"),
                     chunk_tokens=96, chunk_overlap=16, max_new_tokens=16, retries=1, paraphrases=2)  # fmt: skip
    asked: list[int] = []
    real_ask = synth.Generator.ask

    def counting_ask(self, prompts, temperature, max_new_tokens):
        asked.append(len(prompts))
        return real_ask(self, prompts, temperature, max_new_tokens)

    monkeypatch.setattr(synth.Generator, "ask", counting_ask)
    report = run_synth(spec, log=lambda _: None)
    assert report["chunks"] >= 2 and report["documents"] == ["doc.md"]
    assert (
        sum(asked) >= report["chunks"] * 2
    )  # each chunk asked, then asked again (lines) when nothing parsed
    files = {k: Path(v) for k, v in report["files"].items()}
    assert all(p.exists() for p in files.values())
    assert json.loads(files["report"].read_text())["chunks"] == report["chunks"]
    if report["train_rows"]:  # whatever the random model wrote that passed the filters is valid chat data
        assert len(load_records(files["train"]).records) == report["train_rows"]
    asked.clear()
    again = run_synth(spec, log=lambda _: None)
    assert asked == [] and again["pairs_generated"] == report["pairs_generated"]
    # other settings are other work: nothing saved under them is reused
    run_synth(spec.model_copy(update={"pairs_per_chunk": 2}), log=lambda _: None)
    assert sum(asked) >= report["chunks"]
