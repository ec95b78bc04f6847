"""Several processes training one model on this CPU (gloo): the same run as one process, and failures in words."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

ROWS = [
    (f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(10, 26)
]  # 16 rows, alike in length


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(home: Path, hide_gpus: bool, **extra: str) -> dict:
    """One process per GPU where there are GPUs: with fewer than two, the two-process runs train on the CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "LMTAILOR_HOME": str(home), **extra}
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _train(
    model: Path, data: Path, out: Path, *extra: str, spec=(), wait: bool = True, hide_gpus: bool | None = None
):
    cmd = [sys.executable, "-m", "lmtailor.cli", "train", *spec, "--model", str(model), "--data", str(data),
           "--output", str(out), *(() if "--strategy" in extra else ("--strategy", "full")), "--batch-size", "4", "--epochs", "2", "--no-packing",
           "--lr", "1e-3", "--precision", "fp32", "--seed", "0", "--master-port", str(_port()), *extra]  # fmt: skip
    tmp = out.parent / "tmp"  # the launcher's temporary folders land here, where a test can look for them
    tmp.mkdir(exist_ok=True)
    env = _env(out.parent / "home", GPUS < 2 if hide_gpus is None else hide_gpus, TMPDIR=str(tmp))
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _launcher_leftovers(tmp: Path) -> list[str]:
    """What torch's launcher would leave behind in the temporary folder (torchelastic_* log folders)."""
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith(("torchelastic_", "lmtailor-launch-")))


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


@pytest.fixture
def data(tmp_path, write_chat) -> Path:
    return write_chat(tmp_path / "train.jsonl", ROWS, systems={})


@pytest.fixture
def spec(tmp_path) -> Path:
    """NEFTune off: its embedding noise is drawn per process, so with it two processes are alike in
    distribution only, not step for step. Replay and retention off: the steps counted are the user's rows'."""
    path = tmp_path / "spec.yaml"
    path.write_text("neftune_alpha: 0\nreplay_ratio: 0\nretention: false\n", encoding="utf-8")
    return path


GPUS = torch.cuda.device_count()
NO_FSDP = (
    "FSDP through the Trainer needs 2 GPUs: accelerate enables its FSDP plugin only on GPU backends "
    "(DistributedType.MULTI_CPU has none), although PyTorch's FSDP itself runs on CPUs with gloo"
)


@pytest.mark.parametrize(
    "engine",
    ["ddp", pytest.param("fsdp", marks=[pytest.mark.gpu, pytest.mark.skipif(GPUS < 2, reason=NO_FSDP)])],
)
def test_two_processes_train_as_one_with_the_same_global_batch(engine, tiny_llama_dir, data, spec, tmp_path):
    """2 processes x 2 rows = 1 process x 4 rows: the same losses and weights (gloo on CPUs)."""
    one = _train(tiny_llama_dir, data, tmp_path / "one", spec=[str(spec)])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train(
        tiny_llama_dir, data, tmp_path / "two", "--devices", "2", "--distributed", engine, spec=[str(spec)]
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert f"launching 2 processes on node 0 of 1 (2 in all, {engine})" in two.stdout
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 4
    assert b == pytest.approx(a, rel=1e-5)
    wa = load_file(tmp_path / "one" / "model.safetensors")
    wb = load_file(tmp_path / "two" / "model.safetensors")
    assert wa.keys() == wb.keys()
    start = load_file(tiny_llama_dir / "model.safetensors")
    moved = max((wa[k].float() - start[k].float()).abs().max().item() for k in wa if k in start)
    assert moved > 1e-3  # the weights did train
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)
    # rank 0 alone wrote the artifacts: one card saying how it ran, metrics logged once per step
    card = json.loads((tmp_path / "two" / "lmtailor.json").read_text())
    assert card["hyperparameters"]["batch_size"] == 4 and card["hyperparameters"]["distributed"] == engine
    wrapped = {"ddp": "DistributedDataParallel", "fsdp": "FullyShardedDataParallel"}[engine]
    assert card["metrics"]["processes"] == 2 and card["metrics"]["wrapped_as"] == wrapped
    steps = [json.loads(line)["step"] for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]  # fmt: skip
    assert len(steps) == len(set(steps))
    assert _launcher_leftovers(tmp_path / "tmp") == []


@pytest.mark.skipif(GPUS > 0, reason="on a GPU machine FSDP runs (the test above)")
def test_sharded_engines_on_cpus_are_refused_in_words(tiny_llama_dir, data, tmp_path):
    """Rather than quietly training plain DDP (what accelerate would do with FSDP asked for on CPUs)."""
    for engine in ("fsdp", "deepspeed-zero3"):
        run = _train(tiny_llama_dir, data, tmp_path / engine, "--devices", "2", "--distributed", engine)
        assert run.returncode == 1
        said = " ".join(run.stderr.split())
        # Both ranks refuse; the launcher reports the one that failed first, which is a race.
        assert re.search(rf"training failed on rank [01] of 2: distributed {engine} needs GPUs", said), said[
            -2000:
        ]
        assert "use --distributed ddp" in said


def test_without_an_output_folder_every_rank_writes_to_the_one_the_launcher_names(
    tiny_llama_dir, data, tmp_path
):
    cmd = [sys.executable, "-m", "lmtailor.cli", "train", "--model", str(tiny_llama_dir), "--data", str(data),
           "--strategy", "full", "--batch-size", "4", "--epochs", "1", "--devices", "2", "--master-port", str(_port())]  # fmt: skip
    home = tmp_path / "home"
    run = subprocess.run(cmd, env=_env(home, GPUS < 2), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    folders = [p for p in (home / "models").iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "model.safetensors").exists()
    assert str(folders[0]) in " ".join(run.stdout.split())


def test_an_error_in_the_ranks_comes_back_in_one_line(tiny_llama_dir, data, tmp_path):
    run = _train(tiny_llama_dir, data, tmp_path / "odd", "--devices", "2", "--batch-size", "3")
    assert run.returncode == 1
    # One line, however long (no hard wrap in a pipe). Both ranks fail alike: which one the launcher hears from
    # first is a race, as for the sharded engines above.
    last = run.stderr.strip().splitlines()[-1]
    said = r"error: training failed on rank [01] of 2: batch size 3 does not split evenly over 2 "
    assert re.match(said, last), run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert _launcher_leftovers(tmp_path / "tmp") == []  # the ranks' error files were read before it went


def test_a_killed_rank_fails_the_run_and_writes_no_model(tiny_llama_dir, data, tmp_path):
    out = tmp_path / "long"
    run = _train(tiny_llama_dir, data, out, "--devices", "2", "--epochs", "400", wait=False)
    try:
        deadline = time.monotonic() + 120
        victim = None
        while victim is None and time.monotonic() < deadline:
            time.sleep(0.5)
            started = (out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().strip()
            for child in psutil.Process(run.pid).children(recursive=True) if started else []:
                try:
                    if child.environ().get("RANK") == "1":
                        victim = child
                except psutil.Error:
                    continue
        assert victim is not None, "rank 1 never started training"
        victim.kill()
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 1
    assert "error: training failed on rank 1 of 2: killed by SIGKILL" in " ".join(output.split())
    assert not (out / "model.safetensors").exists() and not (out / "lmtailor.json").exists()
    leftovers = [
        p
        for p in psutil.Process().children(recursive=True)
        if "lmtailor.train.launch" in " ".join(p.cmdline())
    ]
    assert not leftovers  # the launcher took the other rank down with it


def test_more_processes_than_gpus_is_said_before_any_starts():
    from lmtailor.train.launch import gpu_shortfall

    assert gpu_shortfall(2, 0) is None and gpu_shortfall(2, 2) is None and gpu_shortfall(1, 1) is None
    said = gpu_shortfall(2, 1)
    assert said.startswith(
        "2 training processes (--devices 2) need a GPU each, but this machine shows 1 GPU:"
    )
    assert "use --devices 1" in said and "CUDA_VISIBLE_DEVICES=" in said
    assert "shows 3 GPUs:" in gpu_shortfall(4, 3)
    assert "(lmtailor.devices 2) need a GPU each" in gpu_shortfall(2, 1, option="lmtailor.devices")


@pytest.mark.gpu
@pytest.mark.skipif(GPUS == 0, reason="needs a GPU (scripts/gpu_check.sh runs the suite's GPU paths)")
def test_more_processes_than_gpus_are_refused_in_words(tiny_llama_dir, data, tmp_path):
    n = GPUS + 1
    run = _train(tiny_llama_dir, data, tmp_path / "many", "--devices", str(n), hide_gpus=False)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    said = " ".join(run.stderr.split())
    assert f"error: {n} training processes (--devices {n}) need a GPU each" in said, said[-2000:]
    assert not (tmp_path / "many" / ".launch").exists()  # refused before the spec was written for the ranks


@pytest.mark.skipif(GPUS > 0, reason="this machine has a GPU: QLoRA runs (scripts/gpu_check.sh)")
def test_qlora_without_a_gpu_is_refused_in_words(tiny_llama_dir, data, tmp_path):
    run = _train(tiny_llama_dir, data, tmp_path / "q", "--strategy", "qlora")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    said = " ".join(run.stderr.split())
    assert "strategy qlora needs a CUDA GPU" in said and "use strategy lora" in said


def test_gradient_checkpointing_changes_memory_not_the_result(tiny_llama_dir, data, spec, tmp_path):
    plain = _train(tiny_llama_dir, data, tmp_path / "plain", spec=[str(spec)])
    ckpt = _train(tiny_llama_dir, data, tmp_path / "ckpt", "--gradient-checkpointing", spec=[str(spec)])
    assert plain.returncode == 0 and ckpt.returncode == 0, ckpt.stderr[-2000:]
    assert _losses(tmp_path / "ckpt") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-5)
    # read from the trained model, not the spec: checkpointing was on in one run and off in the other
    assert (
        json.loads((tmp_path / "ckpt" / "lmtailor.json").read_text())["metrics"]["gradient_checkpointing"]
        is True
    )
    assert (
        json.loads((tmp_path / "plain" / "lmtailor.json").read_text())["metrics"]["gradient_checkpointing"]
        is False
    )
