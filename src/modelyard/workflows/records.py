"""What a run produces: one record per step (and per fan-out item / loop round), events, the result.

Leaf records are real calls (a model or a tool); aggregate records (`foreach`, `loop`) summarise their
leaves. Money and tokens are counted on leaves only, so nothing is counted twice.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # `when` was false
    BLOCKED = "blocked"  # a step it needs failed
    STOPPED = "stopped"  # the budget ran out before it started
    CANCELLED = "cancelled"  # the time budget ran out while it ran
    INTERRUPTED = "interrupted"  # the process died while it ran (seen in the store)
    WAITING = "waiting"  # an approval step waits for a person's decision


class RunStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some steps failed; the others' results are kept
    FAILED = "failed"
    STOPPED = "stopped"  # a budget stopped it
    INTERRUPTED = "interrupted"  # the process died; `run --resume` continues it
    WAITING = "waiting"  # an approval step waits for a person (`runs approve` / `runs reject`)


LEAF_KINDS = frozenset({"model", "tool"})
DONE_OK = frozenset({StepState.SUCCEEDED, StepState.SKIPPED})


@dataclass
class StepRecord:
    """One step, fan-out item or loop round: its state, output, model, tokens, cost and timings."""

    key: str
    step: str
    kind: str
    state: StepState = StepState.PENDING
    output: Any = None
    model: str | None = None
    served_model: str | None = None
    deployment: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: Tokens of the output as a later prompt sees it, and of the call's own instructions (its messages
    #: with all step data left out): the two sides of the pass-everything comparison.
    output_tokens: int = 0
    instruction_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    attempts: int = 0
    repaired: bool = False
    cached: bool = False
    started_at: float | None = None
    finished_at: float | None = None
    inputs_hash: str | None = None
    #: Record keys whose outputs this call could read (its `needs`), and its place in a sequential chain.
    context: list[str] = field(default_factory=list)
    order: list[int] = field(default_factory=list)
    items: int = 0
    iterations: int = 0
    note: str | None = None
    error: str | None = None
    #: A typed output's repair reply by output name (typed_outputs.py), logged in the write that pays for it:
    #: a resumed run reuses it with the record instead of paying for (and maybe getting) another answer.
    output_repairs: dict[str, str] = field(default_factory=dict)

    @property
    def is_leaf(self) -> bool:
        return self.kind in LEAF_KINDS

    @property
    def duration_s(self) -> float:
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return max(0.0, self.finished_at - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        """A shallow snapshot (stores serialise it at once); cheaper than dataclasses.asdict."""
        data = {name: getattr(self, name) for name in _FIELDS}
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        values = {k: v for k, v in data.items() if k in _KNOWN}
        values["state"] = StepState(values.get("state", StepState.PENDING))
        return cls(**values)


_FIELDS = tuple(f.name for f in dataclasses.fields(StepRecord))
_KNOWN = frozenset(_FIELDS)  # from_dict's filter (dataclasses.fields per record was most of a run listing's CPU)


@dataclass
class RunEvent:
    """Progress as it happens: `kind` is run_started, step_started, step_finished, step_failed,
    step_skipped, step_blocked, step_stopped, step_waiting (an approval step), step_cached, run_finished; and,
    when the run streams, step_token (`message` is the text delta; `step`, `item`, `iteration` and `attempt` say
    whose)."""

    kind: str
    at: float
    key: str | None = None
    record: StepRecord | None = None
    message: str | None = None
    step: str | None = None
    item: int | None = None
    iteration: int | None = None
    attempt: int = 0


@dataclass
class RunResult:
    """A finished (or stopped) run: outputs, every record, and what it cost in all its sessions."""

    run_id: str
    workflow: str
    status: RunStatus
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    records: dict[str, StepRecord]
    started_at: float
    finished_at: float
    #: Every call paid for in this run, across resumed sessions, failed attempts included.
    cost_usd: float = 0.0
    message: str | None = None
    errors: list[str] = field(default_factory=list)
    deps: dict[str, list[str]] = field(default_factory=dict)
    sessions: int = 1
    #: "Cost per N tasks: all-premium vs smart routing", when the workflow's `report` asks for it.
    comparison: dict[str, Any] | None = None

    @property
    def steps(self) -> dict[str, StepRecord]:
        """The top-level steps' records, in the order the workflow declares them."""
        return {key: self.records[key] for key in self.deps if key in self.records}

    @property
    def leaves(self) -> list[StepRecord]:
        return [r for r in self.records.values() if r.is_leaf]

    @property
    def wall_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)
