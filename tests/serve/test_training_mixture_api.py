"""lmtailor's `more_training_files` on fine_tuning.jobs.create (through the official SDK): files mixed into one run
beside OpenAI's `training_file`, checked when the job is created, and the TrainSpec the job then runs."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest


@pytest.fixture(scope="module")
def platform(lively_llama_dir, tmp_path_factory, idle_server):
    server = idle_server(
        tmp_path_factory.mktemp("mixture-home"), [str(lively_llama_dir)], max_upload=1_000_000
    )
    yield server
    server.stop()


def upload(client, path: Path, n: int, topic: str, purpose: str = "fine-tune"):
    rows = [{"messages": [{"role": "user", "content": f"{topic} {i}?"}, {"role": "assistant", "content": f"{i}."}]}
            for i in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return client.files.create(file=open(path, "rb"), purpose=purpose)


def test_a_job_with_more_training_files_runs_on_all_of_them(platform, lively_llama_dir, tmp_path):
    from lmtailor.platform.runjob import train_spec
    from lmtailor.platform.store import File, Job

    client = platform.client()
    a, b = upload(client, tmp_path / "a.jsonl", 6, "alpha"), upload(client, tmp_path / "b.jsonl", 4, "beta")
    job = client.fine_tuning.jobs.create(
        model=lively_llama_dir.name, training_file=a.id,
        extra_body={"lmtailor": {"more_training_files": [{"file": b.id, "weight": 0.3}], "strategy": "lora"}},
    )  # fmt: skip
    assert job.training_file == a.id and job.status == "queued"
    options = job.model_extra["lmtailor"]["options"]
    assert options["more_training_files"] == [{"file": b.id, "weight": 0.3}] and options["strategy"] == "lora"

    spec = train_spec(platform.store, platform.store.get(Job, job.id), tmp_path / "out")
    stored = {
        f.id: str(platform.store.path(f.path)) for f in (platform.store.get(File, x) for x in (a.id, b.id))
    }
    assert [(s.path, s.weight) for s in spec.data_sources()] == [(stored[a.id], None), (stored[b.id], 0.3)]
    assert [s.name for s in spec.data_sources()] == ["a", "b"]  # named as uploaded: eval_a_loss, eval_b_loss
    assert spec.strategy == "lora" and spec.method == "sft"

    with pytest.raises(
        openai.ConflictError
    ):  # a file a queued job mixes in is in use, like its training file
        client.files.delete(b.id)


@pytest.mark.parametrize(
    ("more", "param", "says"),
    [
        ([{"file": "file-nope", "weight": 0.3}], "lmtailor.more_training_files[0].file",
         "no such File object: file-nope"),
        (["{b}", {"file": "file-gone"}], "lmtailor.more_training_files[1].file", "no such File object: file-gone"),
        ([{"file": "{b}", "weight": 1.5}], "lmtailor.more_training_files", "weight 1.5 must be above 0"),
        ([{"file": "{a}"}], "lmtailor.more_training_files", "the same file twice"),
        ([{"file": "{b}", "share": 0.3}], "lmtailor.more_training_files[0]", '{"file": "file-…", "weight": 0.3}'),
        ([{"file": "{evals}"}], "lmtailor.more_training_files[0].file", "has purpose 'evals', not 'fine-tune'"),
        ([], "lmtailor.more_training_files", "a list of"),
    ],
)  # fmt: skip
def test_bad_more_training_files_are_a_400_naming_the_param(
    platform, lively_llama_dir, tmp_path, more, param, says
):
    client = platform.client()
    ids = {"a": upload(client, tmp_path / "a.jsonl", 3, "a").id, "b": upload(client, tmp_path / "b.jsonl", 3, "b").id,
           "evals": upload(client, tmp_path / "e.jsonl", 3, "e", purpose="evals").id}  # fmt: skip
    more = [m.format(**ids) if isinstance(m, str) else {k: v.format(**ids) if isinstance(v, str) else v
            for k, v in m.items()} for m in more]  # fmt: skip
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=ids["a"],
                                       extra_body={"lmtailor": {"more_training_files": more}})  # fmt: skip
    assert e.value.body["param"] == param and says in e.value.body["message"]
    assert "\n" not in e.value.body["message"]
    assert client.files.retrieve(ids["a"]).id == ids["a"]  # the server still works afterwards


def test_several_files_are_for_supervised_jobs(platform, lively_llama_dir, tmp_path):
    client = platform.client()
    a, b = upload(client, tmp_path / "a.jsonl", 3, "a"), upload(client, tmp_path / "b.jsonl", 3, "b")
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=a.id, method={"type": "dpo"},
                                       extra_body={"lmtailor": {"more_training_files": [b.id]}})  # fmt: skip
    assert e.value.body["param"] == "lmtailor.more_training_files" and "not dpo" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=lively_llama_dir.name, training_file=a.id,
                                       extra_body={"lmtailor": {"training_file_weight": 0.5}})  # fmt: skip
    assert e.value.body["param"] == "lmtailor.training_file_weight"
