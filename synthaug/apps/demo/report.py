"""The demo's ``report.md`` and ``report.html``: the result in one sentence, the ratio table, quality, pictures,
the choices made to fit a CPU, and what the phantom is not.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from synthaug.data.io import atomic_write_text
from synthaug.markdown import markdown_table

IMAGES = [("quality/montage_class0.png", "Real (left) vs synthetic (right) mid-slices, class 0"),
          ("quality/montage_class1.png", "Real (left) vs synthetic (right) mid-slices, class 1"),
          ("sweep/ratio_vs_metric.png", "Test AUROC vs synthetic:real ratio (mean, 95% CI over seeds)")]
CAVEATS = ("The phantom is procedural, not real anatomy: these numbers show that the pipeline works and how to "
           "read it; they are not clinical results and do not predict what synthetic data does on real MRI.")


def _ci(m: dict[str, Any], signed: bool = False) -> str:
    if m is None or m.get("mean") is None:
        return "n/a"
    f = "{:+.3f}" if signed else "{:.3f}"
    if m.get("low") is None:
        return f.format(m["mean"])
    return f"{f.format(m['mean'])} [{f.format(m['low'])}, {f.format(m['high'])}]"


def ratio_table(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Arm | test balanced accuracy | test AUROC | AUROC vs real-only | p | Holm p, from the sweep's summary.json
    (its first classifier)."""
    header = ["ratio", "balanced accuracy (95% CI)", "AUROC (95% CI)", "AUROC vs real-only (95% CI)", "p", "Holm p"]
    info = summary["per_model"][summary["models"][0]]
    rows = []
    for key in info["arms"]:
        row = summary["per_arm"][key]
        diff = (row.get("vs_real_only") or {}).get("auroc")
        rows.append([info["labels"][key], _ci(row["test"]["balanced_accuracy"]), _ci(row["test"]["auroc"]),
                     "-" if diff is None else _ci(diff, signed=True),
                     "-" if diff is None or diff.get("p") is None else f"{diff['p']:.3g}",
                     "-" if diff is None or diff.get("p_holm") is None else f"{diff['p_holm']:.3g}"])
    return header, rows


def _quality_rows(out: Path) -> list[tuple[str, str]]:
    file = out / "quality" / "metrics.json"
    if not file.is_file():
        return []
    from synthaug.metrics import headline

    return list(headline(json.loads(file.read_text(encoding="utf-8"))))


def _chain(out: Path):  # ClassSignalChain | None
    """The class-signal chain `synthaug evaluate` wrote into quality/metrics.json, if any."""
    file = out / "quality" / "metrics.json"
    data = json.loads(file.read_text(encoding="utf-8")).get("class_signal") if file.is_file() else None
    if not data:
        return None
    from synthaug.metrics.class_signal import ClassSignalChain

    return ClassSignalChain.from_dict(data)


def _markdown(out: Path, summary: dict, plan, state: dict) -> str:
    header, rows = ratio_table(summary)
    lines = ["# synthaug demo report", "", f"**Result:** {summary['verdict']}.", "",
             f"## Does synthetic data help? ({summary['models'][0]}, {summary['seeds']} seeds per ratio, test split)", "",
             *markdown_table(header, rows)]
    chain = _chain(out)
    if chain is not None:
        lines += ["", "## Do the synthetic volumes carry their class?", "", chain.sentence(), "",
                  *markdown_table(chain.HEADER, chain.rows())]
    lines += ["", "## Quality of the synthetic volumes", "", *markdown_table(["metric", "value"], _quality_rows(out))]
    lines += ["", "## Pictures", ""]
    lines += [f"![{caption}]({path})" for path, caption in IMAGES if (out / path).is_file()]
    lines += ["", "## Choices made to fit a CPU", ""] + [f"- {c}" for c in plan.choices()]
    stages = [[name, f"{s.get('seconds', 0):.0f}", "yes" if s.get("reused") else "no"] for name, s in state.items()]
    lines += ["", "## Stages", "", *markdown_table(["stage", "seconds", "reused"], stages)]
    lines += ["", "## What this is not", "", CAVEATS, "",
              "Details: `sweep/report.md`, `sweep/summary.json`, `quality/report.md`, `quality/metrics.json`.", ""]
    return "\n".join(lines)


def _html(out: Path, summary: dict, plan, state: dict) -> str:
    e = html.escape
    header, rows = ratio_table(summary)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>synthaug demo report</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:100%}</style></head><body>",
             "<h1>synthaug demo report</h1>", f"<p><b>Result:</b> {e(summary['verdict'])}.</p>",
             f"<h2>Does synthetic data help? ({e(summary['models'][0])}, {summary['seeds']} seeds per ratio, test split)</h2>",
             "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
    parts += ["</table>"]
    chain = _chain(out)
    if chain is not None:
        parts += ["<h2>Do the synthetic volumes carry their class?</h2>", f"<p>{e(chain.sentence())}</p>",
                  "<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in chain.HEADER) + "</tr>"]
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in chain.rows()]
        parts += ["</table>"]
    parts += ["<h2>Quality of the synthetic volumes</h2><table>"]
    parts += [f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in _quality_rows(out)]
    parts += ["</table><h2>Pictures</h2>"]
    for path, caption in IMAGES:
        if (out / path).is_file():
            data = base64.b64encode((out / path).read_bytes()).decode()
            parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{e(caption)}'>"
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts += ["<h2>Choices made to fit a CPU</h2><ul>"] + [f"<li>{e(c)}</li>" for c in plan.choices()] + ["</ul>"]
    parts += ["<h2>Stages</h2><table><tr><th>stage</th><th>seconds</th><th>reused</th></tr>"]
    parts += [f"<tr><td>{e(n)}</td><td>{s.get('seconds', 0):.0f}</td><td>{'yes' if s.get('reused') else 'no'}</td></tr>"
              for n, s in state.items()]
    parts += ["</table>", f"<h2>What this is not</h2><p>{e(CAVEATS)}</p></body></html>"]
    return "\n".join(parts)


def write_demo_report(out: Path, plan, state: dict) -> None:
    summary = json.loads((out / "sweep" / "summary.json").read_text(encoding="utf-8"))
    atomic_write_text(out / "report.md", _markdown(out, summary, plan, state))
    atomic_write_text(out / "report.html", _html(out, summary, plan, state))
