"""`modelyard replay`: what would each routing policy of a config have cost and delivered on this traffic?"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from modelyard.lab.replay import PolicyResult

app = typer.Typer(add_completion=False)


@app.command()
def replay(
    config: Path = typer.Option(..., "--config", "-c", help="Gateway config whose models are the policies."),
    data: Path = typer.Option(..., "--data", "-d", help="Labelled traffic (JSONL/CSV: prompt, model, score, cost)."),
    policy: list[str] = typer.Option(None, "--policy", "-p", help="Only these models of the config (repeatable)."),
    split: str = typer.Option(None, "--split", help="Only rows of this split (train/test)."),
    limit: int = typer.Option(None, "--limit", help="Only the first N prompts."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """Replay labelled traffic through the configured routing policies (no provider is called)."""
    from modelyard.config.loader import ConfigError, load_config
    from modelyard.lab.datasets import load_labelled
    from modelyard.lab.replay import baselines, premium
    from modelyard.lab.replay import replay as run_replay
    from modelyard.routing.intelligence import Intelligence, IntelligenceUnavailable

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    err = Console(stderr=True)
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    labelled = load_labelled(data, split=split)
    if limit:
        labelled = labelled.take(list(range(min(limit, len(labelled)))))
    intelligence = Intelligence.from_config(loaded)
    try:
        intelligence.start()
    except IntelligenceUnavailable as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    results = run_replay(loaded, labelled, policy or None, intelligence)
    single = baselines(labelled)
    top = premium(single)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "prompts": len(labelled),
                    "policies": [r.as_dict() for r in results],
                    "models": [r.as_dict() for r in single],
                    "premium": top.name,
                },
                indent=2,
            )
        )
        return
    _print(results, single, top, len(labelled))


def _print(results: list[PolicyResult], single: list[PolicyResult], top: PolicyResult, prompts: int) -> None:
    console = Console()
    grid = Table(title=f"replay of {prompts} prompts (recorded answers stand in for the calls)")
    for column in (
        "policy",
        "strategy",
        "routed",
        "total cost $",
        "per 1000 tasks $",
        "mean quality",
        "accuracy",
        "traffic",
    ):
        grid.add_column(column, justify="left" if column in ("policy", "strategy", "traffic") else "right")
    for r in [*results, *single]:
        shares = ", ".join(
            f"{m} {100 * n / max(1, r.routed):.0f}%" for m, n in sorted(r.shares.items(), key=lambda kv: -kv[1])[:3]
        )
        lost = ", ".join(f"{n} {what}" for n, what in ((r.refused, "refused"), (r.unlabelled, "unlabelled")) if n)
        routed = f"{r.routed}" + (f" ({lost})" if lost else "")
        grid.add_row(
            r.name,
            r.strategy,
            routed,
            f"{r.total_cost:.4f}",
            f"{r.cost_per():.4f}",
            f"{r.mean_quality:.3f}",
            f"{r.accuracy:.1%}",
            shares,
            style="dim" if r.strategy == "single model" else "",
        )
    console.print(grid)
    for r in results:
        if r.routed:
            saved = 1 - r.cost_per() / top.cost_per() if top.cost_per() else 0.0
            console.print(
                f"cost per 1000 tasks: all-premium ({top.name}) ${top.cost_per():.4f} "
                f"vs {r.name} ${r.cost_per():.4f} ({saved:.0%} less); quality {top.mean_quality:.3f} "
                f"vs {r.mean_quality:.3f}"
            )
