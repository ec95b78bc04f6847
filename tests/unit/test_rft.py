"""method: reinforcement — TRL's GRPOTrainer rewarded by an OpenAI grader, a few steps on a tiny model:
rewards come from the grader (train and validation logged), the adapters move, bad rows are named."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from lmtailor.errors import DataError, SpecError
from lmtailor.specs import TrainSpec
from lmtailor.train.rft import load_prompts, reward_function
from lmtailor.train.sft import run_sft

# the reward: the share of the answer's characters that are the letter "a" (every answer gets a graded number)
GRADER = {"type": "python", "name": "a-ness",
          "source": "def grade(sample, item):\n    t = sample['output_text']\n"
                    "    return t.count(item['letter']) / max(1, len(t))\n"}  # fmt: skip


def rows_file(path, n=8):
    rows = [
        {"messages": [{"role": "user", "content": f"Say something, number {i}."}], "letter": "a"}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_rows_and_the_reward_function(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}], "letter": "a"}) + "\n"
                   + json.dumps({"messages": [{"role": "assistant", "content": "a"}]}) + "\n"
                   + json.dumps({"prompt": "q"}) + "\n", encoding="utf-8")  # fmt: skip
    with pytest.raises(DataError) as e:
        load_prompts(bad)
    assert "bad.jsonl:2: the messages must end with a user turn" in str(
        e.value
    ) and "bad.jsonl:3: no messages" in str(e.value)
    reward = reward_function(GRADER)
    got = reward(prompts=[[], []], completions=[[{"role": "assistant", "content": "aaab"}], "bbbb"],
                 item=[json.dumps({"letter": "a"}), json.dumps({"letter": "a"})])  # fmt: skip
    assert got == [0.75, 0.0]


def test_reinforcement_a_few_steps_through_lmtailor_train(tiny_llama_dir, tmp_path, sft_card):
    import yaml
    from typer.testing import CliRunner

    from lmtailor.cli import app

    fields = dict(model=str(tiny_llama_dir), data=str(rows_file(tmp_path / "rl.jsonl")), output=str(tmp_path / "rl"),
                  method="reinforcement", grader=GRADER, strategy="lora", lora_r=4, epochs=1, batch_size=2,
                  num_generations=2, max_completion_length=8, learning_rate=1e-2, val_ratio=0.25,
                  eval_steps=2, precision="fp32")  # fmt: skip
    (tmp_path / "rft.yaml").write_text(yaml.safe_dump(fields), encoding="utf-8")
    result = CliRunner().invoke(app, ["train", str(tmp_path / "rft.yaml"), "--home", str(tmp_path / "home")])
    assert result.exit_code == 0, result.output
    out = tmp_path / "rl"
    spec = TrainSpec(**fields)
    card = json.loads((out / "lmtailor.json").read_text(encoding="utf-8"))
    assert card["method"] == "reinforcement" and card["hyperparameters"]["num_generations"] == 2
    assert set(card) == set(sft_card) and set(card["hyperparameters"]) == set(sft_card["hyperparameters"])
    assert (out / "loss.png").stat().st_size > 0
    logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train = [r for r in logs if "reward" in r]
    evals = [r for r in logs if "eval_reward" in r]
    assert train and evals and all(0 <= r["reward"] <= 1 for r in train)
    assert any("rewards/grader_reward/mean" in r for r in train)  # the grader is TRL's reward function
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    with pytest.raises(SpecError, match="grader.operation"):
        run_sft(spec.model_copy(update={"grader": {"type": "string_check", "name": "s", "input": "x",
                                                   "reference": "y", "operation": "regex"}}),
                home=tmp_path / "home", progress=False, log=lambda line: None)  # fmt: skip


def test_a_hostile_grader_in_a_reinforcement_run_sees_nothing_of_the_host(
    tiny_llama_dir, tmp_path, monkeypatch
):
    """A reinforcement run whose python grader reads, for every answer, a file of the lmtailor home and
    /etc/passwd: through GRPO's reward function, grade and the sandbox, it finds neither (0.25 says so, 1.0
    would say it read one, 0.0 that it failed). The negative control: the same reward unsandboxed reads them."""
    from lmtailor.graders import sandbox

    assert sandbox.unavailable() is None, sandbox.unavailable()  # make test installs bubblewrap
    home = tmp_path / "home"
    home.mkdir()
    (home / "jobs.db").write_text("the job store")
    monkeypatch.setenv("LMTAILOR_HOME", str(home))
    paths = [str(home / "jobs.db"), "/etc/passwd"]
    grader = {"type": "python", "name": "snoop",
              "source": "def grade(sample, item):\n    for path in item['paths']:\n        try:\n"
                        "            if open(path).read():\n                return 1.0\n        except OSError:\n"
                        "            pass\n    return 0.25\n"}  # fmt: skip
    data = tmp_path / "rl.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Say {i}."}], "paths": paths})
                            + "\n" for i in range(4)), encoding="utf-8")  # fmt: skip
    spec = TrainSpec(model=str(tiny_llama_dir), data=str(data), output=str(tmp_path / "rl"), method="reinforcement",
                     grader=grader, strategy="lora", lora_r=4, epochs=1, batch_size=2, num_generations=2,
                     max_completion_length=4, val_ratio=0.25, eval_steps=1, precision="fp32",
                     retention=False)  # fmt: skip
    run_sft(spec, home=home, progress=False, log=lambda line: None)
    logs = [
        json.loads(x) for x in (tmp_path / "rl" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    rewards = [r[k] for r in logs for k in ("reward", "eval_reward") if k in r]
    assert rewards and all(r == 0.25 for r in rewards), rewards

    monkeypatch.setenv(
        sandbox.BWRAP_ENV, "/nonexistent/bwrap"
    )  # no sandbox: a CLI run's grader is the user's
    monkeypatch.delenv(sandbox.TRUST_ENV, raising=False)
    sandbox.unavailable.cache_clear()
    try:
        unsandboxed = reward_function(grader)(
            prompts=[[]], completions=["x"], item=[json.dumps({"paths": paths})]
        )
        assert unsandboxed == [1.0]
    finally:
        monkeypatch.undo()
        sandbox.unavailable.cache_clear()
