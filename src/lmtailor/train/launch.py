"""Training on several processes: GPUs of one machine, or several machines, through torchrun's engine.

`lmtailor train --devices N [--nodes M --node-rank R --master-addr A]` writes the spec to
`<output>/.launch/spec.json` and starts N copies of `python -m lmtailor.train.launch SPEC` on this node with
torch's elastic launcher (what `torchrun` runs: rendezvous, WORLD_SIZE / RANK / LOCAL_RANK, teardown of the
others when one dies). Each copy runs `run_sft`; transformers' Trainer sees the environment and trains with
DDP, FSDP or DeepSpeed (train/core.distributed_args); rank 0 alone writes the model, the card, the curve and
the job's events. A rank that fails fails the run: its error (the exception it died of, or the signal) comes
back as one LmtailorError naming the rank. `accelerate_config` launches through `accelerate launch` with that
file instead, for setups the generated settings do not cover.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from lmtailor.errors import LmtailorError
from lmtailor.home import atomic_write_json
from lmtailor.specs import TrainSpec

PAUSED_EXIT = 75  # every rank exits with it after saving the checkpoint a pause request asked for


class Paused(Exception):
    """A job's pause request honoured at a checkpoint (platform/runjob.JobCallback raises it in on_save)."""


class PausedRun(Paused):
    """All ranks of a multi-process run stopped at a checkpoint because the job was asked to pause."""


def train(spec: TrainSpec, home=None, log: Callable = print, progress: bool = True, callbacks=None) -> Path:
    """`run_sft` in this process, or on `devices` x `nodes` processes when there are several."""
    from lmtailor.train.core import output_dir
    from lmtailor.train.sft import run_sft

    if spec.devices * spec.nodes == 1 and not spec.accelerate_config:
        return run_sft(spec, home=home, log=log, progress=progress, callbacks=callbacks)
    if not spec.accelerate_config:  # an accelerate config places its processes itself
        problem = gpu_shortfall(spec.devices, visible_gpus())
        if problem:
            raise LmtailorError(problem)
    out = output_dir(spec, home)  # decided once here: each rank would otherwise stamp its own default name
    _warm_replay(spec, home, log)
    spec_file = out / ".launch" / "spec.json"
    atomic_write_json(spec_file, spec.model_copy(update={"output": str(out)}).model_dump())
    args = [str(spec_file), "--home", str(home or "")]
    if spec.accelerate_config:
        _accelerate(spec, args, log)
    else:
        _elastic(spec, args, log)
    return out


def _warm_replay(spec: TrainSpec, home, log: Callable) -> None:
    """The replay rows' answers generated here, once, into the answer cache: every rank then draws the same rows
    from it instead of generating its own (nodes with a home of their own still generate theirs)."""
    from lmtailor.models.catalog import resolve
    from lmtailor.train.core import free_memory, root_base
    from lmtailor.train.defaults import REPLAY_RATIO
    from lmtailor.train.replay import replay_count, replay_rows
    from lmtailor.train.supervised import load_train_val

    ratio = spec.replay_ratio if spec.replay_ratio is not None else REPLAY_RATIO
    if spec.method != "sft" or not ratio:
        return
    n = replay_count(ratio, len(load_train_val(spec)[0]))
    try:
        replay_rows(
            root_base(spec, resolve(spec.model, home)), n, spec.seed, home, log, spec.trust_remote_code
        )
    except LmtailorError as e:
        log(f"{e}")  # each rank meets it again and acts on it as one process would
    free_memory()  # the base answered here: its memory (a GPU's too) goes back before the ranks start


def gpu_shortfall(devices: int, gpus: int, option: str = "--devices") -> str | None:
    """Why `devices` processes cannot start on a machine showing `gpus` GPUs, or None. Where there are GPUs each
    rank takes its own (LOCAL_RANK): a rank past the last would die of "invalid device ordinal", and two ranks
    on one GPU are refused by NCCL. With none, the ranks train on the CPU. `option`: how the user said it."""
    if gpus == 0 or devices <= gpus:
        return None
    shown = f"{gpus} GPU" + ("s" if gpus > 1 else "")
    return (f"{devices} training processes ({option} {devices}) need a GPU each, but this machine shows {shown}: "
            f"use {option} {gpus}, or hide the GPUs from lmtailor (CUDA_VISIBLE_DEVICES=) to train on {devices} "
            "CPU processes")  # fmt: skip


def visible_gpus() -> int:
    """The GPUs this process may use (after CUDA_VISIBLE_DEVICES); 0 without CUDA. device_count asks NVML and,
    unlike is_available, does not initialise CUDA in the launcher or the API server (serve/vllm_engine.py)."""
    import torch

    return torch.cuda.device_count()


def _elastic(spec: TrainSpec, args: list[str], log: Callable) -> None:
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    world = spec.devices * spec.nodes
    log(f"launching {spec.devices} processes on node {spec.node_rank} of {spec.nodes} ({world} in all, "
        f"{spec.distributed}); rendezvous at {spec.master_addr}:{spec.master_port}")  # fmt: skip
    # torch's launcher would make its log folder with mkdtemp and leave it in /tmp after every run; this one goes in
    # `finally`. The ranks' error files are read into the failures before that.
    logs = tempfile.mkdtemp(prefix="lmtailor-launch-")
    config = LaunchConfig(
        min_nodes=spec.nodes,
        max_nodes=spec.nodes,
        nproc_per_node=spec.devices,
        run_id="lmtailor",
        rdzv_backend="static",  # torchrun --nnodes/--node_rank/--master_addr: every node named up front
        rdzv_endpoint=f"{spec.master_addr}:{spec.master_port}",
        rdzv_configs={"rank": spec.node_rank, "timeout": 900},
        max_restarts=0,
        monitor_interval=0.5,
        logs_specs=DefaultLogsSpecs(log_dir=logs),
    )
    env = {"OMP_NUM_THREADS": str(_threads_per_process(spec.devices))}
    previous = {k: os.environ.get(k) for k in env}
    # The launcher's children inherit it: processes sharing the cores each take a share.
    os.environ.update(env)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "lmtailor.train.launch", *args)
    except ChildFailedError as e:
        import signal

        # A rank the launcher stopped after the others paused exits with -SIGTERM.
        codes = [f.exitcode for f in e.failures.values()]
        if PAUSED_EXIT in codes and all(c in (PAUSED_EXIT, -signal.SIGTERM) for c in codes):
            raise PausedRun() from None
        rank, failure = _root_failure(e.failures)
        raise LmtailorError(f"training failed on rank {rank} of {world}: {_reason(failure)}") from None
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(logs, ignore_errors=True)


_COLLATERAL = ("Connection closed by peer", "Connection reset by peer", "NCCL communicator was aborted")


def _root_failure(failures: dict) -> tuple[int, object]:
    """The rank whose failure took the others down: not one stopped by the launcher (SIGTERM) or one that lost
    its peer mid-collective (gloo / NCCL connection errors), when another failed for its own reason."""
    import signal

    def collateral(item) -> bool:
        _, f = item
        return f.exitcode == -signal.SIGTERM or any(c in _reason(f) for c in _COLLATERAL)

    return min(failures.items(), key=lambda item: (collateral(item), item[0]))


def _reason(failure) -> str:
    """The exception a rank died of (from its error file), or how it ended."""
    data = getattr(failure, "error_file_data", None) or {}
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, dict):
        message = message.get("message")
    if message is None:
        message = getattr(failure, "message", None)
    if message and str(message).strip() not in ("<NONE>", "<N/A>"):  # torch's words for "no error file"
        text = str(message).strip()
        for prefix in ("LmtailorError: ", "DataError: ", "ModelError: ", "SpecError: "):
            text = text.removeprefix(prefix)
        return text
    code = failure.exitcode
    if code is not None and code < 0:
        import signal

        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _threads_per_process(devices: int) -> int:
    """CPU threads for each of `devices` processes on this machine (two processes on all cores crawl)."""
    if "OMP_NUM_THREADS" in os.environ:
        return max(1, int(os.environ["OMP_NUM_THREADS"]) // devices)
    return max(1, (os.cpu_count() or 1) // devices)


def _accelerate(spec: TrainSpec, args: list[str], log: Callable) -> None:
    config = Path(spec.accelerate_config or "")
    if not config.is_file():
        raise LmtailorError(f"accelerate_config: no such file: {config}")
    log(f"launching through accelerate with {config}")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
           "-m", "lmtailor.train.launch", *args]  # fmt: skip
    done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr[-20000:])
        last = [line for line in done.stderr.splitlines() if line.strip()]
        raise LmtailorError(
            f"accelerate launch failed (exit code {done.returncode}): {last[-1] if last else ''}"
        )


def _worker(argv: list[str]) -> None:
    """One rank: the spec from the launcher, trained by run_sft; an error is recorded for the launcher."""
    import argparse

    from torch.distributed.elastic.multiprocessing.errors import record

    parser = argparse.ArgumentParser(prog="lmtailor.train.launch")
    parser.add_argument("spec")
    parser.add_argument("--home", default="")
    ns = parser.parse_args(argv)
    die_with_parent()

    @record
    def main() -> None:
        import torch
        from torch.distributed.elastic.multiprocessing.errors import get_error_handler

        from lmtailor.models.loading import use_given_threads
        from lmtailor.train.core import is_rank0

        # this file runs as __main__ in the ranks: the Paused the job's callbacks raise is the module's one
        from lmtailor.train.launch import Paused as JobPaused
        from lmtailor.train.sft import run_sft

        use_given_threads()
        if torch.cuda.is_available():  # "cuda" is this rank's GPU from here on, not GPU 0 for every rank
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        spec = TrainSpec(**json.loads(Path(ns.spec).read_text(encoding="utf-8")))
        rank0 = is_rank0()
        callbacks = None
        hook = os.environ.get("LMTAILOR_RANK_CALLBACKS")  # "module:function" (spec) -> callbacks of this rank
        if hook:  # e.g. a fine-tuning job's events and pauses (platform/runjob.rank_callbacks)
            import importlib

            module, _, name = hook.partition(":")
            callbacks = getattr(importlib.import_module(module), name)(spec)
        try:
            run_sft(spec, home=ns.home or None, log=print if rank0 else (lambda *a, **k: None), progress=rank0,
                    callbacks=callbacks)  # fmt: skip
        except LmtailorError as e:  # the user's mistake: one line for the launcher, no traceback
            get_error_handler().record_exception(e)
            print(f"rank {os.environ.get('RANK')}: error: {e}", file=sys.stderr)
            sys.exit(1)
        except JobPaused:
            sys.exit(PAUSED_EXIT)  # every rank, after the checkpoint: the launcher reports a pause

    main()


def die_with_parent() -> bool:
    """SIGTERM this process when its parent dies (Linux's parent-death signal); False where it cannot be set.
    A rank's launcher killed with SIGKILL (a cancelled job, a killed server) leaves no rank training alone."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False
    return True


if __name__ == "__main__":
    _worker(sys.argv[1:])
