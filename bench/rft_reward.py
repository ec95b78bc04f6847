"""Reinforcement fine-tuning on the embedded model: does the validation reward rise over a short run?

The task: name a country's capital in as few words as possible. A python grader gives 1 for the capital in
at most three words, 0.5 for the capital in a longer answer, 0 otherwise. GRPO (method reinforcement, LoRA)
samples 4 answers a prompt and rewards them; every `--eval-steps` the validation prompts (other countries)
are graded. Prints the validation reward per evaluation and saves the curve as a PNG.

    python bench/rft_reward.py [--workdir rft-run] [--epochs 2] [--lr 2e-4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"), ("Egypt", "Cairo"),
            ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"),
            ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"),
            ("Hungary", "Budapest"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Thailand", "Bangkok"),
            ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Argentina", "Buenos Aires"),
            ("South Korea", "Seoul"), ("England", "London"), ("Netherlands", "Amsterdam"), ("Turkey", "Ankara"),
            ("Canada", "Ottawa"), ("Australia", "Canberra"), ("India", "New Delhi"), ("Mexico", "Mexico City"),
            ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Chile", "Santiago"), ("Colombia", "Bogota"),
            ("Vietnam", "Hanoi"), ("Philippines", "Manila"), ("Indonesia", "Jakarta"), ("Ukraine", "Kyiv"),
            ("Czech Republic", "Prague"), ("Switzerland", "Bern"), ("Scotland", "Edinburgh"), ("Wales", "Cardiff"),
            ("Nigeria", "Abuja"), ("Morocco", "Rabat"), ("Saudi Arabia", "Riyadh"), ("Pakistan", "Islamabad")]  # fmt: skip
GRADER = {"type": "python", "name": "short-and-right", "source": (
    "def grade(sample, item):\n"
    "    text = sample['output_text'].strip()\n"
    "    if item['reference_answer'].lower() not in text.lower():\n"
    "        return 0.0\n"
    "    return 1.0 if len(text.split()) <= 3 else 0.5\n")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default="rft-run")
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--eval-steps", type=int, default=6)
    ap.add_argument("--lr", type=float, default=2e-4)
    args = ap.parse_args()

    from lmtailor.specs import TrainSpec
    from lmtailor.train.sft import run_sft

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    rows = [{"messages": [{"role": "user", "content": f"What is the capital of {c}? Answer in as few words as possible."}],
             "reference_answer": a} for c, a in CAPITALS]  # fmt: skip
    train, val = rows[:36], rows[36:]
    for name, part in (("train", train), ("val", val)):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
    out = work / "model"
    t0 = time.time()
    spec = TrainSpec(model="smollm2-135m-instruct", data=str(work / "train.jsonl"), val_data=str(work / "val.jsonl"),
                     output=str(out), method="reinforcement", grader=GRADER, strategy="lora", epochs=args.epochs,
                     batch_size=2, num_generations=4, max_completion_length=24, learning_rate=args.lr,
                     eval_steps=args.eval_steps)  # fmt: skip
    run_sft(spec, home=work / "home", progress=False, log=print)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    evals = [(r["step"], r["eval_reward"]) for r in rows if "eval_reward" in r]
    train_rewards = [(r["step"], r["reward"]) for r in rows if "reward" in r]
    print(f"trained in {time.time() - t0:.0f} s; validation reward by step:")
    for step, reward in evals:
        print(f"  step {step:3d}: {reward:.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train_rewards, strict=True), alpha=0.4, label="training reward (sampled answers)")
    ax.plot(*zip(*evals, strict=True), marker="o", label="validation reward (other countries)")
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward")
    ax.set_ylim(0, 1.05)
    ax.set_title("GRPO on SmolLM2-135M-Instruct: short and right answers")
    ax.legend()
    fig.tight_layout()
    png = work / "rft_reward.png"
    fig.savefig(png, dpi=100)
    print(f"curve: {png}")


if __name__ == "__main__":
    main()
