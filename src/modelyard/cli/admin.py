"""`modelyard keys create|list|revoke|update` and `modelyard spend`: virtual keys and spend reports.

Two ways to reach the keys, same commands:

* `--url http://gateway:4000` (+ `--master-key` or $MODELYARD_MASTER_KEY): through a running gateway's
  admin API. Use this against a live deployment: a revocation takes effect on that gateway at once.
* `--config modelyard.yaml`: straight to the store the config names (`access.keys_store` or
  `spend.store`), no gateway needed (set-up, scripts, a gateway that is down). Running gateways see new
  keys on their first use and revocations within `access.refresh_s`.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from modelyard.schema.errors import ModelyardError
from modelyard.state.store import spend_report_body

app = typer.Typer(add_completion=False)
keys_app = typer.Typer(help="Virtual keys: create, list, revoke, update.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

T = TypeVar("T")


def _out() -> Console:
    return Console()


def _err() -> Console:
    return Console(stderr=True)


CONFIG = typer.Option(None, "--config", "-c", help="Config file: talk to its store directly.")
URL = typer.Option(None, "--url", help="A running gateway: talk to its admin API.")
MASTER = typer.Option(None, "--master-key", envvar="MODELYARD_MASTER_KEY", help="Master key (with --url).")
AS_JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


class AdminError(ModelyardError):
    """A failed admin call, with the message to show."""


# --------------------------------------------------------------------------- the two backends


class ApiBackend:
    """The admin API of a running gateway."""

    def __init__(self, url: str, master_key: str | None) -> None:
        if not master_key:
            raise AdminError("--url needs the master key (--master-key or MODELYARD_MASTER_KEY)")
        self.url = url.rstrip("/")
        self.master_key = master_key

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.master_key}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = exc.reason
            raise AdminError(f"{exc.code}: {message}") from None
        except urllib.error.URLError as exc:
            raise AdminError(f"cannot reach {self.url}: {exc.reason}") from None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call("POST", "/admin/keys", body))

    def list(self, include_revoked: bool) -> list[dict[str, Any]]:
        return list(self.call("GET", "/admin/keys" + ("?all=true" if include_revoked else ""))["data"])

    def revoke(self, key_id: str) -> dict[str, Any]:
        return dict(self.call("DELETE", f"/admin/keys/{key_id}"))

    def update(self, key_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self.call("PATCH", f"/admin/keys/{urllib.parse.quote(key_id, safe='')}", body))

    def spend(self, by: str, since: str) -> dict[str, Any]:
        return dict(self.call("GET", f"/admin/spend?by={by}&since={since}"))


class StoreBackend:
    """The store named by a config file, used directly."""

    def __init__(self, config_path: Path) -> None:
        from modelyard.config.loader import ConfigError, load_config

        try:
            config = load_config(config_path)
        except ConfigError as exc:
            raise AdminError(str(exc)) from None
        #: The priority classes a key may name (checked here as the admin API checks them).
        self.classes = [c.name for c in config.queue.classes]
        self.dsn = config.access.keys_store or config.spend.store
        if not self.dsn or self.dsn in (":memory:", "sqlite:///:memory:"):
            raise AdminError(
                f"{config_path} keeps keys in memory only: set spend.store (a SQLite path or a "
                "postgresql:// DSN) to manage keys from the command line, or use --url"
            )

    def _with_store(self, action: Callable[[Any], Awaitable[T]]) -> T:
        from modelyard.state.store import open_store

        async def run() -> T:
            store = open_store(self.dsn)
            await store.open()
            try:
                return await action(store)
            finally:
                await store.close()

        return asyncio.run(run())

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        from modelyard.server.admin import key_options
        from modelyard.state.keys import new_key

        raw, record = new_key(body.pop("name"), **key_options(body, time.time(), self.classes))

        async def insert(store: Any) -> None:
            await store.create_key(record)

        self._with_store(insert)
        return {**record.public(), "key": raw}

    def list(self, include_revoked: bool) -> list[dict[str, Any]]:
        async def fetch(store: Any) -> list[dict[str, Any]]:
            return [r.public() for r in await store.list_keys(include_revoked=include_revoked)]

        return self._with_store(fetch)

    def revoke(self, key_id: str) -> dict[str, Any]:
        async def revoke(store: Any) -> dict[str, Any]:
            if await store.get_key(key_id) is None:
                raise AdminError(f"404: no key with id `{key_id}`")
            revoked = await store.revoke_key(key_id, time.time())
            return {"id": key_id, "revoked": True, "already_revoked": not revoked}

        return self._with_store(revoke)

    def spend(self, by: str, since: str) -> dict[str, Any]:
        from modelyard.server.admin import parse_since

        start = parse_since(since, time.time())

        async def report(store: Any) -> dict[str, Any]:
            return spend_report_body(by, await store.spend_report(by, start))

        return self._with_store(report)


def _backend(config: Path | None, url: str | None, master_key: str | None) -> ApiBackend | StoreBackend:
    if (config is None) == (url is None):
        raise AdminError("give either --config FILE (the store) or --url URL (a running gateway)")
    return ApiBackend(url, master_key) if url else StoreBackend(config)  # type: ignore[arg-type]


def _run(fn: Callable[[], T]) -> T:
    from modelyard.schema.errors import GatewayError

    try:
        return fn()
    except (AdminError, ValueError) as exc:
        _err().print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(code=2) from None
    except GatewayError as exc:
        _err().print(f"[bold red]error:[/] {exc.message}")
        raise typer.Exit(code=2) from None


# --------------------------------------------------------------------------- commands


@keys_app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="Who or what the key is for."),
    models: str = typer.Option(None, "--models", help="Allowed model names, comma-separated (default: all)."),
    budget_usd: float = typer.Option(None, "--budget-usd", help="Budget in USD per period."),
    period: str = typer.Option("30d", "--period", help="Budget period: 30d, 7d, 24h, ..."),
    rpm: int = typer.Option(None, "--rpm", help="Requests per minute."),
    tpm: int = typer.Option(None, "--tpm", help="Tokens per minute (prompt + output estimate)."),
    expires_in: str = typer.Option(None, "--expires-in", help="Lifetime, e.g. 90d (default: no expiry)."),
    priority: str = typer.Option(
        None, "--priority", help="Its requests' queue class (one of queue.classes; default: queue.default_class)."
    ),
    max_priority: str = typer.Option(
        None, "--max-priority", help="The highest class its requests may ask for (default: --priority)."
    ),
    max_queue_ms: float = typer.Option(
        None, "--max-queue-ms", help="The longest its requests wait in the queue, in milliseconds."
    ),
    admin: bool = typer.Option(
        False, "--admin", help="An admin key (metadata role: admin): the admin API and the dashboard accept it."
    ),
    config: Path = CONFIG,
    url: str = URL,
    master_key: str = MASTER,
    as_json: bool = AS_JSON,
) -> None:
    """Create a virtual key. The key is printed once and cannot be shown again."""
    body: dict[str, Any] = {
        "name": name,
        "models": models,
        "budget_usd": budget_usd,
        "period": period,
        "rpm": rpm,
        "tpm": tpm,
        "expires_in": expires_in,
        "priority": priority,
        "max_priority": max_priority,
        "max_queue_ms": max_queue_ms,
    }
    if admin:
        body["metadata"] = {"role": "admin"}
    made = _run(lambda: _backend(config, url, master_key).create(body))
    if as_json:
        typer.echo(json.dumps(made, indent=2))
        return
    _out().print(f"[bold]{made['key']}[/]")
    _err().print(f"key {made['id']} ({made['name']}) created; store it now, it will not be shown again")


@keys_app.command("list")
def list_keys(
    include_revoked: bool = typer.Option(False, "--all", help="Include revoked keys."),
    config: Path = CONFIG,
    url: str = URL,
    master_key: str = MASTER,
    as_json: bool = AS_JSON,
) -> None:
    """List keys (never the keys themselves: only their ids, names, prefixes and limits)."""
    rows = _run(lambda: _backend(config, url, master_key).list(include_revoked))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for column in ("id", "name", "prefix", "status", "models", "rpm", "tpm", "priority", "budget", "spent"):
        table.add_column(column)
    for row in rows:
        spend = row.get("spend") or {}
        budget = "-"
        if row.get("budget_usd") is not None:
            budget = f"${row['budget_usd']:g}/{_days(row.get('period_s'))}"
        table.add_row(
            row["id"],
            row["name"],
            row["key_prefix"] + "…",
            row["status"],
            ",".join(row["models"]) if row.get("models") else "all",
            _dash(row.get("rpm")),
            _dash(row.get("tpm")),
            _priority(row.get("metadata") or {}),
            budget,
            f"${spend['spent_usd']:.4f}" if spend else "-",
        )
    _out().print(table)


@keys_app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (key_...), as `keys list` shows it."),
    config: Path = CONFIG,
    url: str = URL,
    master_key: str = MASTER,
) -> None:
    """Revoke a key: every request with it gets a 401 from then on."""
    result = _run(lambda: _backend(config, url, master_key).revoke(key_id))
    _err().print(f"key {key_id} {'was already revoked' if result.get('already_revoked') else 'revoked'}")


#: What `keys update --clear` may clear, and the PATCH field each one is.
_CLEARABLE = {"models": "models", "rpm": "rpm", "tpm": "tpm", "budget": "budget_usd", "expiry": "expires_at"}


@keys_app.command("update")
def update(
    key_id: str = typer.Argument(..., help="The key's id (key_...), as `keys list` shows it."),
    name: str = typer.Option(None, "--name", help="A new name."),
    models: str = typer.Option(None, "--models", help="Allowed model names, comma-separated."),
    budget_usd: float = typer.Option(None, "--budget-usd", help="Budget in USD per period."),
    period: str = typer.Option(None, "--period", help="Budget period: 30d, 7d, 24h, ..."),
    rpm: int = typer.Option(None, "--rpm", help="Requests per minute."),
    tpm: int = typer.Option(None, "--tpm", help="Tokens per minute."),
    expires_in: str = typer.Option(None, "--expires-in", help="Lifetime from now, e.g. 90d."),
    clear: list[str] = typer.Option(
        [], "--clear", help=f"Remove a limit: {', '.join(_CLEARABLE)} (repeatable; models: all models again)."
    ),
    url: str = typer.Option(..., "--url", help="A running gateway: its admin API applies and re-seeds at once."),
    master_key: str = MASTER,
    as_json: bool = AS_JSON,
) -> None:
    """Change a key's limits, budget, models, name or expiry (PATCH /admin/keys/{id}; only the values given)."""
    body: dict[str, Any] = {
        field: value
        for field, value in (
            ("name", name),
            ("models", models),
            ("budget_usd", budget_usd),
            ("period", period),
            ("rpm", rpm),
            ("tpm", tpm),
            ("expires_in", expires_in),
        )
        if value is not None
    }
    for what in clear:
        if what not in _CLEARABLE:
            _err().print(f"[bold red]error:[/] --clear takes one of {', '.join(_CLEARABLE)}, not {what!r}")
            raise typer.Exit(code=2)
        body[_CLEARABLE[what]] = None
    if not body:
        _err().print("[bold red]error:[/] nothing to change (give --rpm, --budget-usd, --clear rpm, ...)")
        raise typer.Exit(code=2)
    updated = _run(lambda: ApiBackend(url, master_key).update(key_id, body))
    if as_json:
        typer.echo(json.dumps(updated, indent=2))
        return
    _err().print(f"key {updated['id']} ({updated['name']}) updated")


@app.command("spend")
def spend(
    by: str = typer.Option("model", "--by", help="Group by model, key, day or deployment."),
    since: str = typer.Option("7d", "--since", help="How far back: 7d, 24h, 30d, or all."),
    config: Path = CONFIG,
    url: str = URL,
    master_key: str = MASTER,
    as_json: bool = AS_JSON,
) -> None:
    """Spend report from the spend log: requests, errors, tokens and cost per group."""
    report = _run(lambda: _backend(config, url, master_key).spend(by, since))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title=f"spend by {by}, last {since}")
    for column in (by, "requests", "errors", "prompt tokens", "completion tokens", "cost (USD)"):
        table.add_column(column, justify="left" if column == by else "right")
    for row in report["data"]:
        label = f"{row['group']} ({row['name']})" if row.get("name") else row["group"]
        table.add_row(
            label,
            str(row["requests"]),
            str(row["errors"]),
            f"{row['prompt_tokens']:,}",
            f"{row['completion_tokens']:,}",
            f"{row['cost_usd']:.6f}",
        )
    table.add_row("total", str(report["total_requests"]), "", "", "", f"{report['total_cost_usd']:.6f}")
    _out().print(table)


def _priority(metadata: dict[str, str]) -> str:
    """`default`, `batch (max default)`, `- (max batch)`: the key's class and cap, `-` for none."""
    own, cap = metadata.get("priority"), metadata.get("max_priority")
    text = own or "-"
    return f"{text} (max {cap})" if cap and cap != own else text


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _days(seconds: float | None) -> str:
    if not seconds:
        return "30d"
    return f"{seconds / 86400:g}d" if seconds >= 86400 else f"{seconds / 3600:g}h"


@app.command("reload")
def reload_command(
    url: str = typer.Option("http://127.0.0.1:4000", "--url", help="The gateway whose config to reload."),
    master_key: str = MASTER,
    all_replicas: bool = typer.Option(
        False, "--all", help="Every replica (and worker) subscribed on the config's Redis, not just --url."
    ),
    config: Path = typer.Option(None, "--config", "-c", help="With --all: the config naming state.redis_url."),
    redis_url: str = typer.Option(None, "--redis-url", help="With --all: Redis, instead of --config's."),
    prefix: str = typer.Option(None, "--prefix", help="With --all: the key prefix (default: the config's)."),
    timeout: float = typer.Option(30.0, "--timeout", min=0.1, help="Seconds to wait for the replicas' answers."),
    as_json: bool = AS_JSON,
) -> None:
    """Reload a running gateway's config (its own file, re-read and checked; on an error the old one stays).
    Exit status 1 when any replica refused the new config."""
    if all_replicas:
        results = _reload_all(config, redis_url, prefix, timeout)
    else:
        try:
            results = [ApiBackend(url, master_key).call("POST", "/admin/reload")]
        except AdminError as exc:
            _err().print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(code=1) from None
    if as_json:
        _out().print_json(json.dumps(results))
    else:
        for result in results:
            where = result.get("replica", url)
            if result.get("ok"):
                _out().print(f"{where}: reloaded, generation {result['generation']}: {result['summary']}")
            else:
                _err().print(f"[bold red]{where}: not reloaded[/] (the old config stays):", soft_wrap=True)
                for line in result.get("errors", []):
                    _err().print(f"  {line}", soft_wrap=True, markup=False)
    if not all(result.get("ok") for result in results):
        raise typer.Exit(code=1)


def _reload_all(config: Path | None, redis_url: str | None, prefix: str | None, timeout: float) -> list[Any]:
    from modelyard.state.redis_reload import reload_all

    if redis_url is None or prefix is None:
        if config is None:
            _err().print("[bold red]error:[/] --all needs --config (or --redis-url)")
            raise typer.Exit(code=2)
        from modelyard.config.loader import ConfigError, load_config

        try:
            state = load_config(config).state
        except ConfigError as exc:
            _err().print(f"[bold red]error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(code=2) from None
        if state.redis_url is None and redis_url is None:
            _err().print("[bold red]error:[/] the config has no state.redis_url: replicas share no channel")
            raise typer.Exit(code=2)
        redis_url = redis_url or state.redis_url
        prefix = prefix or state.prefix
    assert redis_url is not None
    reached, results = asyncio.run(reload_all(redis_url, prefix=prefix or "modelyard", timeout_s=timeout))
    if reached == 0:
        _err().print("[bold red]error:[/] no replica is listening on that Redis")
        raise typer.Exit(code=1)
    if len(results) < reached:
        _err().print(f"[yellow]{reached - len(results)} of {reached} replicas did not answer in {timeout:g}s[/]")
        results.append({"ok": False, "replica": "?", "errors": [f"{reached - len(results)} replicas did not answer"]})
    return results
