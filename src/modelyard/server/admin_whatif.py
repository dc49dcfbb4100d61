"""Admin API: what-if replays of an edited routing policy over a labelled file (the dashboard's What-if page calls
the same functions).

    GET  /admin/whatif    ?from=<model>: the labelled files the config's `ui.whatif_data` folders hold, the
                          models, and (with `from`) that model's entry as YAML, ready to edit
    POST /admin/whatif    {data: "<a listed file>", policy: "<YAML of one models: entry>", name?: "whatif",
                          compare?: ["<model>", ...], limit?: 1..5000} → {object: "whatif", prompts, policies,
                          models (single-model baselines), premium}

Why a child process: `modelyard replay` plans every prompt with the real planner (and may embed them all), which
is CPU work for seconds; in the gateway's process it would hold the event loop every request needs, and the
server may not import `lab` (the layer table). So the replay runs as `python -m modelyard.cli.main replay` on
a temporary copy of the running config's file with `models[name]` replaced by the policy, under a timeout
(killed when it passes), one at a time per process (a second gets 429), its output bounded. The policy is
validated here first, with the loader and the routing table's compiler, so a bad one is a 400 that names the
problem at its `policy:line`, never a traceback. Only files listed from the configured folders may be named:
no path from the client reaches the file system.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from modelyard.config.loader import ConfigError, ConfigErrors, line_for, load_yaml_with_marks, parse_config, parse_path
from modelyard.config.quality_file import results_path
from modelyard.routing.table import compile_groups
from modelyard.schema.errors import GatewayError, ModelyardError
from modelyard.server.admin import _services
from modelyard.server.http import Request, send_json
from modelyard.server.validation import decode_body

if TYPE_CHECKING:
    from modelyard.config.model import Config
    from modelyard.server.admin_routes import AdminRoutes
    from modelyard.server.app import Gateway
    from modelyard.server.context import RequestContext

WHATIF_PATH = "/admin/whatif"
#: Seconds a replay may take before it is killed (tests lower it).
TIMEOUT_S = 60.0
#: Bytes of the replay's JSON answer read at most (a few policies over 5,000 prompts is a few kB).
MAX_STDOUT = 4 * 1024 * 1024
_MAX_STDERR = 64 * 1024
MAX_PROMPTS = 5000
_MAX_POLICY = 32 * 1024
_MAX_COMPARE = 8
_MAX_FILES = 500
_MAX_SEEN = 5000
_MAX_DEPTH = 3
_DATA_SUFFIXES = (".jsonl", ".csv")
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BODY_LIMIT = 64 * 1024


# --------------------------------------------------------------------------- the labelled files


def _config_file(config: Config) -> Path:
    """The running config's file: what-if edits a copy of it (an in-memory config has none)."""
    source = config.source
    if not source or source.startswith("<") or not Path(source).is_file():
        raise GatewayError(409, "what-if needs a gateway started from a config file", code="whatif_unavailable")
    return Path(source)


def data_files(config: Config) -> dict[str, Path]:
    """Labelled files (JSONL/CSV) of the `ui.whatif_data` folders, relative to the config file: name (its path
    inside its folder, `/`-separated) → resolved path. A file whose real path leaves its folder (a symlink out)
    and hidden files are not listed; the first folder wins a name two of them hold. Bounded: subfolders to a
    depth of 3 (symlinked folders not followed), 5,000 entries looked at, 500 files listed."""
    files: dict[str, Path] = {}
    seen = 0
    for folder in config.ui.whatif_data:
        try:
            real_root = results_path(folder, config.source).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, unreadable, or a symlink loop (RuntimeError before 3.13)
            continue
        if not real_root.is_dir():
            continue
        for here, folders, names in os.walk(real_root):
            depth = len(Path(here).relative_to(real_root).parts)
            folders[:] = sorted(f for f in folders if not f.startswith(".")) if depth < _MAX_DEPTH else []
            for name in sorted(names):
                seen += 1
                if seen > _MAX_SEEN or len(files) >= _MAX_FILES:
                    return files
                if name.startswith(".") or Path(name).suffix.lower() not in _DATA_SUFFIXES:
                    continue
                path = Path(here) / name
                try:
                    real = path.resolve(strict=True)
                except (OSError, RuntimeError):  # a dangling link or a symlink loop: not listed
                    continue
                if real.is_file() and real.is_relative_to(real_root):
                    files.setdefault(path.relative_to(real_root).as_posix(), real)
    return files


def _data_file(config: Config, name: Any) -> Path:
    if not isinstance(name, str) or not name or len(name) > 512 or _CONTROL.search(name):
        raise GatewayError(400, "`data` must name one of the listed labelled files", param="data")
    path = data_files(config).get(name)
    if path is None:
        raise GatewayError(
            400,
            f"`data` {name[:128]!r} is not a labelled file of the configured `ui.whatif_data` folders",
            param="data",
        )
    return path


# --------------------------------------------------------------------------- the policy


def _raw_config(path: Path) -> dict[str, Any]:
    """The config file as plain YAML data, `${ENV}` references kept as written (the child resolves them: no
    secret is written to the temporary copy that was not in the file)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise GatewayError(409, f"the config file cannot be read: {exc}", code="whatif_unavailable") from None
    if not isinstance(data, dict):
        raise GatewayError(409, "the config file is not a mapping", code="whatif_unavailable")
    return data


def model_yaml(path: Path, model: str) -> str | None:
    """One `models:` entry of the config file as YAML, as written (None when there is no such model)."""
    models = _raw_config(path).get("models")
    entry = models.get(model) if isinstance(models, dict) else None
    if entry is None:
        return None
    return yaml.safe_dump(entry, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _problem_text(error: ConfigError) -> str:
    """A ConfigError's message without its `file:line: key: ` prefix."""
    text = str(error)
    where = f"{error.source}:{error.line}" if error.line else error.source
    text = text.removeprefix(where + ": ")
    return text.removeprefix(error.key + ": ") if error.key else text


def _located(key: str, message: str, name: str, marks: dict[tuple[str | int, ...], int]) -> str:
    """A problem placed in the policy (`policy:3: strategy: ...`) when it is the policy's, else by its key."""
    path = parse_path("$." + key) if key else ()
    if len(path) >= 2 and path[0] == "models" and path[1] == name:
        inner = path[2:]
        line = line_for(inner, marks) if inner else 1
        where = f"policy:{line or 1}"
        inner_key = key.split(name, 1)[1].lstrip(".") if inner else ""
        return f"{where}: {inner_key + ': ' if inner_key else ''}{message}"
    return f"{key + ': ' if key else ''}{message}"


_MAX_NESTING = 16


def _nesting(text: str) -> int:
    """How deep `[`/`{` nest in the text (quotes ignored: an over-count only refuses an odd policy early). A
    few kB of `[` cost the YAML parser seconds of CPU before it could say anything."""
    depth = deepest = 0
    for ch in text:
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def _builds_env_reference(value: Any) -> bool:
    """Whether a parsed policy holds `${` in any key or text (the loader would fill it from the gateway's
    environment, and a problem message could echo the secret back)."""
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, dict):
        return any(_builds_env_reference(k) or _builds_env_reference(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_builds_env_reference(item) for item in value)
    return False


def _has_aliases(text: str) -> bool:
    """Whether the YAML text uses anchors or aliases (a text that does not scan is left to the loader)."""
    try:
        return any(isinstance(token, yaml.AliasToken | yaml.AnchorToken) for token in yaml.scan(text))
    except yaml.YAMLError:
        return False


def check_policy(config_data: dict[str, Any], policy: str, name: str, source: str) -> tuple[dict[str, Any], Any]:
    """The temporary config (plain data) with `models[name]` = the policy, after the loader and the routing
    table's compiler accepted it; a 400 naming every problem otherwise."""
    if _has_aliases(policy):
        # An alias fans out when the loader walks it (a "billion laughs" would hold a worker thread).
        raise GatewayError(400, "the policy may not use YAML anchors or aliases (& and *)", param="policy")
    try:
        _, marks = load_yaml_with_marks(policy, source="policy")
        entry = yaml.safe_load(policy)
    except ConfigError as exc:
        raise GatewayError(400, f"the policy is not valid: {exc}", param="policy") from None
    except yaml.YAMLError as exc:  # what compose accepted but construction did not
        raise GatewayError(400, f"the policy is not valid YAML: {exc}", param="policy") from None
    except RecursionError:
        raise GatewayError(400, "the policy is nested too deeply", param="policy") from None
    if not isinstance(entry, dict):
        raise GatewayError(
            400,
            "the policy must be one `models:` entry: a mapping with `candidates:` (and `strategy:`, ...)",
            param="policy",
        )
    if _builds_env_reference(entry):  # `"\u0024{VAR}"` is `${VAR}` only once YAML has read it
        raise GatewayError(400, "the policy may not use ${ENV} references", param="policy")
    data = dict(config_data)
    models = data.get("models")
    data["models"] = {**(models if isinstance(models, dict) else {}), name: entry}
    for key in ("quality_from", "prices_from"):  # the copy lives elsewhere: its files by their full path
        value = data.get(key)
        if isinstance(value, str) and value:
            data[key] = str(results_path(value, source).resolve())
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    problems: list[str] = []
    try:
        config = parse_config(text, source="whatif")
    except ConfigErrors as exc:
        problems = [_located(e.key, _problem_text(e), name, marks) for e in exc.errors]
    except ConfigError as exc:
        problems = [_located(exc.key, _problem_text(exc), name, marks)]
    except (ModelyardError, ValueError, TypeError) as exc:
        problems = [str(exc)[:500]]
    else:
        _, errors = compile_groups(config)
        problems = [_located(e.key, e.message, name, marks) for e in errors]
    if problems:
        raise GatewayError(400, "the policy is not valid: " + "; ".join(problems[:10]), param="policy")
    return data, text


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True, slots=True)
class WhatifAsk:
    """A what-if request, every value checked."""

    data: Path
    policy: str
    name: str
    compare: tuple[str, ...]
    limit: int


def whatif_ask(config: Config, body: dict[str, Any]) -> WhatifAsk:
    """The body checked: a listed file, a bounded policy text, a plain name, known models, 1..5000 prompts."""
    data = _data_file(config, body.get("data"))
    policy = body.get("policy")
    if not isinstance(policy, str) or not policy.strip():
        raise GatewayError(400, "`policy` is required: the YAML of one `models:` entry", param="policy")
    if len(policy) > _MAX_POLICY or "\x00" in policy:
        raise GatewayError(400, f"`policy` must be at most {_MAX_POLICY} characters of text", param="policy")
    if "${" in policy:
        # The loader would fill it from the gateway's environment, and a problem message could echo it back.
        raise GatewayError(400, "the policy may not use ${ENV} references", param="policy")
    if _nesting(policy) > _MAX_NESTING:
        raise GatewayError(400, f"the policy is nested more than {_MAX_NESTING} levels deep", param="policy")
    name = body.get("name") or "whatif"
    if not isinstance(name, str) or not _NAME.match(name):
        raise GatewayError(400, "`name` must be 1-64 letters, digits, `_` or `-`", param="name")
    compare = body.get("compare") or []
    if not isinstance(compare, list) or len(compare) > _MAX_COMPARE:
        raise GatewayError(400, f"`compare` must be a list of at most {_MAX_COMPARE} model names", param="compare")
    for model in compare:
        if not isinstance(model, str) or model not in config.models:
            shown = str(model)[:64]
            raise GatewayError(400, f"`compare`: {shown!r} is not a model of this config", param="compare")
        if model == name:
            raise GatewayError(400, f"`compare` names the edited policy {name!r} itself", param="compare")
    limit = body.get("limit", MAX_PROMPTS)
    if limit is None:
        limit = MAX_PROMPTS
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PROMPTS:
        raise GatewayError(400, f"`limit` must be a whole number from 1 to {MAX_PROMPTS}", param="limit")
    return WhatifAsk(data, policy, name, tuple(dict.fromkeys(compare)), limit)


# --------------------------------------------------------------------------- the child process


class WhatifRunner:
    """One replay at a time for this process (held by the admin route table, which every page reaches)."""

    def __init__(self) -> None:
        self.busy = False

    async def run(self, gw: Gateway, ask: WhatifAsk) -> dict[str, Any]:
        if self.busy:
            raise GatewayError(
                429,
                "a what-if replay is already running: try again when it is done",
                code="whatif_busy",
                headers={"retry-after": "5"},
            )
        self.busy = True
        try:
            return await _replay(gw.config, ask)
        finally:
            self.busy = False

    async def handle(self, gw: Gateway, request: Request, ctx: RequestContext) -> None:
        await _services(gw, ctx)
        body = decode_body(await request.body(_BODY_LIMIT))
        ask = whatif_ask(gw.config, body)
        await send_json(request.send, 200, await self.run(gw, ask))


def runner_of(gw: Gateway) -> WhatifRunner:
    """This process's runner (the one its admin routes hold), so the page and the API share one slot."""
    services = gw.services
    handler = services.admin.exact.get(("POST", WHATIF_PATH)) if services is not None else None
    owner = getattr(handler, "__self__", None)
    if not isinstance(owner, WhatifRunner):
        raise GatewayError(404, "what-if is not enabled on this gateway", code="not_found")
    return owner


async def _bounded(stream: asyncio.StreamReader | None, limit: int) -> tuple[bytes, bool]:
    """At most `limit` bytes of a stream, read to its end (what is over is dropped); whether it was over."""
    if stream is None:
        return b"", False
    kept = bytearray()
    over = False
    while chunk := await stream.read(65536):
        room = limit - len(kept)
        if len(chunk) > room:
            over = True
        kept += chunk[: max(0, room)]
    return bytes(kept), over


def _last_line(stderr: bytes) -> str:
    """The child's last words (the error line of a traceback, or the CLI's `error: ...`), bounded."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    return (lines[-1] if lines else "no message")[:500]


def _clean(value: Any) -> Any:
    """NaN (a policy that routed nothing) as null: the answer is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


async def _replay(config: Config, ask: WhatifAsk) -> dict[str, Any]:
    path = _config_file(config)
    raw = await asyncio.to_thread(_raw_config, path)
    _, text = await asyncio.to_thread(check_policy, raw, ask.policy, ask.name, str(path))
    folder = await asyncio.to_thread(tempfile.mkdtemp, prefix="modelyard-whatif-")
    try:
        temp = Path(folder) / "config.yaml"
        await asyncio.to_thread(temp.write_text, text, encoding="utf-8")
        args = ["-m", "modelyard.cli.main", "replay", "--config", str(temp), "--data", str(ask.data)]
        for name in (ask.name, *ask.compare):
            args += ["--policy", name]
        args += ["--limit", str(ask.limit), "--json"]
        out, err, code = await _child(args)
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    if code != 0:
        raise GatewayError(422, f"the replay failed: {_last_line(err)}", code="whatif_failed")
    try:
        result = json.loads(out)
    except ValueError:
        raise GatewayError(502, "the replay's answer was not JSON", code="whatif_failed") from None
    if not isinstance(result, dict):
        raise GatewayError(502, "the replay's answer was not a JSON object", code="whatif_failed")
    answer: dict[str, Any] = _clean(
        {
            "object": "whatif",
            "name": ask.name,
            "data": ask.data.name,
            "compare": list(ask.compare),
            "prompts": result.get("prompts"),
            "policies": result.get("policies", []),
            "models": result.get("models", []),
            "premium": result.get("premium"),
        }
    )
    return answer


async def _child(args: list[str]) -> tuple[bytes, bytes, int]:
    """Run the replay; killed (its whole process group) when it passes TIMEOUT_S or writes too much."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(TIMEOUT_S):
            (out, over), (err, _) = await asyncio.gather(
                _bounded(process.stdout, MAX_STDOUT), _bounded(process.stderr, _MAX_STDERR)
            )
            code = await process.wait()
    except TimeoutError:
        raise GatewayError(
            504,
            f"the what-if replay took longer than {TIMEOUT_S:g} s and was stopped (try a smaller `limit`)",
            code="whatif_timeout",
        ) from None
    finally:
        if process.returncode is None:
            _kill(process)
            with contextlib.suppress(ProcessLookupError):
                await process.wait()
    if over:
        raise GatewayError(502, "the replay's answer was too large", code="whatif_failed")
    return out, err, code


def _kill(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, 9)  # its own session: nothing it started outlives it
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            process.kill()


async def whatif_options(gw: Gateway, model: str | None = None) -> dict[str, Any]:
    """What a what-if may use: the listed labelled files, the models, and `model`'s entry as YAML to edit."""
    config = gw.config
    files = await asyncio.to_thread(data_files, config)
    out: dict[str, Any] = {
        "object": "whatif_options",
        "data": list(files),
        "models": list(config.models),
        "max_prompts": MAX_PROMPTS,
        "timeout_s": TIMEOUT_S,
        "policy": None,
    }
    if model:
        if len(model) > 256 or model not in config.models:
            raise GatewayError(400, f"`from`: {model[:64]!r} is not a model of this config", param="from")
        out["policy"] = await asyncio.to_thread(model_yaml, _config_file(config), model)
    return out


async def options(gw: Gateway, request: Request, ctx: RequestContext) -> None:
    await _services(gw, ctx)
    await send_json(request.send, 200, await whatif_options(gw, request.query.get("from")))


def install(routes: AdminRoutes) -> None:
    """Register this module's endpoints (the runner, and its one slot, belong to this route table)."""
    runner = WhatifRunner()
    routes.add("POST", WHATIF_PATH, runner.handle)
    routes.add("GET", WHATIF_PATH, options)
