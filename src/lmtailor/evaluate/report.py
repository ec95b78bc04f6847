"""report.md and report.html from metrics.json's content: scores with intervals, comparisons with the baseline,
confusion matrices, and the rows each model fixed or broke. The HTML is one self-contained file (inline SVG)."""

from __future__ import annotations

import html as _html
from typing import Any

SHOWN_EXAMPLES = 10
WIDE_SCALE = ("bleu", "chrf")  # sacrebleu's 0-100


def fmt(name: str, value: float | None) -> str:
    if value is None or value != value:  # None or NaN
        return "–"
    if name in WIDE_SCALE:
        return f"{value:.1f}"
    if name == "perplexity":
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(name: str, score: dict[str, Any], cmp: dict[str, Any] | None) -> str:
    mark = " ▲" if cmp and cmp["better"] else " ▼" if cmp and cmp["worse"] else ""
    return f"{fmt(name, score['value'])} [{fmt(name, score['ci_low'])}, {fmt(name, score['ci_high'])}]{mark}"


def _short(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _prompt_text(row) -> str:
    return row.prompt[-1]["content"]


# ---------------------------------------------------------------- markdown


def markdown(result: dict[str, Any], rows, answers: dict[str, list[str]]) -> str:
    names, base = result["metrics"], result["baseline"]
    out = [
        "# Evaluation report\n",
        f"Data: `{result['data']['path']}` ({result['data']['rows']} rows). Baseline: `{base}`. "
        f"Generation: {result['generation']}. {result['created_at']}\n",
        f"## Scores ({int(result['bootstrap']['confidence'] * 100)}% bootstrap intervals)\n",
        "| model | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for m in result["models"]:
        label = f"{m['name']} (baseline)" if m["name"] == base else m["name"]
        cells = [
            _cell(n, m["scores"][n], m["vs_baseline"].get(n)) if n in m["scores"] else "–" for n in names
        ]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("\n▲ / ▼: significantly better / worse than the baseline (p < 0.05).\n")
    if result.get("judge"):
        out += [_judge_note(result), ""]
    for m in result["models"][1:]:
        out += [
            f"## {m['name']} vs {base}\n",
            "| metric | Δ | 95% CI of Δ | p | test | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for n, c in m["vs_baseline"].items():
            verdict = "better" if c["better"] else "worse" if c["worse"] else "no significant difference"
            out.append(
                f"| {n} | {c['delta']:+.4g} | [{c['ci_low']:+.4g}, {c['ci_high']:+.4g}] | {c['p_value']:.3g} | "
                f"{c['test']} | {verdict} |"
            )
        out.append("")
    out += _md_retention(result)
    for m in result["models"]:
        if "classification" in m:
            out += [f"## Confusion matrix: {m['name']}\n", *_md_confusion(m["classification"]), ""]
    for m in result["models"][1:]:
        out += _md_examples(m, base, rows, answers)
    return "\n".join(out) + "\n"


def _kept(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in result["models"] if (m.get("retention") or {}).get("eligible")]


def _md_retention(result: dict[str, Any]) -> list[str]:
    """What tuning cost: each tuned model's retention of the general probes its base answered."""
    models = _kept(result)
    if not models:
        return []
    out = ["## Retention: what tuning cost\n",
           "Of the bundled general probes the base answered acceptably, the share each model still answers "
           "(95% bootstrap interval).\n",
           "| model | base | retention | kept / base answered | by category | by language |", "|---|---|---|---|---|---|"]  # fmt: skip
    for m in models:
        r = m["retention"]
        groups = [", ".join(f"{k} {v['value']:.0%} ({v['kept']}/{v['eligible']})" for k, v in r[g].items())
                  for g in ("by_category", "by_lang")]  # fmt: skip
        out.append(f"| {m['name']} | {r['base']} | {r['value']:.0%} [{r['ci_low']:.0%}, {r['ci_high']:.0%}] | "
                   f"{r['kept']} / {r['eligible']} | {groups[0]} | {groups[1]} |")  # fmt: skip
    for m in models:
        lost = m["retention"].get("regressions") or []
        if lost:
            out += [
                f"\n### Worst regressions: {m['name']}\n",
                "| question | base answer | tuned answer |",
                "|---|---|---|",
            ]
            cells = [[_short(x[k]).replace("|", "\\|") for k in ("question", "base", "tuned")] for x in lost]
            out += ["| " + " | ".join(row) + " |" for row in cells]
    return [*out, ""]


def _html_retention(result: dict[str, Any]) -> str:
    models = _kept(result)
    if not models:
        return ""
    rows = []
    for m in models:
        r = m["retention"]
        cats = ", ".join(f"{_e(k)} {v['value']:.0%}" for k, v in r["by_category"].items())
        rows.append(f"<tr><td>{_e(m['name'])}</td><td>{_e(r['base'])}</td><td><b>{r['value']:.0%}</b> "
                    f"[{r['ci_low']:.0%}, {r['ci_high']:.0%}]</td><td>{r['kept']} / {r['eligible']}</td><td>{cats}</td></tr>")  # fmt: skip
        for x in r.get("regressions") or []:
            rows.append(f"<tr class=muted><td colspan=2>lost: {_e(_short(x['question']))}</td>"
                        f"<td colspan=3>base: {_e(_short(x['base']))} → tuned: {_e(_short(x['tuned']))}</td></tr>")  # fmt: skip
    return ("<h2>Retention: what tuning cost</h2><p class=muted>Of the bundled general probes the base answered "
            "acceptably, the share each model still answers (95% bootstrap interval).</p><table><tr><th>model</th>"
            "<th>base</th><th>retention</th><th>kept / base answered</th><th>by category</th></tr>"
            + "".join(rows) + "</table>")  # fmt: skip


def _judge_note(result: dict[str, Any]) -> str:
    """One paragraph: who judged, on what scale, and how many replies had no score."""
    j = result["judge"]
    counts = "; ".join(
        f"{m['name']}: raw mean {fmt('raw', m['judge']['raw_mean'])}, "
        f"{m['judge']['unparsed']} of {m['judge']['parsed'] + m['judge']['unparsed']} unparsed"
        for m in result["models"]
        if "judge" in m
    )
    return (
        f"judge: {j['model']} scored each answer {j['scale'][0]}-{j['scale'][1]} by the {j['rubric']} rubric "
        f"(judge_prompt.txt), shown as (score - 1) / {j['scale'][1] - j['scale'][0]}. Replies without a score "
        f"are left out of the mean (judgements.jsonl). {counts}."
    )


def _md_confusion(cls: dict[str, Any]) -> list[str]:
    conf = cls["confusion"]
    lines = [
        "| true \\ predicted | " + " | ".join(conf["columns"]) + " |",
        "|---" * (len(conf["columns"]) + 1) + "|",
    ]
    for label, row in zip(conf["rows"], conf["matrix"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _md_examples(m: dict[str, Any], base: str, rows, answers) -> list[str]:
    ex = m.get("examples") or {}
    if not ex.get("metric"):
        return []
    out = [f"## What {m['name']} fixed and broke (by {ex['metric']})\n",
           f"Fixed {len(ex['fixed'])} rows, broke {len(ex['broken'])}.\n"]  # fmt: skip
    for kind in ("fixed", "broken"):
        if not ex[kind]:
            continue
        out += [
            f"### {kind}\n",
            f"| row | prompt | reference | {base} | {m['name']} |",
            "|---|---|---|---|---|",
        ]
        for i in ex[kind][:SHOWN_EXAMPLES]:
            cells = [_prompt_text(rows[i]), rows[i].reference, answers[base][i], answers[m["name"]][i]]
            out.append(f"| {i} | " + " | ".join(_short(c).replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return out


# ---------------------------------------------------------------- html

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#1f2937;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #e5e7eb;padding:4px 8px;text-align:left}
th{background:#f9fafb}.up{color:#15803d}.down{color:#b91c1c}.charts{display:flex;flex-wrap:wrap;gap:1.5em}
.muted{color:#6b7280}td.num{text-align:right;font-variant-numeric:tabular-nums}
"""
COLORS = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#06b6d4", "#84cc16", "#ec4899")


def _e(text: Any) -> str:
    return _html.escape(str(text))


def html(result: dict[str, Any], rows, answers: dict[str, list[str]]) -> str:
    names, base = result["metrics"], result["baseline"]
    body = [
        "<h1>Evaluation report</h1>",
        f"<p class=muted>Data <code>{_e(result['data']['path'])}</code> ({result['data']['rows']} rows) · baseline "
        f"<b>{_e(base)}</b> · generation {_e(result['generation'])} · {_e(result['created_at'])}</p>",
        "<h2>Scores</h2>",
        '<div class="charts">' + "".join(_bar_chart(n, result["models"]) for n in names) + "</div>",
        "<p class=muted>Bars: the score; whiskers: its 95% bootstrap interval. "
        "▲ / ▼ significantly better / worse than the baseline (p &lt; 0.05).</p>",
        _html_scores(result),
    ]
    if result.get("judge"):
        body.append(f"<p class=muted>{_e(_judge_note(result))}</p>")
    for m in result["models"][1:]:
        body.append(_html_comparison(m, base))
    body.append(_html_retention(result))
    confusions = [m for m in result["models"] if "classification" in m]
    if confusions:
        body.append("<h2>Confusion matrices</h2><div class=charts>")
        body += [
            f"<div><h3>{_e(m['name'])}</h3>{_html_confusion(m['classification'])}</div>" for m in confusions
        ]
        body.append("</div>")
    for m in result["models"][1:]:
        body.append(_html_examples(m, base, rows, answers))
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>lmtailor evaluation</title>"
        f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def _html_scores(result: dict[str, Any]) -> str:
    names = result["metrics"]
    head = "<tr><th>model</th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
    trs = []
    for m in result["models"]:
        tds = []
        for n in names:
            if n not in m["scores"]:
                tds.append("<td>–</td>")
                continue
            c = m["vs_baseline"].get(n)
            cls = " up" if c and c["better"] else " down" if c and c["worse"] else ""
            tds.append(f'<td class="num{cls}">{_e(_cell(n, m["scores"][n], c))}</td>')
        label = _e(m["name"]) + (
            " <span class=muted>(baseline)</span>" if m["name"] == result["baseline"] else ""
        )
        trs.append(f"<tr><td>{label}</td>{''.join(tds)}</tr>")
    return f"<table>{head}{''.join(trs)}</table>"


def _bar_chart(name: str, models: list[dict[str, Any]]) -> str:
    """Horizontal bars, one per model, with the interval as a whisker; inline SVG."""
    items = [
        (m["name"], m["scores"][name]) for m in models if m["scores"].get(name, {}).get("value") is not None
    ]
    if not items:
        return ""
    top = 100.0 if name in WIDE_SCALE else 1.0
    if name == "perplexity":
        top = max(s["ci_high"] for _, s in items) * 1.1 or 1.0
    label_w, plot_w, bar_h, gap = 150, 260, 20, 8
    height = len(items) * (bar_h + gap) + 34
    x = lambda v: label_w + max(0.0, min(v / top, 1.0)) * plot_w  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 60}" height="{height}" '
             f'font-size="12" role="img" aria-label="{_e(name)}">',
             f'<text x="0" y="14" font-weight="bold">{_e(name)}</text>']  # fmt: skip
    for i, (model, s) in enumerate(items):
        y = 24 + i * (bar_h + gap)
        color = COLORS[i % len(COLORS)]
        parts.append(f'<text x="0" y="{y + 14}">{_e(_short(model, 22))}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{x(s["value"]) - label_w:.1f}" height="{bar_h}" fill="{color}" opacity=".8"/>'
        )
        ci = [s["value"] if v is None else v for v in (s["ci_low"], s["ci_high"])]
        lo, hi, mid = x(ci[0]), x(ci[1]), y + bar_h / 2
        parts.append(f'<path d="M{lo:.1f} {mid}H{hi:.1f}M{lo:.1f} {y + 4}V{y + bar_h - 4}M{hi:.1f} {y + 4}V{y + bar_h - 4}" '
                     'stroke="#111827" stroke-width="1.5"/>')  # fmt: skip
        parts.append(
            f'<text x="{max(hi, x(s["value"])) + 4:.1f}" y="{y + 14}">{fmt(name, s["value"])}</text>'
        )
    parts.append(f'<line x1="{label_w}" y1="20" x2="{label_w}" y2="{height - 8}" stroke="#9ca3af"/>')
    parts.append(
        f'<text x="{label_w + plot_w}" y="{height - 2}" text-anchor="end" fill="#6b7280">{fmt(name, top)}</text>'
    )
    return "<div>" + "".join(parts) + "</svg></div>"


def _html_comparison(m: dict[str, Any], base: str) -> str:
    head = "<tr><th>metric</th><th>Δ</th><th>95% CI of Δ</th><th>p</th><th>test</th><th>verdict</th></tr>"
    trs = []
    for n, c in m["vs_baseline"].items():
        verdict, cls = (
            ("better", "up")
            if c["better"]
            else ("worse", "down")
            if c["worse"]
            else ("no significant difference", "")
        )
        trs.append(
            f"<tr><td>{_e(n)}</td><td class=num>{c['delta']:+.4g}</td><td class=num>[{c['ci_low']:+.4g}, "
            f"{c['ci_high']:+.4g}]</td><td class=num>{c['p_value']:.3g}</td><td>{_e(c['test'])}</td>"
            f'<td class="{cls}">{verdict}</td></tr>'
        )
    return f"<h2>{_e(m['name'])} vs {_e(base)}</h2><table>{head}{''.join(trs)}</table>"


def _html_confusion(cls: dict[str, Any]) -> str:
    conf = cls["confusion"]
    peak = max((v for row in conf["matrix"] for v in row), default=0) or 1
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{_e(c)}</th>" for c in conf["columns"]) + "</tr>"
    trs = []
    for label, row in zip(conf["rows"], conf["matrix"], strict=True):
        tds = "".join(
            f'<td class=num style="background:rgba(37,99,235,{v / peak * 0.75:.2f});'
            f'color:{"#fff" if v / peak > 0.5 else "inherit"}">{v}</td>'
            for v in row
        )
        trs.append(f"<tr><th>{_e(label)}</th>{tds}</tr>")
    return f"<table>{head}{''.join(trs)}</table>"


def _html_examples(m: dict[str, Any], base: str, rows, answers) -> str:
    ex = m.get("examples") or {}
    if not ex.get("metric"):
        return ""
    parts = [f"<h2>What {_e(m['name'])} fixed and broke <span class=muted>(by {_e(ex['metric'])})</span></h2>",
             f"<p>Fixed {len(ex['fixed'])} rows, broke {len(ex['broken'])}.</p>"]  # fmt: skip
    for kind in ("fixed", "broken"):
        if not ex[kind]:
            continue
        head = f"<tr><th>row</th><th>prompt</th><th>reference</th><th>{_e(base)}</th><th>{_e(m['name'])}</th></tr>"
        trs = []
        for i in ex[kind][:SHOWN_EXAMPLES]:
            cells = [_prompt_text(rows[i]), rows[i].reference, answers[base][i], answers[m["name"]][i]]
            trs.append(
                f"<tr><td>{i}</td>" + "".join(f"<td>{_e(_short(c, 160))}</td>" for c in cells) + "</tr>"
            )
        parts.append(f"<h3>{kind}</h3><table>{head}{''.join(trs)}</table>")
    return "\n".join(parts)
