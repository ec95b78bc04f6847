"""Runs started from the CLI are in the server's store: `lmtailor train` and `lmtailor eval` in a home, then a real
server on that home (127.0.0.1), read through the official SDK, plain HTTP and headless Chromium: the tuned
model's card, loss and curve, the evaluation in the Evaluate page's list with its table."""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from lmtailor.train.callbacks import read_metrics

TUNED = "cli-tuned"
ROWS = [("What is 2 + 2?", "4."), ("Who wrote Hamlet?", "Shakespeare."), ("Name a colour.", "Red."),
        ("中国的首都是哪里？", "北京。")]  # fmt: skip


@pytest.fixture(scope="module")
def runs(lively_llama_dir, tmp_path_factory):
    """One CLI training run and one CLI evaluation (base vs tuned) in a fresh home."""
    from lmtailor.cli import app

    work = tmp_path_factory.mktemp("cli-runs")
    home = work / "home"
    data = work / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                            + "\n" for q, a in ROWS * 3))  # fmt: skip
    test = work / "test.jsonl"
    test.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q}], "reference": a}) + "\n"
                            for q, a in (("What is 2 + 2?", "4."), ("Who wrote Hamlet?", "Shakespeare."))))  # fmt: skip
    out = home / "models" / TUNED
    trained = CliRunner().invoke(app, ["train", "--model", str(lively_llama_dir), "--data", str(data), "-o", str(out),
                                       "--strategy", "lora", "--lora-r", "4", "--epochs", "2", "--batch-size", "2",
                                       "--precision", "fp32", "--replay-ratio", "0", "--no-retention",
                                       "--home", str(home)])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    evaluated = CliRunner().invoke(app, ["eval", "--model", str(lively_llama_dir), "--model", str(out), "--data",
                                         str(test), "--metrics", "contains", "--max-new-tokens", "4", "--no-retention",
                                         "--output", str(work / "eval"), "--home", str(home)])  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    return {"home": home, "out": out, "eval": work / "eval"}


@pytest.fixture(scope="module")
def server(runs, idle_server, lively_llama_dir):
    # the tuned folder named as `lmtailor serve --model` names one (a catalog model would be converted into this
    # fresh home when the Train page estimates its memory: seconds of work for nothing here)
    s = idle_server(runs["home"], [str(lively_llama_dir), str(runs["out"])])
    yield s
    s.stop()


def test_a_cli_training_run_has_its_card_loss_and_curve_on_the_server(runs, server):
    models = httpx.get(server.url + "/v1/lmtailor/models").json()["data"]
    tuned = next(m for m in models if m["id"] == TUNED)
    logged = [r for r in read_metrics(runs["out"] / "metrics.jsonl") if "loss" in r]
    assert tuned["kind"] == "tuned" and tuned["job"].startswith("run-")
    assert tuned["loss"] == logged[-1]["loss"] and tuned["card"]["strategy"] == "lora"
    client = server.client()
    run = client.fine_tuning.jobs.retrieve(tuned["job"])
    assert run.status == "succeeded" and run.fine_tuned_model == TUNED
    assert run.lmtailor["kind"] == "train" and run.lmtailor["options"]["door"] == "cli"
    events = client.fine_tuning.jobs.list_events(tuned["job"], limit=100).data[::-1]  # oldest first
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == [r["step"] for r in logged] and events[-1].message == "The run has successfully completed"
    assert {e.data["total_steps"] for e in events if e.type == "metrics"} == {logged[-1]["step"]}
    # OpenAI's list stays OpenAI's: a run without an uploaded training file is not a fine-tuning job there
    assert tuned["job"] not in [j.id for j in client.fine_tuning.jobs.list().data]


def test_a_cli_evaluation_is_listed_with_its_result_and_answers(runs, server):
    jobs = httpx.get(server.url + "/v1/lmtailor/jobs", params={"kind": "eval"}).json()["data"]
    assert len(jobs) == 1 and jobs[0]["lmtailor"]["options"]["door"] == "cli"
    job = httpx.get(f"{server.url}/v1/lmtailor/jobs/{jobs[0]['id']}").json()
    assert job["status"] == "succeeded"
    assert (
        json.loads((runs["eval"] / "metrics.json").read_text(encoding="utf-8"))["models"]
        == job["result"]["models"]
    )
    answers = httpx.get(f"{server.url}/v1/lmtailor/jobs/{job['id']}/predictions").json()
    assert answers["total"] == 2 and set(answers["data"][0]["answers"]) == {
        m["name"] for m in job["result"]["models"]
    }


def test_the_console_shows_the_cli_run_and_evaluation(runs, server, open_page):
    page = open_page(server.url + "/#models")
    page.locator("#models-table tbody tr", has_text=TUNED).first.click()
    page.click("#model-run")  # the run's curve on the Train page, drawn from its events
    page.locator("#mon-status.succeeded").wait_for()
    logged = [r for r in read_metrics(runs["out"] / "metrics.jsonl") if "loss" in r]
    assert page.locator("#mon-chart circle.pt[data-series=train]").count() == len(logged)
    page.goto(server.url + "/#evaluate")
    row = page.locator("#eval-history tbody tr", has_text="cli")
    row.wait_for()
    assert "test.jsonl" in row.inner_text()
    row.click()
    page.locator("#eval-result").wait_for()
    assert page.locator("#eval-table tbody tr").count() == 2
    page.locator("#eval-examples tbody tr").nth(1).wait_for()  # the answers come after the table
    assert page.locator("#eval-examples tbody tr").count() == 2
