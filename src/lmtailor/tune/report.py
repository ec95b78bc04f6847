"""The search's report: report.md and report.html (the same content) and search.png, in the search folder.

Trials sorted by the metric (with retention beside it, and why a trial ended: pruned, stopped by the budget,
failed), the metric of each finished trial against the time it finished (the best so far as a line), Optuna's
parameter importances where two or more trials finished, and the winner against the default rule."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from lmtailor.home import atomic_write_text


def write_report(out: Path, record: dict[str, Any], study) -> None:
    chart = draw(out / "search.png", record)
    importance = importances(study)
    lines = summary(record, importance)
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "report.html", as_html(lines, chart))


def summary(record: dict[str, Any], importance: dict[str, float]) -> list[str]:
    metric, best, default = record["metric"], record["best"], record["default"]
    lines = [
        "# lmtailor tune",
        "",
        f"{record['model']} on {record['data']}: {metric} on validation ({record['split']}); stopped by the "
        f"{record['stopped_by']} after {record['spent_s']:.0f} s.",
        "",
        f"**Best: trial {best['number']}**, {metric} {best['value']:.3f}, retention {_pct(best['retention'])} "
        f"({_params(best)}).",
        f"The default rule (trial 0): {_value(default)}"
        + (f", retention {_pct(default['retention'])}." if default else "."),
    ]
    if record["retention_floor"] is not None:
        lines.append(f"A trial keeping less than {record['retention_floor']:.0%} of the base could not win.")
    lines += [
        "",
        f"| trial | {metric} | retention | time | ended | parameters |",
        "|---|---|---|---|---|---|",
    ]
    ranked = sorted(record["trials"], key=lambda t: (t["value"] is None, -(t["value"] or 0), t["number"]))
    for t in ranked:
        ended = t["stopped"] or t["state"]
        name = f"{t['number']}{' (default)' if t['default'] else ''}"
        seconds = f"{t['seconds']:.0f} s" if t["seconds"] is not None else "–"
        lines.append(
            f"| {name} | {_value(t)} | {_pct(t['retention'])} | {seconds} | {ended} | {_params(t)} |"
        )
    if importance:
        lines += ["", "Parameter importance (Optuna's default evaluator, over the finished trials):", ""]
        lines += [f"- {name}: {value:.2f}" for name, value in importance.items()]
    return lines


MIN_FOR_IMPORTANCE = 4  # finished trials before parameter importances say anything


def importances(study) -> dict[str, float]:
    import optuna
    from optuna.trial import TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < MIN_FOR_IMPORTANCE:
        return {}
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # fewer than two finished trials, or one set of parameters for all
        return {}


def draw(path: Path, record: dict[str, Any]) -> Path | None:
    """The metric of each finished trial against minutes into the search, and the best so far."""
    done = [t for t in record["trials"] if t["state"] == "complete" and t["value"] is not None]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    elapsed, minutes = 0.0, []
    for t in record["trials"]:  # trials run one after another: each ends where the sum of their times is
        elapsed += t["seconds"] or 0
        if t in done:
            minutes.append(elapsed / 60)
    values = [t["value"] for t in done]
    best = [max(values[: i + 1]) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.scatter(minutes, values, label="trial")
    ax.step(minutes, best, where="post", label="best so far")
    ax.set_xlabel("minutes into the search")
    ax.set_ylabel(record["metric"])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def as_html(lines: list[str], chart: Path | None) -> str:
    """The Markdown lines as a page: headings, paragraphs, one table, a list; every value escaped."""
    body, table = [], []
    for line in lines:
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if not set("".join(cells)) <= set("-"):
                tag = "th" if not table else "td"
                table.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if table:
            body.append("<table>" + "".join(table) + "</table>")
            table = []
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{html.escape(line).replace('**', '')}</p>")
    if table:
        body.append("<table>" + "".join(table) + "</table>")
    if chart:
        body.append(f'<img src="{chart.name}" alt="the metric of each trial against time">')
    style = "body{font-family:sans-serif;max-width:60em}td,th{border:1px solid #ccc;padding:2px 6px}"
    return f"<!doctype html><meta charset=utf-8><title>lmtailor tune</title><style>{style}</style>{''.join(body)}"


def _pct(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def _value(row: dict | None) -> str:
    if row is None:
        return "did not finish"
    return "–" if row["value"] is None else f"{row['value']:.3f}"


def _params(row: dict) -> str:
    """What a trial trained: the choices its card recorded, else (a pruned trial) its sampled parameters."""
    chosen = row.get("chosen") or from_params(row["params"])
    return describe(chosen) if chosen else "–"


def describe(chosen: dict) -> str:
    """A trial's hyperparameters in one line (tune.json's `chosen`: its card's values)."""
    what = "mlp" if chosen.get("freeze_modules") == ["mlp"] else chosen.get("strategy")
    rank = f" r{chosen['lora_r']}" if what == "lora" else ""
    return (f"{what}{rank}, lr {chosen['learning_rate']:g}, {chosen['epochs']:g} epochs, batch {chosen['batch_size']}, "
            f"replay {chosen.get('replay_ratio') or 0:g}, NEFTune {chosen.get('neftune_alpha') or 0:g}")  # fmt: skip


def from_params(params: dict) -> dict:
    """A trial's sampled parameters (tune/space.py) in the card's terms."""
    if "strategy" not in params:
        return {}
    strategy = params["strategy"]
    return {
        "strategy": "freeze" if strategy == "mlp" else strategy,
        "freeze_modules": ["mlp"] if strategy == "mlp" else None,
        "learning_rate": params[f"lr_{strategy}"],
        "epochs": params["epochs"],
        "batch_size": params["batch_size"],
        "lora_r": params.get("lora_r"),
        "replay_ratio": params.get("replay_ratio", 0.0),  # not drawn where the base cannot replay
        "neftune_alpha": params["neftune_alpha"],
    }
