"""The batch's records: what a batch was started with, one row's task and one row's result.

Plain dataclasses (picklable for Ray, JSON for the store): the driver, the engines, the store and the
output writer all speak these, and nothing else crosses between them.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

#: Row states a result can carry. All of them are final: a row with a stored result is never run again
#: (`--retry-failed` re-runs the `failed`, `partial` and `stopped` ones, reusing their finished steps).
ROW_STATES = ("succeeded", "partial", "failed", "stopped", "invalid")
#: The states `--retry-failed` runs again.
RETRYABLE_STATES = frozenset({"partial", "failed", "stopped"})


def new_batch_id() -> str:
    return time.strftime("b-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


class RowSet:
    """A set of row indexes, a bit each (a million rows: 125 KB)."""

    def __init__(self) -> None:
        self.bits = bytearray()
        self.count = 0

    def __contains__(self, row: int) -> bool:
        byte = row >> 3
        return 0 <= byte < len(self.bits) and bool(self.bits[byte] & (1 << (row & 7)))

    def add(self, row: int) -> bool:
        """False when the row was there already."""
        if row < 0 or row in self:
            return False
        byte = row >> 3
        if byte >= len(self.bits):
            self.bits.extend(bytes(max(byte + 1 - len(self.bits), len(self.bits))))
        self.bits[byte] |= 1 << (row & 7)
        self.count += 1
        return True


@dataclass
class BatchHeader:
    """What a batch was started with: enough to resume it with `--resume BATCH_ID` alone."""

    batch_id: str
    workflow: str
    #: The workflow file's path and text (a resumed batch runs the text it started with).
    source: str
    text: str
    #: The inputs file, its format and a fingerprint of its bytes (a resume refuses a changed file).
    inputs_path: str
    inputs_format: str
    inputs_fingerprint: str
    rows: int
    #: Workflow input name -> column name (`--map input=column`); unmapped inputs read the same-named column.
    mapping: dict[str, str]
    #: The options the batch was started with (concurrency, max_cost_usd, out, ordered, engine, ...), as JSON.
    options: dict[str, Any]
    created_at: float = field(default_factory=time.time)


@dataclass
class RowTask:
    """One row to run: its index in the inputs file, its workflow inputs, and any steps a crashed session
    already finished (records as dicts: reused, not called or paid again)."""

    row: int
    inputs: dict[str, Any]
    prior: dict[str, dict[str, Any]] | None = None


@dataclass
class StepTotals:
    """One step's sums over a row's calls (fan-out items and loop rounds included)."""

    calls: int = 0
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failed: int = 0

    def add(self, other: StepTotals) -> None:
        self.calls += other.calls
        self.cost_usd += other.cost_usd
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.failed += other.failed


@dataclass
class RowResult:
    """One finished row: its state, the workflow's outputs, what it cost and why it failed."""

    row: int
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    #: Every call paid for this row, in all sessions (a resumed row includes what its first session spent).
    cost_usd: float = 0.0
    #: What this session paid (the driver's budget settles with it).
    session_cost_usd: float = 0.0
    error: str | None = None
    #: Per step (its qualified name), summed over the row's calls made in this session.
    steps: dict[str, StepTotals] = field(default_factory=dict)
    #: Model and tool calls made in this session (reused steps are not calls).
    calls: int = 0
    reused: int = 0
    duration_s: float = 0.0
    finished_at: float = field(default_factory=time.time)
    #: Who ran it (host:pid), for a Ray batch's report.
    worker: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in _RESULT_FIELDS}
        data["steps"] = {name: vars(totals) for name, totals in self.steps.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RowResult:
        known = {name: data[name] for name in _RESULT_FIELDS if name in data}
        steps = {name: StepTotals(**totals) for name, totals in (data.get("steps") or {}).items()}
        return cls(**known, steps=steps)


_RESULT_FIELDS = (
    "row",
    "status",
    "outputs",
    "cost_usd",
    "session_cost_usd",
    "error",
    "calls",
    "reused",
    "duration_s",
    "finished_at",
    "worker",
)


@dataclass
class BatchTotals:
    """A batch's stored rows, counted: how many in each state and what they cost."""

    by_status: dict[str, int] = field(default_factory=dict)
    cost_usd: float = 0.0

    @property
    def done(self) -> int:
        return sum(self.by_status.values())


@dataclass
class Submission:
    """One provider Batch API job of a `--provider-batch` batch: recorded *before* it is submitted (with a
    nonce the provider echoes back), so a driver killed while the job is in flight finds it again instead of
    submitting its rows twice."""

    batch_id: str
    nonce: str
    deployment: str
    provider_format: str  # "openai" | "anthropic"
    rows: list[int]
    #: The provider's ids, once known: the uploaded file's and the batch job's.
    file_id: str | None = None
    job_id: str | None = None
    state: str = "pending"  # pending -> submitted -> ended -> collected
    created_at: float = field(default_factory=time.time)


@dataclass
class BackendRef:
    """How a worker process builds its model backend: the same factory reference, config and gateway URL as the
    CLI's `--backend`, `--config` and `--gateway-url` (picklable: a Ray actor rebuilds it on its node)."""

    factory: str | None = None
    config: str | None = None
    gateway_url: str | None = None


@dataclass
class BatchOptions:
    """The options of one `modelyard batch` session (stored in the header; a resume may override some)."""

    concurrency: int = 16
    max_cost_usd: float | None = None
    out: str | None = None
    ordered: bool = False
    retry_failed: bool = False
    engine: str = "local"  # "local" | "ray"
    ray_address: str | None = None
    provider_batch: bool = False
    #: The admission-queue class of every call (the gateway's `queue.classes`).
    priority: str = "batch"
