"""Trainer callbacks: metrics.jsonl, a progress bar with loss / lr / tokens/s / time left, the loss-curve PNG."""

from __future__ import annotations

import json
import time
from pathlib import Path

from transformers import TrainerCallback


class MetricsCallback(TrainerCallback):
    """Appends every log (train and validation) to metrics.jsonl with tokens/s and elapsed time."""

    def __init__(self, path: Path):
        self.path = path
        self.start = time.time()
        self.last_time = self.start
        self.last_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.last_time = time.time()
        self.last_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.time()
        row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **logs}
        tokens = state.num_input_tokens_seen
        if "loss" in logs and now > self.last_time:
            row["tokens_per_second"] = round((tokens - self.last_tokens) / (now - self.last_time), 1)
            self.last_time, self.last_tokens = now, tokens
        row["tokens_seen"] = int(tokens)
        row["elapsed_s"] = round(now - self.start, 2)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")


class ProgressCallback(TrainerCallback):
    """One tqdm bar: steps with loss, learning rate, tokens/s; tqdm gives time left."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.t0 = 0.0
        self.tokens0 = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if self.enabled and state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train", unit="step")
            self.t0, self.tokens0 = time.time(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self.bar or not logs:
            return
        post = {}
        if "loss" in logs:
            post["loss"] = f"{logs['loss']:.3f}"
            post["lr"] = f"{logs.get('learning_rate', 0):.1e}"
            elapsed = time.time() - self.t0
            if elapsed > 0:
                post["tok/s"] = f"{(state.num_input_tokens_seen - self.tokens0) / elapsed:.0f}"
        if "eval_loss" in logs:
            post["val"] = f"{logs['eval_loss']:.3f}"
        self.bar.set_postfix(post, refresh=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar:
            self.bar.close()
            self.bar = None


class EvalMetricsCallback(TrainerCallback):
    """At each evaluation, generate on the validation rows and score them; `eval_<metric>` joins the
    metrics (so keep-best and early stopping can watch it) and a row of metrics.jsonl."""

    def __init__(self, tokenizer, rows, metrics: list[str], path: Path):
        self.tokenizer, self.rows, self.metrics, self.path = tokenizer, rows, metrics, path

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        from lmtailor.evaluate.runner import evaluate_rows  # generation and metrics: only when asked for

        scores = evaluate_rows(model, self.tokenizer, self.rows, self.metrics)
        extra = {f"eval_{name}": value for name, value in scores.items()}
        if metrics is not None:
            metrics.update(extra)  # the same dict the Trainer picks its best checkpoint from
        if state.is_world_process_zero:
            row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **extra}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


class SourceLossCallback(TrainerCallback):
    """With several training files: at each evaluation, the loss on each file's validation rows as
    `eval_<source>_loss`, joined to the evaluation's metrics (so the final one reaches the card) and written as a
    row of metrics.jsonl. The Trainer's own pass gives eval_loss over the whole set; this is one more pass."""

    def __init__(self, trainer, datasets: dict, path: Path):
        self.trainer, self.datasets, self.path = trainer, datasets, path

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        losses = {}
        for name, dataset in self.datasets.items():
            key = f"eval_{name}"
            result = self.trainer.evaluation_loop(
                self.trainer.get_eval_dataloader(dataset),
                description=f"validation of {name}",
                prediction_loss_only=True,
                metric_key_prefix=key,
            )
            losses[f"{key}_loss"] = result.metrics.get(f"{key}_loss")
        if metrics is not None:
            metrics.update(losses)
        if state.is_world_process_zero:
            row = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), **losses}
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


def val_rows(records) -> list:
    """Validation records (each ends in an assistant turn) as evaluation rows, read as `lmtailor eval` reads
    a test file: the prompt before the last turn, and that turn (or the row's `reference`) as reference."""
    from lmtailor.evaluate.answers import eval_row

    return [row for row in map(eval_row, records) if not isinstance(row, str)]


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write
    return rows


def last_loss(folder: Path) -> float | None:
    """The last training loss a run logged (its metrics.jsonl), None before its first."""
    losses = [r["loss"] for r in read_metrics(Path(folder) / "metrics.jsonl") if "loss" in r]
    return losses[-1] if losses else None


def plot_loss(metrics_path: Path, png: Path, title: str = "loss") -> Path | None:
    """Train and validation loss against steps, written atomically to `png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=False), label="train", color="#1f77b4")
    if val:
        ax.plot(*zip(*val, strict=False), "o-", label="validation", color="#d62728")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(png)
    return png
