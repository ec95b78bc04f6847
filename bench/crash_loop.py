"""A fine-tuning job through a server killed again and again: SIGKILL `lmtailor serve` at random moments of
the job, start it again each time, and check the job ends `succeeded` with nothing lost.

One server home, the embedded SmolLM2-135M-Instruct, the ticket router's rows (bench/classification_task.py)
through the official `openai` SDK. First the job runs once uninterrupted (the baseline), then the same job
again while the server is SIGKILLed `--kills` times, each at a random moment `--between` (5-90) seconds after
it came back: the job process needs about 40 s from its start to its first checkpoint here, so some kills cut
it before it and some after. After each kill and at the end it checks:

- the uploaded file is listed and its content is byte for byte what was uploaded;
- every event seen before a kill is still there after it (same ids), and every kill that hit a running job
  left its "The server restarted during this job" event;
- every checkpoint the API lists has its folder with `trainer_state.json` (complete) on disk;
- at the end: the job `succeeded`, its model is listed and answers, no job is left `running`, no job process
  is left over, and SQLite's `PRAGMA integrity_check` says `ok`.

It reports the wall time of both runs and their ratio (what the kills cost), and appends a JSON line to
`--results`. Loopback only; the server's job processes get the machine's cores, one job at a time.

    python bench/crash_loop.py [--kills 10] [--between 5,90] [--seed 0] [--workdir DIR] [--results FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classification_task import make_rows  # noqa: E402

MODEL = "smollm2-135m-instruct"
FINAL = ("succeeded", "failed", "cancelled")
JOB = dict(hyperparameters={"n_epochs": 3, "batch_size": 4},
           extra_body={"lmtailor": {"save_steps": 4, "strategy": "lora"}})  # fmt: skip


class Server:
    """`lmtailor serve` on a free loopback port over one home, started and SIGKILLed at will."""

    def __init__(self, home: Path, log: Path):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.home, self.log, self.proc = home, log, None

    def start(self) -> float:
        t0 = time.monotonic()
        cmd = [
            sys.executable,
            "-m",
            "lmtailor.cli",
            "serve",
            "--port",
            str(self.port),
            "--home",
            str(self.home),
        ]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "a"), stderr=subprocess.STDOUT)
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}: see {self.log}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                time.sleep(0.3)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)


def snapshot(client: openai.OpenAI, job_id: str) -> dict:
    job = client.fine_tuning.jobs.retrieve(job_id)
    events = client.fine_tuning.jobs.list_events(job_id, limit=10_000).data
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job_id, limit=100).data
    return {"status": job.status, "events": {e.id: e.message for e in events},
            "checkpoints": {c.id: c.step_number for c in checkpoints}, "job": job}  # fmt: skip


def check_intact(client, home: Path, file_id: str, uploaded: bytes, before: dict, after: dict) -> list[str]:
    """What a kill lost or broke, in words (empty: nothing)."""
    problems = []
    if file_id not in [f.id for f in client.files.list()]:
        problems.append(f"{file_id} is no longer listed")
    elif client.files.content(file_id).read() != uploaded:
        problems.append(f"{file_id}'s content changed")
    lost = before["events"].keys() - after["events"].keys()
    if lost:
        problems.append(f"{len(lost)} events lost: {sorted(before['events'][e] for e in lost)[:3]}")
    with sqlite3.connect(
        f"file:{home / 'lmtailor.db'}?mode=ro", uri=True
    ) as db:  # where each listed one lives
        paths = dict(db.execute("SELECT id, path FROM checkpoints WHERE job_id = ?", (after["job"].id,)))
    for c in client.fine_tuning.jobs.checkpoints.list(after["job"].id, limit=100).data:
        if c.id not in paths or not (home / paths[c.id] / "trainer_state.json").is_file():
            problems.append(f"checkpoint {c.step_number} is listed but not complete on disk")
    return problems


def run_job(server: Server, work: Path, suffix: str, kills: int, rng: random.Random,
            between: tuple[float, float] = (5, 90)) -> dict:  # fmt: skip
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=3)
    uploaded = (work / "train.jsonl").read_bytes()
    f = client.files.create(file=open(work / "train.jsonl", "rb"), purpose="fine-tune")
    t0 = time.monotonic()
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=f.id, suffix=suffix, **JOB)
    problems, landed, restarts, log = [], 0, [], []
    for k in range(kills):
        time.sleep(rng.uniform(*between))
        before = snapshot(client, job.id)
        if before["status"] in FINAL:
            log.append(f"kill {k + 1}: the job had already ended ({before['status']})")
            break
        server.kill()
        landed += before["status"] in ("validating_files", "running")
        restarts.append(server.start())
        after = snapshot(client, job.id)
        found = check_intact(client, server.home, f.id, uploaded, before, after)
        problems += [f"kill {k + 1}: {p}" for p in found]
        log.append(f"kill {k + 1} at {time.monotonic() - t0:.0f} s: job {before['status']}, checkpoints "
                   f"{sorted(before['checkpoints'].values())}; after the restart ({restarts[-1]:.1f} s) "
                   f"{after['status']}{'; ' + '; '.join(found) if found else ''}")  # fmt: skip
        print(log[-1], flush=True)
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in FINAL:
        time.sleep(2)
    seconds = time.monotonic() - t0
    end = snapshot(client, job.id)
    messages = list(end["events"].values())
    said = messages.count(
        "The server restarted during this job; the job will resume from its last checkpoint"
    )
    if said != landed:
        problems.append(f"{landed} kills hit the running job but {said} restart events say so")
    if job.status != "succeeded":
        problems.append(f"the job ended {job.status}: {job.error}")
    else:
        if job.fine_tuned_model not in [m.id for m in client.models.list()]:
            problems.append(f"{job.fine_tuned_model} is not listed")
        reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=4, temperature=0,
                                               messages=[{"role": "user", "content": "Hello"}])  # fmt: skip
        if not reply.choices[0].message.content:
            problems.append(f"{job.fine_tuned_model} answered nothing")
    problems += check_intact(client, server.home, f.id, uploaded, end, end)
    return {"suffix": suffix, "status": job.status, "seconds": round(seconds, 1), "kills": len(restarts),
            "kills_while_running": landed, "restart_s": [round(r, 1) for r in restarts],
            "attempts": job.lmtailor["attempts"], "steps": max([e.data["step"] for e in
            client.fine_tuning.jobs.list_events(job.id, limit=10_000).data if e.type == "metrics"] or [0]),
            "problems": problems, "log": log}  # fmt: skip


def check_store(home: Path) -> list[str]:
    """After the server's last stop: SQLite's own check, no job left active, no job process left over."""
    problems = []
    with sqlite3.connect(home / "lmtailor.db") as db:
        if (ok := db.execute("PRAGMA integrity_check").fetchone()[0]) != "ok":
            problems.append(f"integrity_check: {ok}")
        active = db.execute(
            "SELECT id, status FROM jobs WHERE status IN ('validating_files', 'running')"
        ).fetchall()
        if active:
            problems.append(f"jobs left active: {active}")
    left = subprocess.run(["pgrep", "-f", f"lmtailor.platform.runjob .*--home {home}"], capture_output=True,
                          text=True).stdout.split()  # fmt: skip
    if left:
        problems.append(f"job processes left over: {left}")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--between", default="5,90", help="seconds from a restart to the next kill: LOW,HIGH")
    ap.add_argument("--rows", type=int, default=112, help="training rows (3 epochs, batches of 4)")
    ap.add_argument("--workdir", default="crash-loop-run")
    ap.add_argument("--results", default=None, help="append the result as one JSON line here")
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = make_rows(args.rows, False, random.Random(args.seed))
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    from lmtailor.models.catalog import embedded_folder

    # converted once, before either run: a one-off cost neither should pay
    embedded_folder(home=work / "home")
    server = Server(work / "home", work / "server.log")
    server.start()
    try:
        baseline = run_job(server, work, "baseline", 0, random.Random(args.seed))
        print(
            f"baseline: {baseline['status']} in {baseline['seconds']} s, {baseline['steps']} steps",
            flush=True,
        )
        between = tuple(float(x) for x in args.between.split(","))
        killed = run_job(server, work, "killed", args.kills, random.Random(args.seed), between)
    finally:
        server.stop()
    problems = baseline["problems"] + killed["problems"] + check_store(work / "home")
    result = {"bench": "crash_loop", "cpu": _cpu(), "cores": os.cpu_count(), "seed": args.seed, "between": between,
              "baseline": baseline, "killed": killed, "ratio": round(killed["seconds"] / baseline["seconds"], 2),
              "problems": problems}  # fmt: skip
    print(f"killed {killed['kills']} times ({killed['kills_while_running']} while it ran): {killed['status']} "
          f"in {killed['seconds']} s against {baseline['seconds']} s uninterrupted (x{result['ratio']}); "
          f"restarts {killed['restart_s']} s; {killed['attempts']} job processes; "
          f"problems: {problems or 'none'}")  # fmt: skip
    if args.results:
        with open(args.results, "a") as out:
            out.write(json.dumps(result) + "\n")
    if problems:
        raise SystemExit(1)


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
