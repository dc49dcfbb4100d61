"""The `modelyard` command: serve, sim, demo, check, route, and the workflow/router/keys/spend groups."""

from __future__ import annotations

import logging
import os
import sys
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from modelyard import __version__, hot_path

if TYPE_CHECKING:
    from modelyard.config.model import Config
    from modelyard.routing.table import RoutingTable

app = typer.Typer(
    name="modelyard",
    help="A self-hosted LLM gateway, router and workflow engine (OpenAI and Anthropic APIs).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)

#: Optional command groups: (module, group name or None to merge the commands at top level).
_GROUPS: list[tuple[str, str | None]] = [
    ("modelyard.cli.workflows", None),
    ("modelyard.cli.router", "router"),
    ("modelyard.cli.admin", None),
    ("modelyard.cli.replay", None),
    ("modelyard.cli.accept", None),
    ("modelyard.cli.batch", None),
]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@app.command()
def serve(
    config: Path = typer.Option(
        None, "--config", "-c", help="Config file (default: $MODELYARD_CONFIG or ./modelyard.yaml)."
    ),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(4000, help="Port to listen on."),
    workers: int = typer.Option(1, help="Worker processes (one per core is a good start)."),
    demo: bool = typer.Option(False, "--demo", help="Serve the embedded demo config over a built-in simulator."),
    watch: bool = typer.Option(
        False,
        "--watch",
        envvar="MODELYARD_WATCH",
        help="Reload when the config (or its prices_from / quality_from file) changes.",
    ),
    log_level: str = typer.Option("info", help="debug, info, warning, error."),
    header_timeout: float = typer.Option(
        10.0,
        envvar="MODELYARD_HEADER_TIMEOUT_S",
        min=0.1,
        help="Seconds a client has to send a request's headers (slowloris).",
    ),
    body_timeout: float = typer.Option(
        30.0,
        envvar="MODELYARD_BODY_TIMEOUT_S",
        min=0.1,
        help="Seconds a client has to send a request's body, once its headers are in.",
    ),
    keep_alive: int = typer.Option(
        5, envvar="MODELYARD_KEEP_ALIVE_S", min=1, help="Seconds an idle kept-alive connection stays open."
    ),
    limit_concurrency: int = typer.Option(
        None,
        envvar="MODELYARD_LIMIT_CONCURRENCY",
        min=1,
        help="Connections + requests per worker before new ones get a 503 (default: unlimited).",
    ),
) -> None:
    """Run the gateway (OpenAI API at /v1, Anthropic Messages API at /v1/messages). SIGHUP reloads the config,
    SIGTERM drains (docs/operations.md)."""
    _setup_logging(log_level)
    sim = None
    if demo:
        from modelyard.sim.server import SimServer

        sim = SimServer().__enter__()
        path = _write_demo_config(sim.url)
    else:
        path = config or Path(os.environ.get("MODELYARD_CONFIG", "modelyard.yaml"))
    loaded, _ = _load_checked(path)
    os.environ["MODELYARD_CONFIG"] = str(path)
    # Read by the protocol of every worker process (server/protocol.py).
    os.environ["MODELYARD_HEADER_TIMEOUT_S"] = str(header_timeout)
    os.environ["MODELYARD_BODY_TIMEOUT_S"] = str(body_timeout)
    from modelyard.server.protocol import GatewayHttpProtocol

    GatewayHttpProtocol.header_timeout_s = header_timeout
    GatewayHttpProtocol.body_timeout_s = body_timeout
    err.print(
        f"modelyard {__version__}: {len(loaded.deployments)} deployments, {len(loaded.models)} models "
        f"from {path}; listening on http://{host}:{port}; {hot_path.describe()}"
    )
    from modelyard.server import serving

    os.environ[serving.WATCH_ENV] = "1" if watch else ""
    try:
        serving.run(
            "modelyard.server.factory:app_from_env",
            workers=workers,
            deadline_s=loaded.drain.deadline_s,
            factory=True,
            host=host,
            port=port,
            loop="uvloop",
            http=GatewayHttpProtocol,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_keep_alive=keep_alive,
            limit_concurrency=limit_concurrency,
        )
    finally:
        if sim is not None:
            sim.__exit__(None, None, None)


def _write_demo_config(sim_url: str) -> Path:
    from modelyard.config.demo import demo_config_text

    target = Path(os.environ.get("TMPDIR", "/tmp")) / f"modelyard-demo-{os.getpid()}.yaml"
    target.write_text(demo_config_text(sim_url), encoding="utf-8")
    return target


@app.command()
def sim(
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(9000, help="Port to listen on."),
    fleet: Path = typer.Option(None, "--fleet", help="Fleet YAML (default: the built-in fleet)."),
    seed: int = typer.Option(None, help="Seed for latencies, faults and answers."),
) -> None:
    """Run the provider simulator (OpenAI, Anthropic and Gemini wire formats) on loopback."""
    from modelyard.sim.server import run_sim

    err.print(f"modelyard sim on http://{host}:{port} (OpenAI: /v1, Anthropic: /v1/messages, Gemini: /v1beta)")
    run_sim(host=host, port=port, fleet_path=str(fleet) if fleet else None, seed=seed)


@app.command()
def demo(
    requests: int = typer.Option(16, help="How many requests to send."),
    seed: int = typer.Option(7, help="Simulator seed."),
) -> None:
    """Start a simulated fleet and the gateway, send a mix of requests, print who served what."""
    from modelyard.cli.demo import run_demo

    run_demo(requests=requests, seed=seed)


def _load_checked(path: Path) -> tuple[Config, RoutingTable]:
    """The config and its compiled routing table, or exit 2 listing every problem at its `file:line` (what
    `check` reports is what `serve` refuses to start with, and what a live reload refuses)."""
    from rich.markup import escape

    from modelyard.config.loader import ConfigError, ConfigErrors
    from modelyard.routing.table import RoutingTable
    from modelyard.server.servable import load_servable

    try:
        loaded, prices = load_servable(path)
        return loaded, RoutingTable.from_config(loaded, prices.resolve)
    except ConfigError as exc:
        for error in exc.errors if isinstance(exc, ConfigErrors) else [exc]:
            err.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        raise typer.Exit(code=2) from None


@app.command()
def check(config: Path = typer.Option(..., "--config", "-c", help="Config file to validate.")) -> None:
    """Validate a config without serving: every mistake is listed, one `file:line` each."""
    from rich.table import Table

    loaded, table = _load_checked(config)
    out = Console()
    grid = Table(title=f"{config}: OK")
    for column in ("model", "strategy", "candidates", "fallbacks"):
        grid.add_column(column)
    for name, group in table.groups.items():
        grid.add_row(
            name,
            group.group.strategy,
            ", ".join(d.name for d in group.candidates),
            ", ".join([*group.fallbacks, *(f"{t} (when saturated)" for t in group.saturation_tiers)]) or "-",
        )
    out.print(grid)
    out.print(f"{len(loaded.deployments)} deployments, {len(loaded.models)} models")


@app.command()
def route(
    config: Path = typer.Option(..., "--config", "-c", help="Config file."),
    model: str = typer.Option(..., "--model", "-m", help="Model name (or deployment) to route."),
    prompt: str = typer.Option("Hello", "--prompt", "-p", help="The user prompt."),
    max_tokens: int = typer.Option(None, "--max-tokens", help="max_tokens of the request."),
    task: str = typer.Option(None, "--task", help="Task type (metadata.task)."),
    complexity: str = typer.Option(None, "--complexity", help="metadata.complexity."),
    strategy: str = typer.Option(None, "--strategy", help="Override the strategy."),
    tools: bool = typer.Option(False, "--tools", help="Pretend the request carries tools."),
    explain: bool = typer.Option(True, "--explain/--no-explain", help="Show every candidate and why."),
    as_json: bool = typer.Option(False, "--json", help="Print the explanation as JSON."),
) -> None:
    """Show where a request would go (no model is called)."""
    from modelyard.cli.route import explain_route

    explain_route(
        config,
        model,
        prompt,
        max_tokens=max_tokens,
        task=task,
        complexity=complexity,
        strategy=strategy,
        tools=tools,
        explain=explain,
        as_json=as_json,
    )


def _register_groups() -> None:
    for module_name, group in _GROUPS:
        try:
            module = import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("modelyard"):
                continue  # that group is not part of this build
            raise
        sub = getattr(module, "app", None)
        if sub is None:
            continue
        if group is None:
            for command in sub.registered_commands:
                app.registered_commands.append(command)
            for typer_info in sub.registered_groups:
                app.registered_groups.append(typer_info)
        else:
            app.add_typer(sub, name=group)


def main() -> None:
    _register_groups()
    app()


if __name__ == "__main__":
    main()
