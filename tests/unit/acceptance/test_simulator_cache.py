"""The answer cache knows what a simulator answers: editing the fleet (a model's per-task accuracy) or the
answer-key suite misses the cache; an unchanged rerun (from another copy of the same files) hits it."""

from __future__ import annotations

import shutil
from pathlib import Path

from modelyard.acceptance.api import AcceptOptions, accept
from modelyard.acceptance.report import Report
from modelyard.acceptance.runner import RunOptions
from modelyard.acceptance.spec import load_suite

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "acceptance"


async def run(folder: Path, cache: Path) -> Report:
    options = AcceptOptions(models=["cheap@sim"], cache_path=cache, run=RunOptions(concurrency=16))
    return await accept(load_suite(folder / "suite.yaml"), options)


async def test_editing_the_fleet_misses_the_cache(tmp_path: Path) -> None:
    folder = tmp_path / "suite"
    shutil.copytree(EXAMPLE, folder)
    cache = tmp_path / "c.sqlite"
    first = await run(folder, cache)
    assert first.result.cache_hits == 0 and not first.cell("cheap@sim", "extraction").accepted
    elsewhere = tmp_path / "copy"
    shutil.copytree(folder, elsewhere)
    again = await run(elsewhere, cache)
    assert again.result.cache_hits == len(again.result.runs)  # same content, another folder: all cached
    fleet = folder / "fleet.yaml"
    text = fleet.read_text()
    old = "{default: 0.6, classification: 0.97, extraction: 0.35, code_fix: 0.5}"
    assert old in text
    fleet.write_text(text.replace(old, "{default: 1.0, classification: 1.0, extraction: 1.0, code_fix: 1.0}"))
    edited = await run(folder, cache)
    assert edited.result.cache_hits == 0  # nothing stale reused
    assert edited.cell("cheap@sim", "extraction").accepted and edited.cell("cheap@sim", "extraction").pass_rate == 1.0


async def test_editing_the_answer_key_suite_misses_the_cache(tmp_path: Path) -> None:
    folder = tmp_path / "suite"
    shutil.copytree(EXAMPLE, folder)
    cache = tmp_path / "c.sqlite"
    await run(folder, cache)
    suite = folder / "suite.yaml"
    suite.write_text(suite.read_text() + "\n# an edit\n")
    assert (await run(folder, cache)).result.cache_hits == 0
