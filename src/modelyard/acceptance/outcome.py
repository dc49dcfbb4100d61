"""What one case run produced: the answer as the assertions see it, and the verdict of each assertion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ToolCallOut:
    """One tool call of an answer; `arguments` is the JSON text the model wrote."""

    name: str
    arguments: str


@dataclass(slots=True)
class Answer:
    """A model's answer to one case run, from the router or from the answer cache."""

    text: str
    deployment: str
    latency_ms: float
    cost_usd: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    tool_calls: list[ToolCallOut] = field(default_factory=list)
    #: Served from the answer cache: nothing was sent and `cost_usd` is 0 (the first run's cost is kept).
    cached: bool = False
    first_cost_usd: float = 0.0

    def to_cache(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "deployment": self.deployment,
            "latency_ms": self.latency_ms,
            "cost_usd": self.cost_usd,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
            "tool_calls": [[call.name, call.arguments] for call in self.tool_calls],
        }

    @classmethod
    def from_cache(cls, data: dict[str, Any]) -> Answer:
        return cls(
            text=str(data["text"]),
            deployment=str(data["deployment"]),
            latency_ms=float(data["latency_ms"]),
            cost_usd=0.0,
            prompt_tokens=int(data["prompt_tokens"]),
            completion_tokens=int(data["completion_tokens"]),
            finish_reason=data.get("finish_reason"),
            tool_calls=[ToolCallOut(str(name), str(args)) for name, args in data.get("tool_calls") or []],
            cached=True,
            first_cost_usd=float(data["cost_usd"]),
        )


@dataclass(slots=True)
class CheckResult:
    """One assertion's verdict; `detail` says why it failed (or what was measured)."""

    kind: str
    passed: bool
    detail: str = ""
    #: What grading cost (a `judge` call), counted in the report.
    cost_usd: float = 0.0


@dataclass(slots=True)
class CaseRun:
    """One case against one model, one repeat."""

    model: str
    task: str
    case: str
    repeat: int
    status: str  # "passed" | "failed" | "error" | "skipped"
    answer: Answer | None = None
    checks: list[CheckResult] = field(default_factory=list)
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def counted(self) -> bool:
        """Whether the run counts towards the pass rate (a case the budget skipped does not)."""
        return self.status != "skipped"

    @property
    def cost_usd(self) -> float:
        spent = self.answer.cost_usd if self.answer is not None else 0.0
        return spent + sum(check.cost_usd for check in self.checks)
