"""OpenAI's files and fine-tuning jobs API through the official SDK, against a real server with a job worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

ROWS = [("What is the capital of France?", "Paris."), ("Who wrote Hamlet?", "William Shakespeare."),
        ("中国的首都是哪里？", "北京。"), ("What is the largest ocean?", "The Pacific Ocean.")] * 4  # fmt: skip


def chat_file(path: Path, rows=ROWS) -> Path:
    lines = [json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
                        ensure_ascii=False) for q, a in rows]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wait_for(client, job_id: str, statuses: tuple[str, ...], timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.status} after {timeout} s")


def wait_until(check, timeout: float = 300, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def platform(lively_llama_dir, lora_tuned_dir, tmp_path_factory, server_class):
    """A server with the job store and worker (one job at a time), serving the tiny Llama."""
    from lmtailor.platform.store import Store
    from lmtailor.platform.worker import Worker
    from lmtailor.serve.app import create_app
    from lmtailor.serve.pool import ModelPool

    home = tmp_path_factory.mktemp("platform-home")
    store = Store(home)
    worker = Worker(store, workers=1, poll=0.2)
    pool = ModelPool(
        home=home,
        models=[str(lively_llama_dir), str(lora_tuned_dir)],
        engine="transformers",
        dtype="float32",
        store=store,
    )
    server = server_class(create_app(pool, store=store, worker=worker, max_upload=1_000_000), pool)
    worker.start()
    server.store = store
    yield server
    server.stop()
    worker.stop()


def test_upload_train_poll_events_checkpoints_then_chat(platform, lively_llama_dir, tmp_path):
    client = platform.client()
    uploaded = client.files.create(file=open(chat_file(tmp_path / "train.jsonl"), "rb"), purpose="fine-tune")
    assert uploaded.object == "file" and uploaded.purpose == "fine-tune" and uploaded.bytes > 100
    assert uploaded.id in [f.id for f in client.files.list(purpose="fine-tune")]
    job = client.fine_tuning.jobs.create(
        model=lively_llama_dir.name, training_file=uploaded.id, suffix="capitals", seed=3,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 4,
                                                                         "learning_rate_multiplier": 2.0}}},
        metadata={"team": "search"}, extra_body={"lmtailor": {"strategy": "lora", "lora_r": 4, "save_steps": 4}},
    )  # fmt: skip
    assert job.status == "queued" and job.object == "fine_tuning.job"
    done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"))
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:{lively_llama_dir.name}:capitals:{job.id}"
    assert done.trained_tokens > 0 and done.hyperparameters.n_epochs == 3
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "search"})] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"team": "other"}).data == []

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=2))  # auto-paginated, 2 a page
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed" and messages[-1].startswith(
        "Created fine-tuning job"
    )
    assert len({e.id for e in events}) == len(events) > 6
    assert any(e.type == "metrics" and e.data["train_loss"] > 0 for e in events)
    kept = events[0].data["retention"]  # what tuning cost, on the final event and in the ft: model's card
    assert 0 <= kept["value"] <= 1 and kept["eligible"] > 0 and set(kept["by_category"]) <= {
        "facts", "arithmetic", "instructions", "writing"
    }  # fmt: skip
    assert any(m.startswith("What tuning cost: retention ") for m in messages)

    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number >= checkpoints[-1].step_number
    assert all(
        c.fine_tuned_model_checkpoint.startswith(done.fine_tuned_model + ":ckpt-step-") for c in checkpoints
    )

    listed = {m.id for m in client.models.list()}
    assert done.fine_tuned_model in listed and checkpoints[0].fine_tuned_model_checkpoint in listed
    hi = [{"role": "user", "content": "What is the capital of France?"}]
    tuned = client.chat.completions.create(
        model=done.fine_tuned_model, messages=hi, max_tokens=8, temperature=0
    )
    assert tuned.choices[0].message.content
    ckpt = client.chat.completions.create(model=checkpoints[-1].fine_tuned_model_checkpoint, messages=hi,
                                          max_tokens=8, temperature=0)  # fmt: skip
    assert ckpt.choices[0].message.content

    results = client.files.content(done.result_files[0]).text
    assert (
        results.splitlines()[0] == "step,train_loss,learning_rate,valid_loss,epoch"
        and len(results.splitlines()) > 2
    )


def test_bad_training_file_fails_the_job_naming_its_lines(platform, lively_llama_dir, tmp_path):
    client = platform.client()
    bad = tmp_path / "bad.jsonl"
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    )
    bad.write_text(
        good
        + "\n{not json\n"
        + good
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "x"}]})
        + "\n"
    )
    f = client.files.create(file=("bad.jsonl", bad.read_bytes()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=f.id)
    failed = wait_for(client, job.id, ("failed", "succeeded"))
    assert failed.status == "failed" and failed.error.code == "invalid_training_file"
    assert failed.error.param == "training_file"
    assert (
        f"{f.id} (bad.jsonl):2:" in failed.error.message and f"{f.id} (bad.jsonl):4:" in failed.error.message
    )
    # the same file with lmtailor's on_error "skip" trains on its good rows, as `lmtailor train --on-error skip`
    job = client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=f.id, method={"type": "supervised",
                                         "supervised": {"hyperparameters": {"n_epochs": 1}}},
                                         extra_body={"lmtailor": {"on_error": "skip", "replay_ratio": 0,
                                                                  "retention": False, "strategy": "lora"}})  # fmt: skip
    done = wait_for(client, job.id, ("failed", "succeeded"))
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Files validated: 2 training rows" in messages


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.mark.gpu
@pytest.mark.skipif(_gpus() == 0, reason="needs a GPU (on a CPU any number of processes may train)")
def test_more_processes_than_the_servers_gpus_is_a_400(platform, lively_llama_dir, tmp_path):
    client = platform.client()
    f = client.files.create(file=open(chat_file(tmp_path / "t.jsonl"), "rb"), purpose="fine-tune")
    n = _gpus() + 1
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=f.id,
                                       extra_body={"lmtailor": {"devices": n}})  # fmt: skip
    assert e.value.body["param"] == "lmtailor.devices"
    assert f"{n} training processes (lmtailor.devices {n}) need a GPU each" in e.value.body["message"]


def test_requests_the_jobs_api_refuses(platform, lively_llama_dir, tmp_path):
    client = platform.client()
    f = client.files.create(file=open(chat_file(tmp_path / "t.jsonl"), "rb"), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=f.id, method={
            "type": "reinforcement", "reinforcement": {"grader": {"type": "string_check", "name": "s", "input": "x",
                                                                  "reference": "x", "operation": "regex"}}})  # fmt: skip
    assert e.value.body["param"] == "method.reinforcement.grader.operation"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=f.id, method={"type": "supervised",
                                       "supervised": {"hyperparameters": {"beta": 0.1}}})  # fmt: skip
    assert e.value.body["param"] == "hyperparameters.beta"
    with pytest.raises(openai.NotFoundError) as e:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file="file-nope")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(
            model=lively_llama_dir.name, training_file=f.id, hyperparameters={"n_epochs": 0}
        )
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=f.id,
                                       extra_body={"lmtailor": {"lora_rank": 8}})  # fmt: skip
    assert e.value.body["param"] == "lmtailor.lora_rank"
    for seed in (-1, 2**63):  # what the trainer cannot seed with, and the store cannot hold (it was a 500)
        with pytest.raises(openai.BadRequestError) as e:
            client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=f.id, seed=seed)
        assert e.value.body["param"] == "seed"
    # an option its method cannot use: refused now, not a job that fails when it starts
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=f.id, method={"type": "dpo"},
                                       extra_body={"lmtailor": {"eval_metrics": ["contains"]}})  # fmt: skip
    said = e.value.body
    assert said["param"] == "lmtailor" and "method dpo: eval_metrics is for sft" in said["message"]
    with pytest.raises(openai.APIStatusError) as e:
        client.files.create(file=("big.jsonl", b"x" * 1_100_000), purpose="fine-tune")
    assert e.value.status_code == 413
    from lmtailor.platform.store import File

    home = Path(platform.store.home)
    for name in ("../../escaped.jsonl", "/tmp/lmtailor-absolute.jsonl"):  # names that point out of the home
        up = client.files.create(
            file=(name, chat_file(tmp_path / "rows.jsonl").read_bytes()), purpose="fine-tune"
        )
        assert up.filename == Path(name).name and not Path("/tmp/lmtailor-absolute.jsonl").exists()
        assert (
            not (home.parent.parent / "escaped.jsonl").exists()
            and not (home.parent / "escaped.jsonl").exists()
        )
        stored = home / platform.store.get(File, up.id).path
        assert stored.is_file() and stored.resolve().is_relative_to(home.resolve())
    assert client.files.delete(f.id).deleted and f.id not in [x.id for x in client.files.list()]


def _long_job(client, model: str, tmp_path: Path, name: str, epochs: int = 60):
    """32 steps an epoch, a checkpoint every 5 steps."""
    f = client.files.create(
        file=open(chat_file(tmp_path / f"{name}.jsonl", ROWS * 4), "rb"), purpose="fine-tune"
    )
    return client.fine_tuning.jobs.create(model=model, training_file=f.id,
                                          hyperparameters={"n_epochs": epochs, "batch_size": 2},
                                          extra_body={"lmtailor": {"save_steps": 5, "packing": False}})  # fmt: skip


def _steps(client, job_id: str) -> int:
    events = client.fine_tuning.jobs.list_events(job_id, limit=50).data
    return max([e.data["step"] for e in events if e.type == "metrics"] or [0])


def test_cancel_a_running_job_keeps_its_checkpoints(platform, lively_llama_dir, tmp_path):
    client = platform.client()
    job = _long_job(client, lively_llama_dir.name, tmp_path, "cancel")
    wait_until(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, what="a first checkpoint")
    client.fine_tuning.jobs.cancel(job.id)
    cancelled = wait_for(client, job.id, ("cancelled", "failed", "succeeded"), timeout=60)
    assert cancelled.status == "cancelled"
    kept = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert kept and all(Path(platform.store.home, "jobs", job.id, "model", "checkpoints",
                             f"checkpoint-{c.step_number}").is_dir() for c in kept[:1])  # fmt: skip
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


def test_pause_then_resume_continues_from_the_checkpoint(platform, lively_llama_dir, tmp_path):
    client = platform.client()
    job = _long_job(client, lively_llama_dir.name, tmp_path, "pause")
    wait_until(lambda: _steps(client, job.id) >= 3, what="training steps")
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_for(client, job.id, ("paused", "failed"), timeout=120)
    assert paused.status == "paused"
    at = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number
    time.sleep(1.5)
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"  # stays paused: nothing runs it
    client.fine_tuning.jobs.resume(job.id)
    wait_until(lambda: _steps(client, job.id) > at, what="steps after the resume")
    client.fine_tuning.jobs.cancel(job.id)  # the rest of the 60 epochs is not the point
    wait_for(client, job.id, ("cancelled",), timeout=60)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "Fine-tuning job resumed from its last checkpoint" in messages
    resumed_steps = [e.data["step"] for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)
                     if e.type == "metrics"]  # fmt: skip
    assert at in resumed_steps or min(s for s in resumed_steps if s > at) <= at + 10  # went on, not from 0


def test_a_killed_server_resumes_its_job_after_restart(lively_llama_dir, tmp_path):
    """SIGKILL the server mid-job; started again, the job resumes from its checkpoint and nothing is lost."""
    home = tmp_path / "home"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LMTAILOR_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lmtailor.cli", "serve", "--model", str(lively_llama_dir), "--port", str(port),
           "--dtype", "float32"]  # fmt: skip

    def start():
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(lambda: _healthy(port), timeout=120, what="the server")
        return proc

    server = start()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
    try:
        job = _long_job(client, lively_llama_dir.name, tmp_path, "killed", epochs=6)
        wait_until(lambda: client.fine_tuning.jobs.checkpoints.list(job.id).data, what="a checkpoint")
        before = client.fine_tuning.jobs.retrieve(job.id)
        server.send_signal(signal.SIGKILL)
        server.wait(30)
        server = start()
        done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"), timeout=600)
        assert done.status == "succeeded", done.error
        messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
        assert (
            "The server restarted during this job; the job will resume from its last checkpoint" in messages
        )
        assert "Fine-tuning job resumed from its last checkpoint" in messages
        assert job.training_file in [f.id for f in client.files.list()]
        assert done.fine_tuned_model in [m.id for m in client.models.list()]
        assert before.lmtailor["attempts"] == 1 and done.lmtailor["attempts"] == 2
        # a killed server is counted apart from the job process's deaths
        assert done.lmtailor["interruptions"] == 0 and done.lmtailor["restarts"] == 1
    finally:
        server.kill()
        server.wait(30)


def test_a_killed_job_process_starts_again_from_its_checkpoint_up_to_a_limit(
    platform, lively_llama_dir, tmp_path
):
    """SIGKILL the job's own process (as the OOM killer would): it starts again from its last checkpoint, with
    an event saying why. A process that got further (a new checkpoint) before it died may die again without end;
    the third death in a row without a new checkpoint fails the job with the reason, and `resume` starts it once
    more, from its checkpoint, to the end."""
    from lmtailor.platform.store import Job
    from lmtailor.platform.worker import MAX_ATTEMPTS

    client = platform.client()
    job = _long_job(client, lively_llama_dir.name, tmp_path, "oom", epochs=4)  # 128 steps

    def newest() -> int:
        return max([c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id).data] or [0])

    def process(after: int) -> int:  # the pid of a job process started after the one numbered `after`
        row = platform.store.get(Job, job.id)
        return row.pid if row.attempts > after and row.pid else 0

    last, kills = 0, MAX_ATTEMPTS + 1
    for n in range(1, kills + 1):
        if n <= 2:  # the first two deaths: each after a checkpoint of its own
            last = wait_until(lambda: newest() > last and newest(), what=f"a checkpoint of process {n}")  # noqa: B023
            pid = platform.store.get(Job, job.id).pid
        else:  # then deaths right at start, before the process writes anything
            pid = wait_until(lambda: process(n - 1), what=f"process {n}")  # noqa: B023
        os.kill(pid, signal.SIGKILL)
        if n < kills:
            wait_until(lambda: process(n), what=f"the restart after death {n}")  # noqa: B023
            assert platform.store.get(Job, job.id).interruptions == max(
                1, n - 1
            )  # a checkpoint between resets
    failed = wait_for(client, job.id, ("failed",), timeout=60)
    assert failed.error.code == "process_died" and "killed by SIGKILL" in failed.error.message
    assert f"{MAX_ATTEMPTS} times in a row without a new checkpoint" in failed.error.message
    assert newest() == last  # the last deaths left no checkpoint
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=1000)]
    restarted = "The job process was killed by SIGKILL (out of memory, or killed); the job will resume from its last checkpoint"
    assert messages.count(restarted) == kills - 1
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"  # the failed job, with its checkpoints
    done = wait_for(client, job.id, ("succeeded", "failed", "cancelled"), timeout=600)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model in [m.id for m in client.models.list()]
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data[::-1]  # oldest first
    resumed = max(i for i, e in enumerate(events) if e.message.startswith("Job resumed"))
    steps = [e.data["step"] for e in events[resumed:] if e.type == "metrics"]
    assert min(steps) > last  # the resumed run went on from its checkpoint, not from step 0


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_evaluation_and_merge_jobs_and_the_jobs_cli(platform, lively_llama_dir, lora_tuned_dir, tmp_path):
    from typer.testing import CliRunner

    from lmtailor.cli import app

    client = platform.client()
    rows = [{"messages": [{"role": "user", "content": q}], "reference": a} for q, a in ROWS[:4]]
    data = client.files.create(file=("test.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode()),
                               purpose="evals")  # fmt: skip
    spec = {
        "models": [lively_llama_dir.name],
        "data": data.id,
        "metrics": ["contains", "chrf"],
        "max_new_tokens": 6,
    }
    created = httpx.post(
        platform.url + "/v1/lmtailor/jobs", json={"type": "eval", "spec": spec}, timeout=30
    ).json()
    done = wait_for(client, created["id"], ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    result = httpx.get(platform.url + f"/v1/lmtailor/jobs/{created['id']}", timeout=30).json()["result"]
    assert result["data"]["rows"] == 4 and set(result["models"][0]["scores"]) == {"contains", "chrf"}
    refused = httpx.post(platform.url + "/v1/lmtailor/jobs", json={"type": "distill"}, timeout=30)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_job_type"
    # a merge job: linear with weights (1, 0) is the first model again, served under its merged: name
    merge = {
        "type": "merge",
        "suffix": "twins",
        "spec": {
            "models": [lively_llama_dir.name, lora_tuned_dir.name],
            "method": "linear",
            "weights": [1, 0],
        },
    }
    made = httpx.post(platform.url + "/v1/lmtailor/jobs", json=merge, timeout=30).json()
    merged = wait_for(client, made["id"], ("succeeded", "failed"))
    assert merged.status == "succeeded", merged.error
    assert merged.fine_tuned_model == f"merged:twins:{made['id']}"
    ask = dict(messages=[{"role": "user", "content": "Hello"}], max_tokens=6, temperature=0)
    same = client.chat.completions.create(model=lively_llama_dir.name, **ask).choices[0].message.content
    assert (
        client.chat.completions.create(model=merged.fine_tuned_model, **ask).choices[0].message.content
        == same
    )
    for bad, param in (({"models": [lively_llama_dir.name]}, "spec.models"), ({"models": ["nope", "nope"]}, "spec.models[0]"),
                       ({"models": [lively_llama_dir.name] * 2, "output": "/tmp/x"}, "spec.output")):  # fmt: skip
        r = httpx.post(platform.url + "/v1/lmtailor/jobs", json={"type": "merge", "spec": bad}, timeout=30)
        assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, r.text
    # over the API a job reads only uploaded files and cannot turn on model code or pick the key it sends
    for bad, param in (({"data": "/etc/passwd"}, "spec.data"), ({"trust_remote_code": True}, "spec.trust_remote_code"),
                       ({"api_key_env": "AWS_SECRET"}, "spec.api_key_env"), ({"models": ["openai:@x"]}, "spec.models[0]"),
                       ({"judge_model": "no-such-model", "metrics": ["judge"]}, "spec.judge_model")):  # fmt: skip
        r = httpx.post(
            platform.url + "/v1/lmtailor/jobs", json={"type": "eval", "spec": {**spec, **bad}}, timeout=30
        )
        assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, (bad, r.text)

    runner = CliRunner()
    url = ["--url", platform.url + "/v1"]
    # At 80 columns (a pipe's width for rich) a job is still one whole line: its id and its model's name are
    # what other commands take, and a table fitted to 80 columns cut them to "…"
    listed = runner.invoke(app, ["jobs", "list", *url], env={"COLUMNS": "80"})
    assert listed.exit_code == 0
    rows = {line.split()[0]: line.split() for line in listed.output.splitlines()[1:]}
    assert {created["id"], made["id"]} <= set(rows), listed.output
    assert rows[created["id"]][1:3] == ["eval", "succeeded"]
    assert rows[made["id"]][1:5] == ["merge", "succeeded", lively_llama_dir.name, merged.fine_tuned_model]
    job_id = created["id"]
    logs = runner.invoke(app, ["jobs", "logs", job_id, *url], env={"COLUMNS": "80"})
    assert logs.exit_code == 0 and "Created evaluation job" in logs.output.splitlines()[0]
    assert "Evaluation finished" in logs.output
    shown = runner.invoke(app, ["jobs", "show", job_id, *url], env={"COLUMNS": "80"})
    assert shown.exit_code == 0 and job_id in shown.output
    missing = runner.invoke(app, ["jobs", "show", "ftjob-nope", *url])
    assert missing.exit_code == 1 and "404" in missing.output


def test_a_dpo_job_through_the_sdk(platform, lively_llama_dir, tmp_path):
    """OpenAI's preference fine-tuning request: method dpo with beta; rewards logged as metrics events."""
    rows = []
    for q, good in ROWS:
        rows.append({"input": {"messages": [{"role": "user", "content": q}]},
                     "preferred_output": [{"role": "assistant", "content": good}],
                     "non_preferred_output": [{"role": "assistant", "content": "I do not know."}]})  # fmt: skip
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 2), encoding="utf-8")
    client = platform.client()
    f = client.files.create(file=open(data, "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model=lively_llama_dir.name, training_file=f.id, suffix="prefs",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2, "batch_size": 4}}},
        extra_body={"lmtailor": {"strategy": "lora", "lora_r": 4, "learning_rate": 5e-3, "val_ratio": 0.25}},
    )  # fmt: skip
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    done = wait_for(client, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert any("train_reward_accuracies" in m for m in metrics) and any(
        "valid_reward_margins" in m for m in metrics
    )
    answer = client.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=4)  # fmt: skip
    assert answer.choices[0].message.content is not None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"}) + "\n", encoding="utf-8")
    fb = client.files.create(file=open(bad, "rb"), purpose="fine-tune")
    failed = wait_for(client, client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=fb.id,
                                                             method={"type": "dpo"}).id, ("succeeded", "failed"))  # fmt: skip
    assert failed.status == "failed" and failed.error.code == "invalid_training_file"
    assert f"{fb.id} (bad.jsonl):1: chosen and rejected are the same" in failed.error.message


def test_a_reinforcement_job_with_a_grader(platform, lively_llama_dir, tmp_path):
    """OpenAI's reinforcement request as written for OpenAI: a grader and its hyperparameters; the grader's
    rewards come back as metrics events."""
    rows = [{"messages": [{"role": "user", "content": q}], "reference_answer": a} for q, a in ROWS]
    data = tmp_path / "rl.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    client = platform.client()
    f = client.files.create(file=open(data, "rb"), purpose="fine-tune")
    grader = {"type": "text_similarity", "name": "close", "input": "{{ sample.output_text }}",
              "reference": "{{ item.reference_answer }}", "evaluation_metric": "fuzzy_match"}  # fmt: skip
    job = client.fine_tuning.jobs.create(
        model=lively_llama_dir.name, training_file=f.id,
        method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {
            "n_epochs": 1, "batch_size": 2, "compute_multiplier": 0.5, "eval_interval": 1, "eval_samples": 2}}},
        extra_body={"lmtailor": {"strategy": "lora", "lora_r": 4, "learning_rate": 1e-2, "val_ratio": 0.25,
                                 "max_completion_length": 8}},
    )  # fmt: skip
    assert job.method.type == "reinforcement"
    done = wait_for(client, job.id, ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    metrics = [e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]
    assert any("train_reward" in m for m in metrics) and any("valid_reward" in m for m in metrics)
    assert all(0 <= m["train_reward"] <= 1 for m in metrics if "train_reward" in m)


def test_a_synth_job_turns_uploaded_documents_into_files(platform, lively_llama_dir, tmp_path):
    """Uploaded documents + a served model as generator -> a job whose result files are the training set, the
    held-out paraphrases and the report (a random tiny model writes little worth keeping: the files are
    still valid and the report counts why)."""
    client = platform.client()
    md = "# Tower\n\n## Doors\n\n" + " ".join(f"Door {i} of the tower is painted blue." for i in range(12))
    zh = "".join(f"塔的第{i}扇门漆成蓝色。" for i in range(12))
    docs = [client.files.create(file=("tower.md", md.encode()), purpose="user_data"),
            client.files.create(file=("塔.txt", zh.encode()), purpose="user_data")]  # fmt: skip
    spec = {"docs": [d.id for d in docs], "generator": lively_llama_dir.name, "pairs_per_chunk": 2,
            "paraphrases": 1, "max_new_tokens": 24, "retries": 1, "chunk_tokens": 64, "chunk_overlap": 8}  # fmt: skip
    created = httpx.post(platform.url + "/v1/lmtailor/jobs", json={"type": "synth", "spec": spec}, timeout=30)
    assert created.status_code == 200, created.text
    done = wait_for(client, created.json()["id"], ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    job = httpx.get(platform.url + f"/v1/lmtailor/jobs/{done.id}", timeout=30).json()
    result = job["result"]
    assert result["documents"] == ["tower.md", "塔.txt"] and result["chunks"] >= 2
    assert result["generator"] == lively_llama_dir.name
    files = result["files"]
    assert list(files) == ["train", "eval", "report"] and job["result_files"] == list(files.values())
    kinds = {f.id: (f.filename, f.purpose) for f in client.files.list()}
    assert kinds[files["train"]] == ("synth_train.jsonl", "fine-tune")
    assert kinds[files["eval"]] == ("synth_eval.jsonl", "evals")
    report = json.loads(client.files.content(files["report"]).read())
    assert report["chunks"] == result["chunks"] and "spec" in report
    train = client.files.content(files["train"]).text.splitlines()
    assert len(train) == report["train_rows"]
    for line in train:  # every kept row is a chat row naming its source document
        row = json.loads(line)
        assert row["messages"][-1]["role"] == "assistant" and row["source"]["document"] in (
            "tower.md",
            "塔.txt",
        )
    events = [e.message for e in client.fine_tuning.jobs.list_events(done.id, limit=100).data]
    assert any(m.startswith("Synthesis finished") for m in events)
    # refused at the door, naming the field
    for bad, param in (({"docs": ["file-nope"]}, "spec.docs[0]"), ({"docs": [files["report"]]}, "spec.docs[0]"),
                       ({"generator": "no-such-model"}, "spec.generator"), ({"output": "/tmp/x"}, "spec.output"),
                       ({"pairs_per_chunk": 0}, "spec.pairs_per_chunk")):  # fmt: skip
        r = httpx.post(
            platform.url + "/v1/lmtailor/jobs", json={"type": "synth", "spec": {**spec, **bad}}, timeout=30
        )
        assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, (bad, r.text)


@pytest.mark.skipif(
    _gpus() == 1,
    reason="one GPU: a job on two processes is a 400 (test_more_processes_than_the_servers_gpus_is_a_400)",
)
def test_a_job_on_two_processes_pauses_resumes_and_finishes(platform, lively_llama_dir, tmp_path):
    """lmtailor.devices = 2: two ranks train (gloo on this CPU), rank 0 alone reports; a pause stops both at one
    checkpoint and the resumed job finishes and is served."""
    client = platform.client()
    f = client.files.create(file=open(chat_file(tmp_path / "ddp.jsonl", ROWS * 4), "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=f.id, suffix="ddp",
                                         hyperparameters={"n_epochs": 3, "batch_size": 2},
                                         extra_body={"lmtailor": {"devices": 2, "strategy": "full", "save_steps": 5,
                                                                  "packing": False}})  # fmt: skip
    wait_until(lambda: _steps(client, job.id) >= 3, what="training steps")
    client.fine_tuning.jobs.pause(job.id)
    paused = wait_for(client, job.id, ("paused", "failed", "succeeded"), timeout=120)
    assert paused.status == "paused", paused.error
    at = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].step_number
    client.fine_tuning.jobs.resume(job.id)
    done = wait_for(client, job.id, ("succeeded", "failed"), timeout=300)
    assert done.status == "succeeded", done.error
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=1000))
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert {e.data["total_steps"] for e in events if e.type == "metrics"} == {
        96
    }  # 64 rows / (1 x 2 ranks) x 3
    assert max(steps) >= 90 and any(s > at for s in steps)
    before = [s for s in steps if s <= at]
    assert len(before) == len(set(before))  # one report per step: rank 0's
    assert any("launching 2 processes" in e.message for e in events)
    card = json.loads(Path(platform.store.home, "jobs", job.id, "model", "lmtailor.json").read_text())
    assert card["metrics"]["processes"] == 2 and card["metrics"]["wrapped_as"] == "DistributedDataParallel"
    reply = client.chat.completions.create(model=done.fine_tuned_model, max_tokens=4,
                                           messages=[{"role": "user", "content": "Hi"}])  # fmt: skip
    assert reply.choices[0].message.content is not None
    refused = httpx.post(platform.url + "/v1/fine_tuning/jobs", timeout=30,
                         json={"model": lively_llama_dir.name, "training_file": f.id, "lmtailor": {"nodes": 2}})  # fmt: skip
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "lmtailor.nodes"


def test_a_search_job_runs_trials_and_serves_the_best_model(platform, lively_llama_dir, tmp_path):
    """`lmtailor tune` as a job: an uploaded file, trial 0 the default rule, each trial an event, the search's
    record as the job's result (no server paths), the best model served and answering."""
    client = platform.client()
    rows = [(w.format(f"robot {i}"), f"Robot {i} works in hall {i}.") for i in range(6)
            for w in ("Where does {} work?", "Which hall is {} in?", "Tell me where {} works.")]  # fmt: skip
    data = client.files.create(
        file=chat_file(tmp_path / "facts.jsonl", rows[3:]).open("rb"), purpose="fine-tune"
    )
    val = client.files.create(
        file=chat_file(tmp_path / "val.jsonl", rows[:3]).open("rb"), purpose="fine-tune"
    )
    spec = {"data": data.id, "val_data": val.id, "model": lively_llama_dir.name, "trials": 2, "retention": False,
            "seed": 0}  # fmt: skip
    created = httpx.post(platform.url + "/v1/lmtailor/jobs", json={"type": "tune", "spec": spec, "suffix": "search"},
                         timeout=30)  # fmt: skip
    assert created.status_code == 200, created.text
    done = wait_for(client, created.json()["id"], ("succeeded", "failed"))
    assert done.status == "succeeded", done.error
    job = httpx.get(platform.url + f"/v1/lmtailor/jobs/{done.id}", timeout=30).json()
    result = job["result"]
    assert [(t["number"], t["state"]) for t in result["trials"]] == [(0, "complete"), (1, "complete")]
    assert result["trials"][0]["default"] and result["no_replay"]  # the tiny model cannot replay: none drawn
    assert result["metric"] == "contains" and result["split"] == f"validation file {val.id}.jsonl"
    assert result["model"] == lively_llama_dir.name and str(platform.store.home) not in json.dumps(result)
    events = [e.message for e in client.fine_tuning.jobs.list_events(done.id, limit=100).data]
    assert any(m.startswith("Trial 0 (the default rule) complete") for m in events)
    assert any(m.startswith("Search finished: trial ") for m in events)
    name = f"ft:{lively_llama_dir.name}:search:{done.id}"
    assert done.fine_tuned_model == name and name in [m.id for m in client.models.list()]
    reply = client.chat.completions.create(
        model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None
    paused = httpx.post(platform.url + f"/v1/fine_tuning/jobs/{done.id}/pause", timeout=30)
    assert paused.status_code == 400 and "is a search: it cannot pause" in paused.json()["error"]["message"]
    # refused at the door, naming the field
    for bad, param in (({"data": "file-nope"}, "spec.data"), ({"data": None}, "spec.data"),
                       ({"model": "no-such-model"}, "spec.model"), ({"output": "/tmp/x"}, "spec.output"),
                       ({"budget": "soon"}, "spec.budget"), ({"metric": "perplexity"}, "spec.metric")):  # fmt: skip
        r = httpx.post(
            platform.url + "/v1/lmtailor/jobs", json={"type": "tune", "spec": {**spec, **bad}}, timeout=30
        )
        assert r.status_code in (400, 404) and r.json()["error"]["param"] == param, (bad, r.text)
