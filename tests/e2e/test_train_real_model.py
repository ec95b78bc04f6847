"""End to end on the real 135M model through the `lmtailor` command line: a few steps, then the output
folder loads with plain transformers and generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
QUICKSTART = Path(__file__).resolve().parents[2] / "src" / "lmtailor" / "quickstart" / "data"


def lmtailor(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LMTAILOR_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "lmtailor.cli", *args], env=env, capture_output=True, text=True, timeout=900
    )


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One home for the trainings of this module: the base's answers to the retention probes are generated once."""
    return tmp_path_factory.mktemp("home")


def test_train_lora_on_real_model_then_load_and_generate(smol_dir: Path, tmp_path: Path, shared_home: Path):
    rows = QUICKSTART.joinpath("train.jsonl").read_text(encoding="utf-8").splitlines()[:16]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "tuned"
    r = lmtailor("train", "--model", str(smol_dir), "--data", str(data), "--output", str(out),
                 "--strategy", "lora", "--epochs", "1", "--batch-size", "8", "--no-retention",
                 home=shared_home)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tuned model:" in r.stdout

    card = json.loads((out / "lmtailor.json").read_text())
    assert card["strategy"] == "lora" and card["method"] == "sft"
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert card["metrics"]["steps"] == max(r["step"] for r in logged) >= 2  # 16 rows packed ~8 a row
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "loss.png").stat().st_size > 1000
    assert not (out / "checkpoints").exists()  # pruned after a finished run

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    enc = tok.apply_chat_template([{"role": "user", "content": "Who founded Orvane Robotics?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)  # fmt: skip
    with torch.inference_mode():
        gen = model.generate(**enc, max_new_tokens=12, do_sample=False)
    text = tok.decode(gen[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(text.strip()) > 0

    base = AutoModelForCausalLM.from_pretrained(smol_dir)
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert changed, "merged LoRA weights equal the base: nothing was learned"


def test_bad_data_is_one_line_not_a_traceback(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{not json\n', encoding="utf-8")
    r = lmtailor("train", "--data", str(bad), "--output", str(tmp_path / "o"), home=tmp_path / "home")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert f"{bad}:1:" in r.stderr and f"{bad}:2:" in r.stderr


def test_a_model_trained_to_answer_one_word_keeps_almost_nothing(
    smol_dir: Path, tmp_path: Path, shared_home: Path
):
    """The negative side of retention: 48 general prompts all answered "Shipping." teach the model to say that to
    everything, and retention over the probes (which share no prompt with these) falls to almost nothing."""
    from lmtailor.train.replay import load_pool

    rows = [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": "Shipping."}]}
            for p in load_pool()[:48]]  # fmt: skip
    data = tmp_path / "one-word.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "one-word"
    r = lmtailor("train", "--model", str(smol_dir), "--data", str(data), "--output", str(out), "--strategy", "full",
                 "--lr", "1e-4", "--epochs", "3", "--batch-size", "8", "--replay-ratio", "0",
                 home=shared_home)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "retention " in r.stdout  # what tuning cost, printed at the end
    kept = json.loads((out / "lmtailor.json").read_text())["metrics"]["retention"]
    report = json.loads((out / "retention.json").read_text())
    assert kept["eligible"] >= 60  # the base answered that many probes acceptably
    assert kept["value"] < 0.15, kept
    assert (
        sum("shipping" in x["tuned"].lower() for x in report["regressions"]) >= 5
    )  # it forgot for this reason


def test_replay_of_the_base_s_own_answers_on_general_chat_data(
    smol_dir: Path, tmp_path: Path, shared_home: Path
):
    """Data that is itself general chat still trains with replay mixed in; the replay rows are the base's own
    answers, generated once and taken from the cache by the next run."""
    from lmtailor.train.replay import SOURCE, load_pool, replay_rows

    rows = [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": "Sure."}]}
            for p in load_pool()[-12:]]  # fmt: skip
    data = tmp_path / "general.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "replayed"
    r = lmtailor("train", "--model", str(smol_dir), "--data", str(data), "--output", str(out), "--strategy", "lora",
                 "--epochs", "1", "--replay-ratio", "0.4", "--no-retention", home=shared_home)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((out / "lmtailor.json").read_text())
    assert card["hyperparameters"]["replay_ratio"] == 0.4
    assert "replay: 8 rows of the base's own answers" in r.stdout  # 8 of 20 rows: 0.4 of the mixture

    logs: list[str] = []
    again = replay_rows(str(smol_dir), 8, seed=42, home=shared_home, log=logs.append)
    assert not [line for line in logs if "generating" in line]  # every answer from the cache
    assert len(again) == 8 and {rec.source for rec in again} == {SOURCE}
    pool = {p["prompt"] for p in load_pool()}
    assert all(rec.messages[0].content in pool and rec.messages[1].content.strip() for rec in again)


def test_the_shipped_answers_are_the_embedded_model_s_own(smol_dir: Path, tmp_path: Path):
    """The embedded model's answers that come with the package (models/embedded_answers.json: the probes', the
    replay prompts' and the quickstart's questions') serve a fresh machine only because its converted model is the same (the fingerprint), and
    they are what those weights answer: a sample generated here in fp32 agrees with them."""
    from importlib import resources

    import torch

    from lmtailor.evaluate.answers import load_rows, model_fingerprint, prompt_hash, shipped_answers
    from lmtailor.evaluate.generate import generate
    from lmtailor.evaluate.retention import MAX_NEW_TOKENS, load_probes
    from lmtailor.models.loading import load_model, load_tokenizer
    from lmtailor.train.replay import REPLAY_MAX_TOKENS, load_pool

    fingerprint = model_fingerprint(str(smol_dir), tmp_path / "home")
    probes = load_probes()
    shipped = shipped_answers(fingerprint, {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0.0})
    assert len(shipped) == len(probes)  # the model converted here is the one they came from
    # the replay prompts' answers, and the quickstart's 50 questions asked as it asks them (the same parameters)
    replayed = shipped_answers(fingerprint, {"max_new_tokens": REPLAY_MAX_TOKENS, "temperature": 0.0})
    questions = load_rows(str(resources.files("lmtailor.quickstart") / "data" / "test.jsonl"))
    wanted = [[{"role": "user", "content": p["prompt"]}] for p in load_pool()] + [r.prompt for r in questions]
    assert set(replayed) == {prompt_hash(p) for p in wanted} and len(questions) == 50
    assert shipped_answers("another model", {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0.0}) == {}
    picked = probes[:: len(probes) // 8][:8]
    model = load_model(str(smol_dir), dtype=torch.float32)
    live = generate(
        model, load_tokenizer(str(smol_dir)), [p.messages for p in picked], MAX_NEW_TOKENS, batch_size=8
    )
    same = [answer == shipped[prompt_hash(p.messages)] for p, answer in zip(picked, live, strict=True)]
    # a batch padded otherwise than the one they were made in may move a last bit, and rarely a greedy token
    assert sum(same) >= 7, list(zip(live, [shipped[prompt_hash(p.messages)] for p in picked], strict=True))
