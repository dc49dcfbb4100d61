"""A deterministic fake model backend: for tests, benchmarks and trying a workflow without any keys.

Answers are scripted per step (`answers`), or generated: JSON matching the step's schema when one is asked
for, otherwise a short text built from the prompt. Delays, failures and per-model prices are configurable,
and every call is recorded (`calls`, `peak_in_flight`), optionally to a JSON-lines file shared between
processes (the crash-and-resume test reads it).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from modelyard.accounting.tokens import count_message_dicts, count_text
from modelyard.schema.chat import Usage
from modelyard.workflows.backend import ModelAnswer, ModelCall, ModelEstimate
from modelyard.workflows.jsonout import example_for_schema

Answer = str | Exception | Callable[[ModelCall], str]

#: USD per 1M tokens (input, output) for the model names the examples use; others get DEFAULT_PRICE.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "smart": (3.00, 15.00),
    "balanced": (0.80, 4.00),
    "fast": (0.15, 0.60),
}
DEFAULT_PRICE = (1.00, 3.00)
#: How a streamed scripted answer is cut: a word with the spaces after it (the pieces join back exactly).
_WORDS = re.compile(r"\S+\s*|\s+")


class ScriptedBackend:
    """Deterministic answers with configurable delays (per model or step), failures and prices."""

    def __init__(
        self,
        *,
        answers: dict[str, list[Answer]] | None = None,
        delay_s: float = 0.0,
        delays: dict[str, float] | None = None,
        prices: dict[str, tuple[float, float]] | None = None,
        answer_words: int = 40,
        log_path: str | Path | None = None,
    ) -> None:
        self.answers = {key: list(values) for key, values in (answers or {}).items()}
        self.delay_s = delay_s
        self.delays = dict(delays or {})
        self.prices = {**DEFAULT_PRICES, **(prices or {})}
        self.answer_words = answer_words
        self.log_path = Path(log_path) if log_path else None
        self.calls: list[ModelCall] = []
        self.in_flight = 0
        self.peak_in_flight = 0

    def deployment(self, model: str) -> str:
        return f"{model}@scripted"

    def price(self, model: str, usage: Usage) -> float | None:
        input_price, output_price = self.prices.get(model, DEFAULT_PRICE)
        return (usage.prompt * input_price + usage.completion * output_price) / 1_000_000

    def delay_for(self, call: ModelCall) -> float:
        for key in (call.metadata.get("step", ""), call.metadata.get("step_name", ""), call.model):
            if key in self.delays:
                return self.delays[key]
        return self.delay_s

    async def call(self, call: ModelCall) -> ModelAnswer:
        return await self._answer(call, None)

    async def call_streaming(self, call: ModelCall, on_text: Callable[[str], None]) -> ModelAnswer:
        """The same answer as `call`, its words handed to `on_text` spread over the call's delay."""
        return await self._answer(call, on_text)

    async def _answer(self, call: ModelCall, on_text: Callable[[str], None] | None) -> ModelAnswer:
        self.calls.append(call)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        started = time.perf_counter()
        self._log("started", call)
        try:
            delay = self.delay_for(call)
            if on_text is None:
                if delay > 0:
                    await asyncio.sleep(delay)
                text = self.answer_text(call)
            else:
                text = self.answer_text(call)
                pieces = _WORDS.findall(text)
                for piece in pieces:
                    await asyncio.sleep(delay / len(pieces))
                    on_text(piece)
        finally:
            self.in_flight -= 1
        usage = Usage(prompt=count_message_dicts(call.messages), completion=count_text(text))
        self._log("finished", call)
        return ModelAnswer(
            text=text,
            model=call.model,
            deployment=self.deployment(call.model),
            usage=usage,
            cost_usd=self.price(call.model, usage) or 0.0,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def answer_text(self, call: ModelCall) -> str:
        """The next scripted answer for this step, or a generated one; raises a scripted exception."""
        for key in (call.metadata.get("step", ""), call.metadata.get("step_name", "")):
            queue = self.answers.get(key)
            if queue:
                answer = queue.pop(0) if len(queue) > 1 else queue[0]
                if isinstance(answer, Exception):
                    raise answer
                return answer(call) if callable(answer) else answer
        return self.generated(call)

    def generated(self, call: ModelCall) -> str:
        schema = ((call.response_format or {}).get("json_schema") or {}).get("schema")
        if schema is not None:
            return json.dumps(example_for_schema(schema))
        prompt = str(call.messages[-1].get("content", "")) if call.messages else ""
        words = prompt.split() or ["ok"]
        body = " ".join(words[i % len(words)] for i in range(self.answer_words))
        return f"[{call.model}] {body}"

    def estimate(self, call: ModelCall) -> ModelEstimate:
        prompt = count_message_dicts(call.messages)
        output = call.estimate_output_tokens
        if output is None:
            output = min(call.max_tokens or 256, 256)
        cost = self.price(call.model, Usage(prompt=prompt, completion=output)) or 0.0
        return ModelEstimate(self.deployment(call.model), prompt, output, cost, self.delay_for(call) * 1000)

    def _log(self, event: str, call: ModelCall) -> None:
        if self.log_path is None:
            return
        entry = {"event": event, "step": call.metadata.get("step", ""), "model": call.model}
        line = json.dumps({**entry, "pid": os.getpid(), "at": time.time()})
        with self.log_path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def backend_from_env(environ: dict[str, str] | None = None) -> ScriptedBackend:
    """A ScriptedBackend configured by MODELYARD_SCRIPTED_* variables (see docs/workflows.md)."""
    env = os.environ if environ is None else environ
    prices: dict[str, Any] = json.loads(env.get("MODELYARD_SCRIPTED_PRICES") or "{}")
    return ScriptedBackend(
        delay_s=float(env.get("MODELYARD_SCRIPTED_DELAY_S") or 0.0),
        delays={k: float(v) for k, v in json.loads(env.get("MODELYARD_SCRIPTED_DELAYS") or "{}").items()},
        prices={k: (float(v[0]), float(v[1])) for k, v in prices.items()},
        log_path=env.get("MODELYARD_SCRIPTED_LOG") or None,
    )


@asynccontextmanager
async def scripted_backend_factory(
    config_path: str | None = None, gateway_url: str | None = None
) -> AsyncIterator[ScriptedBackend]:
    """`--backend scripted`: fake answers, no keys, no network; configured from the environment."""
    yield backend_from_env()
