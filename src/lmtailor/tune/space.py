"""What the search may change, as Optuna distributions, and the default rule's plan in the same terms.

Each trial is a TrainSpec with these fields set; trial 0 leaves them unset (the rule picks them, as `lmtailor
train` would) and records the rule's plan as its parameters, so the sampler learns from it like any other.
The learning rate has one range per strategy (what suits LoRA would wreck full training). Ranges hold the
rule's own values (docs/defaults.md): LoRA 1e-3 / 2e-3, the MLP blocks 3e-4, full 1e-4."""

from __future__ import annotations

from typing import Any

RATES = {"lora": (1e-4, 5e-3), "mlp": (3e-5, 1e-3), "full": (1e-5, 3e-4)}
BATCH_SIZES = (4, 8, 16)
LORA_RANKS = (8, 16, 32, 64)
NEFTUNE = (0.0, 5.0, 10.0)
REPLAY = (0.0, 0.1, 0.2, 0.3, 0.4)


def max_epochs(default_epochs: float) -> int:
    """The most epochs a trial may train: twice the rule's, at least 4, at most 12."""
    return int(min(12, max(4, round(2 * default_epochs))))


def suggest(trial, strategies: list[str], default_epochs: float, replay: bool = True) -> dict[str, Any]:
    """The trial's TrainSpec fields, drawn by Optuna (or taken from its enqueued parameters). Without `replay`
    (the base cannot replay: the default rule's trial fell back without it) the ratio is not drawn: 0."""
    strategy = trial.suggest_categorical("strategy", list(strategies))
    low, high = RATES[strategy]
    fields: dict[str, Any] = {
        "learning_rate": trial.suggest_float(f"lr_{strategy}", low, high, log=True),
        "epochs": float(trial.suggest_int("epochs", 1, max_epochs(default_epochs))),
        "batch_size": trial.suggest_categorical("batch_size", list(BATCH_SIZES)),
        "neftune_alpha": trial.suggest_categorical("neftune_alpha", list(NEFTUNE)),
        "replay_ratio": trial.suggest_categorical("replay_ratio", list(REPLAY)) if replay else 0.0,
    }
    if strategy == "lora":
        fields.update(strategy="lora", lora_r=trial.suggest_categorical("lora_r", list(LORA_RANKS)))
    elif strategy == "mlp":
        fields.update(
            strategy="freeze",
            freeze_modules=["mlp"],
            recite=trial.suggest_categorical("recite", [False, True]),
        )
    else:
        fields["strategy"] = "full"
    return fields


def plan_params(plan: dict, lora_r: int, strategies: list[str]) -> dict[str, Any] | None:
    """The rule's plan (train/defaults.py Plan.as_dict()) as this space's parameters; None where the plan is
    outside it (a strategy the search may not pick, or freezing by layers)."""
    if plan["strategy"] == "freeze" and plan.get("freeze_modules") == ["mlp"]:
        strategy = "mlp"
    elif plan["strategy"] in ("lora", "full"):
        strategy = plan["strategy"]
    else:
        return None
    if strategy not in strategies:
        return None
    params = {
        "strategy": strategy,
        f"lr_{strategy}": plan["learning_rate"],
        "epochs": int(plan["epochs"]),
        "batch_size": plan["batch_size"],
        "neftune_alpha": float(plan["neftune_alpha"]),
        "replay_ratio": plan["replay_ratio"],
    }
    if strategy == "lora":
        params["lora_r"] = lora_r
    if strategy == "mlp":
        params["recite"] = bool(plan["recite"])
    choices = {
        "batch_size": BATCH_SIZES,
        "neftune_alpha": NEFTUNE,
        "replay_ratio": REPLAY,
        "lora_r": LORA_RANKS,
    }
    low, high = RATES[strategy]
    inside = (
        all(params[k] in v for k, v in choices.items() if k in params)
        and low <= plan["learning_rate"] <= high
    )
    return params if inside and 1 <= params["epochs"] <= max_epochs(plan["epochs"]) else None
