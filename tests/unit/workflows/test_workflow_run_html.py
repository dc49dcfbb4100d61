"""`runs show --html`: the run's timeline as a self-contained, escaped HTML page with an SVG Gantt."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from typer.testing import CliRunner

from modelyard.server.admin_runs import run_detail
from modelyard.workflows import Workflow
from modelyard.workflows.checkpoint import SqliteStore, load_run
from modelyard.workflows.run_html import MAX_ITEMS_DRAWN, run_html
from modelyard.workflows.scripted import ScriptedBackend
from tests.unit.workflows.helpers import workflow

SVG_NS = "{http://www.w3.org/2000/svg}"
HOSTILE = "<script>alert('x')</script><img src=http://evil.example/x.png>"
BODY = """
steps:
  plan: {model: m, prompt: plan}
  fan: {model: m, needs: [plan], foreach: [a, b, c], prompt: "{{ item }}"}
  rounds:
    loop:
      max_iterations: 2
      steps:
        work: {model: m, prompt: "round {{ iteration.index }}"}
  skipped: {model: m, prompt: never, when: false}
outputs:
  said: "{{ plan }}"
"""


async def stored_page(tmp_path: Path, items: int = 3) -> tuple[str, str]:
    store = SqliteStore(tmp_path / "runs.db")
    body = BODY.replace("[a, b, c]", "[" + ", ".join(f"i{n}" for n in range(items)) + "]")
    backend = ScriptedBackend(answers={"plan": [HOSTILE]})
    try:
        result = await Workflow(workflow(body)).run({}, backend=backend, store=store, run_id="html-1")
        stored = load_run(store, result.run_id)
    finally:
        store.close()
    assert stored is not None
    return run_html(run_detail(stored, tmp_path / "runs.db")), result.run_id


def bars(page: str) -> list[str]:
    svg = ET.fromstring(re.search(r"<svg.*?</svg>", page, re.DOTALL).group(0))  # type: ignore[union-attr]
    return [g.findtext(f"{SVG_NS}title") or "" for g in svg.iter(f"{SVG_NS}g") if g.get("class") == "bar"]


async def test_every_step_item_and_round_has_a_bar_with_cost_and_tokens(tmp_path: Path) -> None:
    page, _ = await stored_page(tmp_path)
    titles = bars(page)
    keys = [title.split(" · ", 1)[0] for title in titles]
    assert keys == ["plan", "fan", "fan[0]", "fan[1]", "fan[2]", "rounds", "rounds#1.work", "rounds#2.work"]
    plan = titles[0]
    assert "succeeded" in plan and "cost $0.000" in plan and re.search(r"tokens \d+ in / \d+ out", plan)
    assert "round 2 · work" in page and "item [1]" in page
    assert "#34a853" in page  # succeeded colour


async def test_step_outputs_are_escaped_and_nothing_is_loaded(tmp_path: Path) -> None:
    page, _ = await stored_page(tmp_path)
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    outside = page.replace("http://www.w3.org/2000/svg", "").replace("http://evil.example", "")
    assert "http://" not in outside and "https://" not in outside
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


async def test_a_wide_fan_out_draws_a_bounded_number_of_items(tmp_path: Path) -> None:
    page, _ = await stored_page(tmp_path, items=MAX_ITEMS_DRAWN + 5)
    assert len([t for t in bars(page) if t.startswith("fan[")]) == MAX_ITEMS_DRAWN
    assert "… 5 more items" in page


async def test_the_cli_writes_the_page(tmp_path: Path) -> None:
    from modelyard.cli.workflows import app

    _, run_id = await stored_page(tmp_path)
    out = tmp_path / "run.html"
    runner = CliRunner()
    done = runner.invoke(
        app, ["runs", "show", run_id, "--html", "--out", str(out), "--store", str(tmp_path / "runs.db")]
    )
    assert done.exit_code == 0, done.output
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    missing = runner.invoke(app, ["runs", "show", "nope", "--html", "--store", str(tmp_path / "runs.db")])
    assert missing.exit_code == 2 and "no run 'nope'" in missing.output
