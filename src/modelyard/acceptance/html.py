"""The self-contained HTML report: one file, inline CSS, no script, no network (open it from disk or a CI
artifact). Every value from the suite or an answer is escaped."""

from __future__ import annotations

from html import escape

from modelyard.acceptance.report import FAILURES_KEPT, Cell, Report

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1c2430;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}.muted{color:#5d6b7e}
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #d6dce4;padding:6px 10px;text-align:left;
vertical-align:top}th{background:#f2f5f9}td.cell{min-width:170px}.rate{font-size:18px;font-weight:600}
.ok{background:#e7f6ea}.no{background:#fdeaea}.none{background:#f5f5f5}.tag{display:inline-block;padding:1px 7px;
border-radius:9px;font-size:12px;font-weight:600}.tag.ok{color:#1d6b2f}.tag.no{color:#a32020}
code,pre{font:12px/1.4 ui-monospace,SFMono-Regular,Menlo,monospace}pre{white-space:pre-wrap;margin:0;max-width:560px}
.summary span{margin-right:18px}
"""


def _rate(value: float | None) -> str:
    return "&ndash;" if value is None else f"{value * 100:.0f}%"


def _cell(cell: Cell) -> str:
    if cell.samples == 0:
        return f'<td class="cell none">not run<br><span class="muted">{cell.skipped} skipped</span></td>'
    low, high = cell.interval
    css = "ok" if cell.accepted else "no"
    p50 = "&ndash;" if cell.p50_ms is None else f"{cell.p50_ms:.0f} ms"
    extra = []
    if cell.cached:
        extra.append(f"{cell.cached} cached")
    if cell.errors:
        extra.append(f"{cell.errors} errors")
    if cell.skipped:
        extra.append(f"{cell.skipped} skipped")
    return (
        f'<td class="cell {css}"><span class="rate">{_rate(cell.pass_rate)}</span> '
        f'<span class="tag {css}">{"accepted" if cell.accepted else "rejected"}</span><br>'
        f'<span class="muted">{cell.passed}/{cell.samples} · 95% CI {_rate(low)}&ndash;{_rate(high)} · '
        f"min {_rate(cell.min_pass_rate)}</span><br>${cell.cost_usd:.5f} · p50 {p50}"
        f"{'<br><span class=muted>' + escape(', '.join(extra)) + '</span>' if extra else ''}</td>"
    )


def _failures(report: Report) -> str:
    rows = []
    for target in report.targets:
        for task in report.tasks:
            for run in report.cell(target, task).failures:
                why = run.error or "; ".join(f"{c.kind}: {c.detail}" for c in run.checks if not c.passed)
                answer = "" if run.answer is None else run.answer.text[:400]
                rows.append(
                    f"<tr><td>{escape(target)}</td><td>{escape(task)}</td><td><code>{escape(run.case)}</code>"
                    f"{f' #{run.repeat}' if report.repeat > 1 else ''}</td><td>{escape(why)}</td>"
                    f"<td><pre>{escape(answer)}</pre></td></tr>"
                )
    if not rows:
        return "<p>No failures.</p>"
    head = "<tr><th>model</th><th>task</th><th>case</th><th>why</th><th>answer</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(report: Report) -> str:
    """The whole page as a string."""
    r = report.result
    head = "".join(f"<th>{escape(task)}</th>" for task in report.tasks)
    rows = []
    for target in report.targets:
        verdict = "ok" if report.accepted(target) else "no"
        label = "accepted" if verdict == "ok" else "rejected"
        cells = "".join(_cell(report.cell(target, task)) for task in report.tasks)
        rows.append(f'<tr><th>{escape(target)}<br><span class="tag {verdict}">{label}</span></th>{cells}</tr>')
    budget = ""
    if r.budget_usd is not None:
        budget = f"<span>budget ${r.budget_usd:g}"
        budget += f": <b>{r.budget_skipped} case runs not run</b>" if r.budget_skipped else ""
        budget += "</span>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(report.suite)}: acceptance report</title>
<style>{_CSS}</style></head><body>
<h1>Acceptance: {escape(report.suite)}</h1>
<p class="muted">{escape(report.source)} · generated {escape(report.generated_at)} · repeat {report.repeat}</p>
<p class="summary"><span>{len(r.runs)} case runs</span><span>cost ${r.spent_usd:.5f}</span>
<span>judge ${r.judge_usd:.5f}</span><span>{r.cache_hits} cached</span><span>{r.elapsed_s:.1f} s</span>{budget}</p>
<h2>Pass rate by model and task</h2>
<table><tr><th>model</th>{head}</tr>{"".join(rows)}</table>
<h2>Failures (the first {FAILURES_KEPT} of each cell)</h2>
{_failures(report)}
</body></html>
"""
