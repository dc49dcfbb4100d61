"""`modelyard runs show RUN_ID --html`: a run's timeline as one self-contained HTML file.

It draws the data the admin API's `GET /admin/runs/{id}` answers (`server.admin_runs.run_detail`: each
record's offsets on the run's time axis, fan-out items, the display order, the summary), so the file, the
dashboard and the JSON agree. An inline SVG Gantt: one bar per step, loop round step and fan-out item,
coloured by state, with cost, tokens and timing in each bar's `<title>` (shown on hover). No script, font
or request leaves the file, and a Content-Security-Policy forbids any; every string from the run (step
outputs, errors, inputs are the model's or the user's text) is escaped.
"""

from __future__ import annotations

import json
import math
from html import escape
from typing import Any

#: Fan-out items drawn per step; the rest are counted under the step.
MAX_ITEMS_DRAWN = 200
#: Characters of a step's output shown in the table (the JSON detail already bounds it).
OUTPUT_PREVIEW = 300
LABEL_W = 260
CHART_W = 720
ROW_H = 18
STATE_COLOURS = {
    "succeeded": "#34a853",
    "failed": "#d93025",
    "blocked": "#d93025",
    "skipped": "#9aa0a6",
    "stopped": "#f9ab00",
    "cancelled": "#f9ab00",
    "interrupted": "#f9ab00",
    "running": "#4285f4",
    "pending": "#dadce0",
}
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_STYLE = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;color:#202124}
h1{font-size:20px;margin:0 0 4px} .meta{color:#5f6368;margin-bottom:16px}
table{border-collapse:collapse;font-size:12px;margin-top:16px} td,th{border-bottom:1px solid #e0e0e0;
padding:4px 8px;text-align:left;vertical-align:top} pre{margin:0;white-space:pre-wrap;max-width:560px}
.legend span{display:inline-block;margin-right:12px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
"""


def run_html(detail: dict[str, Any]) -> str:
    """The page for one run, from `run_detail`'s dict."""
    steps = {entry["key"]: entry for entry in detail.get("steps", [])}
    rows = _rows(detail.get("rows", []), steps)
    summary = detail.get("summary", {})
    title = f"{detail.get('workflow', '')} - run {detail.get('run_id', '')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<div class="meta">{escape(_meta(detail, summary))}</div>',
        _legend(),
        gantt_svg(rows),
        _table(detail, steps),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _meta(detail: dict[str, Any], summary: dict[str, Any]) -> str:
    path = " -> ".join(str(step) for step in summary.get("critical_path") or []) or "-"
    return (
        f"status {detail.get('status')} · cost ${_num(summary.get('cost_usd')):.4f} · "
        f"{int(_num(summary.get('tokens')))} tokens over {int(_num(summary.get('calls')))} calls · "
        f"wall {_num(summary.get('wall_s')):.2f}s · critical path {path}"
        + (f" · {detail['message']}" if detail.get("message") else "")
    )


def _rows(order: list[str], steps: dict[str, dict[str, Any]]) -> list[tuple[int, str, dict[str, Any]]]:
    """(depth, label, entry) per bar: the steps table's order, each fan-out followed by its items."""
    rows: list[tuple[int, str, dict[str, Any]]] = []
    for key in order:
        entry = steps.get(key)
        if entry is None:
            continue
        depth = int(entry.get("depth") or 0)
        label = key.split("#", 1)[-1] if depth else key
        if "#" in key:
            label = f"round {key.rsplit('#', 1)[-1].split('.', 1)[0]} · {label.split('.', 1)[-1]}"
        rows.append((depth, label, entry))
        items = entry.get("fanout") or []
        for item in items[:MAX_ITEMS_DRAWN]:
            rows.append((depth + 1, "item [" + str(item.get("key", "")).rsplit("[", 1)[-1], item))
        hidden = int(entry.get("fanout_total") or len(items)) - min(len(items), MAX_ITEMS_DRAWN)
        if hidden > 0:
            rows.append((depth + 1, f"… {hidden} more items", {}))
    return rows


def gantt_svg(rows: list[tuple[int, str, dict[str, Any]]]) -> str:
    """The timeline: bars on the run's time axis (seconds from its first start)."""
    ends = [_num(e.get("finished_offset_s")) for _, _, e in rows if e.get("finished_offset_s") is not None]
    span = max(max(ends, default=0.0), 1e-6)
    height = (len(rows) + 2) * ROW_H
    width = LABEL_W + CHART_W + 60
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="11" '
        'font-family="Helvetica, Arial, sans-serif">',
        f'<text x="{LABEL_W}" y="12" fill="#5f6368">0s</text>',
        f'<text x="{LABEL_W + CHART_W}" y="12" fill="#5f6368" text-anchor="end">{span:.2f}s</text>',
    ]
    for index, (depth, label, entry) in enumerate(rows):
        y = (index + 1) * ROW_H + 4
        out.append(f'<text x="{4 + 12 * depth}" y="{y + 11}">{escape(_cut(label, 40))}</text>')
        start, end = entry.get("started_offset_s"), entry.get("finished_offset_s")
        if start is None or end is None:
            continue
        x = LABEL_W + _num(start) / span * CHART_W
        w = max(2.0, (_num(end) - _num(start)) / span * CHART_W)
        colour = STATE_COLOURS.get(str(entry.get("state")), "#dadce0")
        out.append(
            f'<g class="bar"><title>{escape(_hover(entry))}</title>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{ROW_H - 5}" rx="2" fill="{colour}"/></g>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _hover(entry: dict[str, Any]) -> str:
    lines = [
        f"{entry.get('key')} · {entry.get('state')}",
        f"model {entry.get('model') or '-'} via {entry.get('deployment') or '-'}",
        f"{_num(entry.get('duration_s')):.3f}s from {_num(entry.get('started_offset_s')):.3f}s",
        f"cost ${_num(entry.get('cost_usd')):.6f} · tokens {int(_num(entry.get('prompt_tokens')))} in"
        f" / {int(_num(entry.get('completion_tokens')))} out",
    ]
    if entry.get("cached"):
        lines.append("reused from the store (not paid again)")
    for name in ("note", "error"):
        if entry.get(name):
            lines.append(_cut(str(entry[name]), 300))
    return "\n".join(lines)


def _table(detail: dict[str, Any], steps: dict[str, dict[str, Any]]) -> str:
    head = "<tr><th>step</th><th>state</th><th>model</th><th>cost</th><th>tokens</th><th>output / error</th></tr>"
    body = []
    for key in detail.get("rows", []):
        entry = steps.get(key)
        if entry is None:
            continue
        shown = entry.get("error") or _text(entry.get("output"))
        tokens = int(_num(entry.get("prompt_tokens"))) + int(_num(entry.get("completion_tokens")))
        body.append(
            f"<tr><td>{escape(key)}</td><td>{escape(str(entry.get('state')))}</td>"
            f"<td>{escape(str(entry.get('model') or ''))}</td><td>${_num(entry.get('cost_usd')):.4f}</td>"
            f"<td>{tokens}</td><td><pre>{escape(_cut(shown, OUTPUT_PREVIEW))}</pre></td></tr>"
        )
    outputs = "".join(
        f"<tr><td>{escape(str(name))}</td><td colspan=5><pre>{escape(_cut(_text(value), OUTPUT_PREVIEW))}</pre>"
        "</td></tr>"
        for name, value in (detail.get("outputs") or {}).items()
    )
    errors = "".join(f"<li>{escape(str(error))}</li>" for error in detail.get("errors") or [])
    return (
        f"<table>{head}{''.join(body)}</table>"
        + (f"<h2>outputs</h2><table>{outputs}</table>" if outputs else "")
        + (f"<h2>errors</h2><ul>{errors}</ul>" if errors else "")
    )


def _legend() -> str:
    shown = ("succeeded", "failed", "skipped", "stopped", "running", "pending")
    spans = "".join(f'<span><i style="background:{STATE_COLOURS[s]}"></i>{s}</span>' for s in shown)
    return f'<div class="legend">{spans}</div>'


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _num(value: Any) -> float:
    """A figure from the stored run, or 0 where it is missing or not a finite number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)
