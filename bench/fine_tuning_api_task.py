"""The OpenAI fine-tuning flow on the real embedded model, as a user migrating from OpenAI would run it.

Starts `lmtailor serve` with a fresh home, then with the official `openai` SDK only: upload the
classification task of bench/classification_task.py, create a job on smollm2-135m-instruct with
hyperparameters "auto", poll it to the end, and chat with the `ft:` model; finally an evaluation job on the
same server compares the base and the `ft:` model on held-out messages (accuracy, macro-F1, 95% intervals).

    python bench/fine_tuning_api_task.py [--workdir DIR] [--train-rows 240] [--test-rows 80]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from classification_task import make_rows  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="fine-tuning-api-run")
    ap.add_argument("--train-rows", type=int, default=240)
    ap.add_argument("--test-rows", type=int, default=80)
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    train, test = make_rows(args.train_rows, False, rng), make_rows(args.test_rows, True, rng)
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    (work / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test), encoding="utf-8")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LMTAILOR_HOME": str(work / "home")}
    server = subprocess.Popen([sys.executable, "-m", "lmtailor.cli", "serve", "--port", str(port)], env=env,
                              stdout=open(work / "server.log", "w"), stderr=subprocess.STDOUT)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        run(url, work)
    finally:
        server.terminate()
        server.wait(60)


def run(url: str, work: Path) -> None:
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    t0 = time.time()
    f = client.files.create(file=open(work / "train.jsonl", "rb"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="smollm2-135m-instruct", training_file=f.id, suffix="routing")
    print(f"{job.id}: {job.status}", flush=True)
    seen = set()
    while job.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(5)
        job = client.fine_tuning.jobs.retrieve(job.id)
        for e in reversed(client.fine_tuning.jobs.list_events(job.id, limit=20).data):
            if e.id not in seen and e.type != "metrics":
                seen.add(e.id)
                print(f"  {e.message}", flush=True)
    print(f"{job.status} in {time.time() - t0:.0f} s: {job.fine_tuned_model}; error {job.error}", flush=True)
    if job.status != "succeeded":
        raise SystemExit(1)
    ask = [
        {
            "role": "user",
            "content": json.loads((work / "test.jsonl").read_text().splitlines()[0])["messages"][0][
                "content"
            ],
        }
    ]
    reply = client.chat.completions.create(
        model=job.fine_tuned_model, messages=ask, max_tokens=8, temperature=0
    )
    print(f"chat with {job.fine_tuned_model}: {reply.choices[0].message.content!r}")

    test = client.files.create(file=open(work / "test.jsonl", "rb"), purpose="evals")
    spec = {"models": ["smollm2-135m-instruct", job.fine_tuned_model], "data": test.id}
    created = httpx.post(url + "/v1/lmtailor/jobs", json={"type": "eval", "spec": spec}, timeout=60).json()
    ev = client.fine_tuning.jobs.retrieve(created["id"])
    while ev.status not in ("succeeded", "failed", "cancelled"):
        time.sleep(5)
        ev = client.fine_tuning.jobs.retrieve(created["id"])
    result = httpx.get(url + f"/v1/lmtailor/jobs/{created['id']}", timeout=60).json().get("result")
    if not result:
        raise SystemExit(f"evaluation {ev.status}: {ev.error}")
    for m in result["models"]:
        cells = [
            f"{n} {s['value']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]" for n, s in m["scores"].items()
        ]
        print(f"{m['name']}: " + "; ".join(cells))
    versus = result["models"][1]["vs_baseline"].get("accuracy", {})
    print(
        f"ft vs base accuracy: delta {versus.get('delta')}, p {versus.get('p_value')}, total {time.time() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
