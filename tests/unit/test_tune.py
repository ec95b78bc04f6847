"""`lmtailor tune`: the search over strategy and hyperparameters (tune/search.py), on the tiny random models."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmtailor.data.records import Message, Record
from lmtailor.data.split import held_out_phrasings
from lmtailor.specs import TrainSpec, TuneSpec

FACTS = [(f"robot {i}", f"Robot {i} works in hall {i}.") for i in range(8)]
WORDINGS = ("Where does {} work?", "Which hall is {} in?", "Tell me where {} works.")


def facts_file(path: Path) -> Path:
    """8 facts, each asked in three wordings: 24 rows whose answers repeat by threes."""
    rows = [
        {"messages": [{"role": "user", "content": w.format(who)}, {"role": "assistant", "content": answer}]}
        for who, answer in FACTS
        for w in WORDINGS
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def qa(question: str, answer: str) -> Record:
    return Record([Message("user", question), Message("assistant", answer)], "d.jsonl", 1)


def tune_spec(tiny_llama_dir: Path, tmp_path: Path, **fields) -> TuneSpec:
    fields.setdefault("trials", 2)
    return TuneSpec(model=str(tiny_llama_dir), data=str(facts_file(tmp_path / "facts.jsonl")),
                    output=str(tmp_path / "search"), retention=False, seed=0, **fields)  # fmt: skip


def test_held_out_phrasings_keep_every_validation_answer_trained_in_other_words() -> None:
    alone = qa("Alone?", "Only here.")
    rows = [qa(w.format(who), answer) for who, answer in FACTS for w in WORDINGS] + [alone]
    answers = [r.messages[1].content for r in rows]
    train, val, how = held_out_phrasings(rows, answers, 0.25, seed=3)
    assert how.startswith("held-out phrasings") and len(val) == round(0.25 * len(rows))
    trained = {r.messages[1].content for r in train}
    assert all(r.messages[1].content in trained for r in val)  # each answer trained under another wording
    assert "Only here." in trained  # an answer given once stays in training
    assert len(train) + len(val) == len(rows)
    assert {r.messages[0].content for r in val}.isdisjoint(r.messages[0].content for r in train)
    # answers worded anew with each question (as in the quickstart): the rows' `fact` key groups them
    worded = [Record(qa(w.format(who), f"{answer} ({j})").messages, "d.jsonl", 1, {"fact": who})
              for who, answer in FACTS for j, w in enumerate(WORDINGS)]  # fmt: skip
    train, val, how = held_out_phrasings(worded, [r.messages[1].content for r in worded], 0.25, seed=3)
    assert how.startswith("held-out phrasings") and len(val) == 6
    assert {r.extra["fact"] for r in val} <= {r.extra["fact"] for r in train}
    # labels: each one held out in its share and kept in training
    labels = [qa(f"ticket {i}", ["billing", "shipping", "refund"][i % 3]) for i in range(30)]
    train, val, how = held_out_phrasings(labels, [r.messages[1].content for r in labels], 0.2, labels=True)
    assert how.startswith("stratified") and sorted(r.messages[1].content for r in val) == sorted(
        ["billing", "shipping", "refund"] * 2
    )
    # no answer repeats: a seeded random split, said so
    plain = [qa(f"q{i}", f"a{i}") for i in range(10)]
    train, val, how = held_out_phrasings(plain, [f"a{i}" for i in range(10)], 0.2)
    assert how.startswith("random") and len(val) == 2


def test_trial_0_is_the_default_rule_and_only_the_best_model_is_kept(tiny_llama_dir, tmp_path: Path) -> None:
    from lmtailor.train.sft import run_sft
    from lmtailor.tune.search import run_tune

    logs: list[str] = []
    spec = tune_spec(tiny_llama_dir, tmp_path)
    record = run_tune(spec, home=tmp_path / "home", log=logs.append)
    out = Path(spec.output)
    first = record["trials"][0]
    assert first["default"] and first["state"] == "complete" and record["default"]["number"] == 0
    assert record["metric"] == "contains" and record["split"].startswith("held-out phrasings")
    # the rule itself, trained on the same split: the same choices as trial 0
    plain = run_sft(TrainSpec(model=str(tiny_llama_dir), data=str(out / "train.jsonl"), val_data=str(out / "val.jsonl"),
                              output=str(tmp_path / "plain"), seed=0, eval_metrics=["contains"], best_metric="contains",
                              keep_best=True, retention=False), home=tmp_path / "home", progress=False,
                    log=lambda *_: None)  # fmt: skip
    chosen = json.loads((plain / "lmtailor.json").read_text())["hyperparameters"]
    assert {k: first["chosen"][k] for k in ("strategy", "learning_rate", "epochs", "batch_size")} == {
        k: chosen[k] for k in ("strategy", "learning_rate", "epochs", "batch_size")
    }
    assert len(record["trials"]) == 2 and record["stopped_by"] == "trials"
    # where the rule's replay fell back, the search draws none (a base that cannot replay: the API test's)
    assert bool(record["no_replay"]) == (not first["chosen"]["replay_ratio"])
    assert (out / "model" / "lmtailor.json").exists()
    assert not list((out / "trials").glob("*"))  # the best model only, moved: one model on disk
    assert json.loads((out / "tune.json").read_text())["best"]["number"] == record["best"]["number"]
    report = (out / "report.md").read_text()
    assert "| 0 (default) |" in report and "| 1 |" in report
    assert "<table>" in (out / "report.html").read_text()
    assert any(line.startswith("trial 0 (the default rule): contains ") for line in logs)


def test_pruned_trials_are_recorded_as_pruned_and_leave_no_model(tiny_llama_dir, tmp_path: Path) -> None:
    import optuna

    from lmtailor.tune.search import run_tune

    class AllButTheFirst(optuna.pruners.BasePruner):  # a real pruner: Optuna asks it at each report
        def prune(self, study, trial) -> bool:
            return trial.number > 0

    spec = tune_spec(tiny_llama_dir, tmp_path, trials=3)
    record = run_tune(spec, home=tmp_path / "home", log=lambda *_: None, pruner=AllButTheFirst())
    states = [(t["number"], t["state"], t["stopped"]) for t in record["trials"]]
    assert states == [(0, "complete", None), (1, "pruned", "pruned"), (2, "pruned", "pruned")]
    assert record["best"]["number"] == 0 and "| pruned |" in (Path(spec.output) / "report.md").read_text()


def test_the_budget_stops_the_search_and_says_so(tiny_llama_dir, tmp_path: Path) -> None:
    from lmtailor.errors import LmtailorError
    from lmtailor.tune.search import run_tune

    spec = tune_spec(tiny_llama_dir, tmp_path, trials=None, budget=0.5)  # less than one step's worth
    with pytest.raises(LmtailorError, match=r"no trial finished \(stopped by the budget\)") as e:
        run_tune(spec, home=tmp_path / "home", log=lambda *_: None)
    assert "\n" not in str(e.value)
    import optuna

    study = optuna.load_study(
        study_name="lmtailor-tune", storage=f"sqlite:///{Path(spec.output) / 'study.db'}"
    )
    assert [(t.state.name, t.user_attrs.get("stopped")) for t in study.trials] == [("PRUNED", "budget")]
    assert study.user_attrs["spent_s"] >= 0.5
    # continued: the time already spent counts, so no trial starts
    with pytest.raises(LmtailorError, match=r"no trial finished \(stopped by the budget\)"):
        run_tune(spec, home=tmp_path / "home", log=lambda *_: None)
    assert len(optuna.load_study(study_name="lmtailor-tune", storage=study._storage).trials) == 1
    # continued with other settings: refused in a line, before anything runs
    with pytest.raises(LmtailorError, match=r"holds a search with seed 0: continue it with the same") as e:
        run_tune(spec.model_copy(update={"seed": 1}), home=tmp_path / "home", log=lambda *_: None)
    assert "\n" not in str(e.value)


def test_a_killed_search_resumes_without_repeating_finished_trials(tiny_llama_dir, tmp_path: Path) -> None:
    import optuna

    out, home = tmp_path / "search", tmp_path / "home"
    cmd = [sys.executable, "-c", "from lmtailor.cli import app; app()", "tune", "--model", str(tiny_llama_dir),
           "--data", str(facts_file(tmp_path / "facts.jsonl")), "--trials", "3", "--no-retention", "--seed", "0",
           "-o", str(out), "--home", str(home)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    storage = f"sqlite:///{out / 'study.db'}"
    deadline = time.time() + 300
    while not (out / "logs" / "001.log").exists():  # trial 0 told complete, trial 1 started
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)  # trial 1 is running: its log is opened as it starts
    proc.wait()
    before = optuna.load_study(study_name="lmtailor-tune", storage=storage).trials
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]
    finished = before[0].datetime_complete
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    trials = optuna.load_study(study_name="lmtailor-tune", storage=storage).trials
    assert trials[0].state.name == "COMPLETE" and trials[0].datetime_complete == finished  # not trained again
    assert trials[1].state.name == "FAIL"  # the one the kill cut short, run again with its parameters
    retry = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert len(retry) == 1 and retry[0].params == trials[1].params
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3
    assert trials[3].params != trials[1].params  # the resumed session draws on, not the same draws again
    record = json.loads((out / "tune.json").read_text())
    assert (out / "model" / "lmtailor.json").exists() and record["best"]["state"] == "complete"


def test_a_winner_keeps_the_retention_floor() -> None:
    import optuna

    from lmtailor.tune.search import best_trial

    study = optuna.create_study(direction="maximize")
    for value, constraint in ((0.5, 0.0), (0.9, 0.2), (0.6, -0.1)):  # the 0.9 keeps 20 points under the floor
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"constraint": constraint}))
    assert best_trial(study).value == 0.6


def test_bad_search_values_are_one_line_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lmtailor.cli import app

    data = facts_file(tmp_path / "facts.jsonl")
    for flags, said in (
        (["--metric", "nope"], "unknown metric 'nope'"),
        (["--metric", "perplexity"], "unknown metric 'perplexity'"),
        (["--budget", "soon"], "'soon' is not a duration"),
        (["--budget", "0"], "budget: Input should be greater than 0"),
        (["--trials", "0"], "trials: Input should be greater than or equal to 1"),
        (["--strategy", "dora"], "strategies.0"),
    ):
        got = CliRunner().invoke(app, ["tune", "--data", str(data), "-o", str(tmp_path / "s"), *flags])
        assert got.exit_code == 1 and said in got.output and len(got.output.strip().splitlines()) == 1, (
            got.output
        )
    got = CliRunner().invoke(app, ["tune", "--data", str(data)])
    assert got.exit_code == 1 and "output" in got.output


def test_trials_that_cannot_train_fail_with_their_error_and_three_in_a_row_stop_the_search(
    tokenizer, tmp_path
):
    """A model without `mlp` modules (OPT's are fc1 / fc2): every trial of the MLP blocks is refused by the strategy,
    each recorded as failed with that error; the search stops after three in a row, says why, and keeps the best
    trial so far (trial 0, the rule's LoRA)."""
    import optuna
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    from lmtailor.tune.search import run_tune

    opt = tmp_path / "tiny-opt"
    config = OPTConfig(vocab_size=len(tokenizer), hidden_size=16, ffn_dim=32, num_hidden_layers=1,
                       num_attention_heads=2, max_position_embeddings=512, word_embed_proj_dim=16,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    torch.manual_seed(0)
    OPTForCausalLM(config).save_pretrained(opt)
    tokenizer.save_pretrained(opt)
    spec = TuneSpec(model=str(opt), data=str(facts_file(tmp_path / "facts.jsonl")), output=str(tmp_path / "search"),
                    strategies=["mlp"], trials=6, retention=False, seed=0)  # fmt: skip
    logs: list[str] = []
    record = run_tune(spec, home=tmp_path / "home", log=logs.append)
    assert record["stopped_by"] == "failures" and record["best"]["number"] == 0
    assert re.fullmatch(r"3 trials failed in a row, the last: .*match no parameter.*", record["failures"])
    assert any(line.startswith("search stopped: 3 trials failed in a row") for line in logs)
    study = optuna.load_study(
        study_name="lmtailor-tune", storage=f"sqlite:///{tmp_path / 'search' / 'study.db'}"
    )
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL", "FAIL", "FAIL"], states  # trial 0, the rule (LoRA), trains
    assert all("match no parameter" in t.user_attrs["error"] for t in study.trials[1:])
    # a failed trial leaves nothing on disk; the best (trial 0) is the search's model
    assert (tmp_path / "search" / "model" / "lmtailor.json").exists()
    assert not (tmp_path / "search" / "trials").exists()
