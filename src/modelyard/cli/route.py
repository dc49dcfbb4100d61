"""`modelyard route`: where would this request go, and why (no model is called)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from modelyard.config.loader import ConfigError, load_config
from modelyard.routing.features import chat_features
from modelyard.routing.router import Router
from modelyard.routing.rules import RuleError
from modelyard.schema.chat import ChatRequest, FunctionDef, FunctionTool, UserMessage
from modelyard.schema.errors import GatewayError


def explain_route(
    config_path: Path,
    model: str,
    prompt: str,
    *,
    max_tokens: int | None,
    task: str | None,
    complexity: str | None,
    strategy: str | None,
    tools: bool,
    explain: bool,
    as_json: bool,
) -> dict[str, Any]:
    console = Console()
    try:
        router = Router(load_config(config_path))
    except (ConfigError, RuleError) as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(2) from None
    metadata = {k: v for k, v in (("task", task), ("complexity", complexity)) if v}
    req = ChatRequest(
        model=model,
        messages=[UserMessage(content=prompt)],
        max_tokens=max_tokens,
        metadata=metadata or None,
        tools=[FunctionTool(function=FunctionDef(name="tool", parameters={"type": "object"}))] if tools else None,
    )
    features = chat_features(req)
    try:
        plan = router.plan(model, features, strategy=strategy, explain=True)
    except GatewayError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(2) from None
    result = plan.explain()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return result
    rule = f", rule: {result['rule']}" if result["rule"] else ""
    console.print(
        f"model [bold]{model}[/] → strategy [bold]{result['strategy']}[/]{rule}; "
        f"prompt ≈ {features.prompt_tokens} tokens"
    )
    chosen = plan.order[0].name if plan.order else None
    console.print(f"chosen: [bold green]{chosen or 'none'}[/]")
    if explain:
        grid = Table()
        for column in ("rank", "deployment", "decision", "reason"):
            grid.add_column(column)
        for row in result["candidates"]:
            style = {"chosen": "green", "skipped": "dim"}.get(row["decision"], "")
            grid.add_row(str(row["rank"] or "-"), row["deployment"], row["decision"], row["reason"], style=style)
        console.print(grid)
        if result["fallbacks"]:
            console.print(f"fallbacks: {', '.join(result['fallbacks'])}")
    return result
