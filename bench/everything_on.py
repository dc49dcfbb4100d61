"""issue #20's "every feature on": render bench/configs/everything_on.yaml for a row, and prove the row's
features are really active before anything is measured.

Rows (`VARIANTS`): `plain` (every feature of the config file on: key, budget, RPM/TPM, spend log with its
spool, metrics, cost strategy over two deployments, admission queue), `guardrails` (the same + the
`bench_input` set on the model: PII, secrets and injection checks on the input) and `redis` (the same as
plain + `state.redis_url` at 127.0.0.1:6379: key limits and budgets, per-deployment rate buckets and health
shared through Redis, under a private prefix removed by `drop_redis_prefix`).

`self_check` is the guard against measuring a config that silently turned a feature off: a normal request
is a 200 with `usage.cost`; a request carrying a planted credential is refused in the guardrails row (and
served in the others); the spend spool has a segment and the spend log a row; /metrics answers; the parsed
config has the admission queue on, RPM/TPM limits on a deployment, the spool and the cost strategy; in the
redis row, keys with the row's prefix exist in Redis (redis-cli).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import yaml

HERE = Path(__file__).resolve().parent
CONFIG_FILE = HERE / "configs" / "everything_on.yaml"
VARIANTS = ("plain", "guardrails", "redis")
REDIS_URL = "redis://127.0.0.1:6379/0"
GUARDRAIL_SET = "bench_input"
MODEL = "bench"
# A GitHub token shape (docs/guardrails.md, secret kinds): the guardrails row must refuse it on input.
PLANTED_SECRET = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


def render(
    upstream: str,
    master_key: str,
    store: Path,
    variant: str,
    redis_prefix: str | None = None,
    spend: dict[str, Any] | None = None,
    edit: Callable[[dict[str, Any]], None] | None = None,
) -> str:
    """The config text of one row: the committed file with its ${BENCH_*} values filled in, plus the row's
    switch (the model's guardrails, or Redis state under `redis_prefix`); `spend`: settings laid over the
    file's `spend:` (bench/spend_inserts.py compares `sqlite_inserts`); `edit` changes the parsed config last
    (bench/feature_costs.py turns one feature off)."""
    if variant not in VARIANTS:
        raise SystemExit(f"unknown variant {variant!r} (one of {', '.join(VARIANTS)})")
    text = CONFIG_FILE.read_text()
    for name, value in {
        "BENCH_UPSTREAM": upstream,
        "BENCH_MASTER_KEY": master_key,
        "BENCH_SPEND_STORE": str(store),
    }.items():
        text = text.replace("${" + name + "}", value)
    config: dict[str, Any] = yaml.safe_load(text)
    config["spend"].update(spend or {})
    if variant == "guardrails":
        config["models"][MODEL]["guardrails"] = [GUARDRAIL_SET]
    if variant == "redis":
        if not redis_prefix:
            raise ValueError("the redis row needs a private key prefix")
        config["state"] = {"redis_url": REDIS_URL, "prefix": redis_prefix}
    if edit is not None:
        edit(config)
    return yaml.safe_dump(config, sort_keys=False)


def new_redis_prefix() -> str:
    return f"modelyard-bench-{secrets.token_hex(4)}"


def redis_keys(prefix: str) -> list[str]:
    out = subprocess.run(
        ["redis-cli", "-u", REDIS_URL, "--scan", "--pattern", f"{prefix}:*"], capture_output=True, text=True
    )
    return [line for line in out.stdout.splitlines() if line.strip()]


def drop_redis_prefix(prefix: str) -> None:
    """Remove the row's keys from the shared Redis (other sessions use it too)."""
    keys = redis_keys(prefix)
    for start in range(0, len(keys), 500):
        subprocess.run(["redis-cli", "-u", REDIS_URL, "del", *keys[start : start + 500]], capture_output=True)


def _post(url: str, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = Request(
        url + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"},
    )
    try:
        with urlopen(request, timeout=30) as resp:
            return resp.status, dict(json.loads(resp.read()))
    except HTTPError as exc:
        return exc.code, dict(json.loads(exc.read() or b"{}"))


def _chat(content: str) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": content}]}


def self_check(
    url: str, key: str, master_key: str, variant: str, config: Path, store: Path, redis_prefix: str | None
) -> list[str]:
    """Prove the row's features are on; returns what was checked (raises RuntimeError on the first failure)."""
    from modelyard.config.loader import parse_config

    done: list[str] = []

    def require(ok: bool, what: str) -> None:
        if not ok:
            raise RuntimeError(f"self-check of the {variant} row failed: {what}")
        done.append(what)

    loaded = parse_config(config.read_text(), source=str(config))
    limited = [d.name for d in loaded.deployments if d.limits.rpm and d.limits.tpm]
    require(loaded.queue.enabled and bool(limited), f"queue on, RPM/TPM limits on {', '.join(limited)}")
    require(loaded.spend.spool and loaded.models[MODEL].strategy == "cost", "spend spool on, cost strategy")

    status, body = _post(url, key, _chat("Say hello in five words."))
    require(status == 200 and "cost" in body.get("usage", {}), "a plain request is a 200 with usage.cost")
    status, body = _post(url, key, _chat(f"my token is {PLANTED_SECRET}, keep it safe"))
    if variant == "guardrails":
        require(400 <= status < 500, f"a planted credential is refused on input ({status})")
    else:
        require(status == 200, "a planted credential passes (no guardrails in this row)")
    with urlopen(Request(url + "/metrics", headers={"authorization": f"Bearer {master_key}"}), timeout=10) as resp:
        metrics = resp.read().decode()
    require("modelyard_" in metrics, "/metrics answers with modelyard_* series")
    spool = Path(str(store) + ".spool")
    require(spool.is_dir() and any(spool.iterdir()), f"the spend spool has a segment ({spool.name})")
    rows = 0
    deadline = time.monotonic() + 10
    while rows == 0 and time.monotonic() < deadline:
        time.sleep(0.5)  # spend.flush_interval_s is 1 s
        try:
            with sqlite3.connect(store) as db:
                rows = db.execute("SELECT count(*) FROM modelyard_spend").fetchone()[0]
        except sqlite3.Error:
            rows = 0
    require(rows > 0, f"the spend log has rows ({rows})")
    if variant == "redis":
        assert redis_prefix is not None
        keys = redis_keys(redis_prefix)
        shown = ", ".join(sorted(k.removeprefix(redis_prefix + ":") for k in keys)[:4])
        require(len(keys) > 0, f"Redis holds {len(keys)} keys under {redis_prefix}:* ({shown}, ...)")
    return done
